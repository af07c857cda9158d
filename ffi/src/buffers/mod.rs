//! Shared buffers: kernel-owned memory that JS reads and writes through one
//! `ArrayBuffer` mapped over it, without copying.
//!
//! The SDK detaches every JS view before it releases a buffer, so releasing
//! here can free the memory at once. Buffers belong to a kernel: closing the
//! kernel frees those still alive.

use crate::boundary::call;
use crate::error::{KernelError, KernelResult};
use crate::handles::{HandleKind, HandleTable};
use crate::kernel::kernel;
use crate::memory::{BufferAccounting, NativeMemory};
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Largest single buffer: lengths cross the boundary as u32 and JS indexes
/// typed arrays with numbers, so stay below 2 GiB.
pub const MAX_BUFFER_BYTES: u32 = i32::MAX as u32;

static BUFFERS: HandleTable<SharedBuffer> = HandleTable::new(HandleKind::Buffer);

/// A buffer alive in the handle table. Its memory is always the kernel's
/// own allocation, never memory another component (e.g. the store's cache)
/// also reads: JS can write any view it holds, whatever its static type.
pub struct SharedBuffer {
    kernel_id: u64,
    /// Freed on drop unless `abandoned`.
    memory: ManuallyDrop<NativeMemory>,
    /// JS lost track of a view of this memory: never free it.
    abandoned: AtomicBool,
    accounting: Arc<BufferAccounting>,
}

impl SharedBuffer {
    pub fn bytes(&self) -> *const u8 {
        self.memory.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.memory.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for SharedBuffer {
    fn drop(&mut self) {
        self.accounting.live_buffers.fetch_sub(1, Ordering::Relaxed);
        self.accounting
            .live_bytes
            .fetch_sub(self.len() as u64, Ordering::Relaxed);
        if !self.abandoned.load(Ordering::SeqCst) {
            // SAFETY: dropped exactly once, here; never used afterwards.
            unsafe { ManuallyDrop::drop(&mut self.memory) };
        }
    }
}

/// Allocates a zeroed buffer owned by `kernel` and returns its handle and address.
pub fn alloc(kernel_handle: u32, len: u32) -> KernelResult<(u32, u64)> {
    let kernel = kernel(kernel_handle)?;
    if len > MAX_BUFFER_BYTES {
        return Err(KernelError::invalid_argument(format!(
            "byteLength {len} exceeds the maximum of {MAX_BUFFER_BYTES}"
        ))
        .with_detail("field", "byteLength"));
    }
    let memory = NativeMemory::zeroed(len as usize)?;
    let address = memory.address();
    let handle = insert(&kernel, memory)?;
    Ok((handle, address))
}

/// Copies `bytes` (e.g. a large store value) into a new buffer of `kernel`
/// that JS maps read-only: returns handle, address and length.
///
/// A copy rather than a pin of the store's own allocation on purpose: a JS
/// view can be written through a cast, and such a write must never reach
/// the store's cache (it would be read back, and could be flushed to disk).
pub fn copy_from(kernel: &crate::kernel::Kernel, bytes: &[u8]) -> KernelResult<(u32, u64, u64)> {
    if bytes.len() > MAX_BUFFER_BYTES as usize {
        return Err(KernelError::invalid_argument(format!(
            "value of {} bytes exceeds the buffer maximum of {MAX_BUFFER_BYTES}",
            bytes.len()
        )));
    }
    let memory = NativeMemory::zeroed(bytes.len())?;
    // SAFETY: `memory` was just allocated with room for `bytes.len()` bytes
    // and is not shared with anyone yet; the regions cannot overlap.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), memory.as_ptr(), bytes.len()) };
    let address = memory.address();
    let handle = insert(kernel, memory)?;
    Ok((handle, address, bytes.len() as u64))
}

/// Registers `memory` as a live buffer of `kernel`, counted in its stats.
fn insert(kernel: &crate::kernel::Kernel, memory: NativeMemory) -> KernelResult<u32> {
    let accounting = Arc::clone(kernel.accounting());
    accounting.live_buffers.fetch_add(1, Ordering::Relaxed);
    accounting
        .live_bytes
        .fetch_add(memory.len() as u64, Ordering::Relaxed);
    BUFFERS.insert(Arc::new(SharedBuffer {
        kernel_id: kernel.id(),
        memory: ManuallyDrop::new(memory),
        abandoned: AtomicBool::new(false),
        accounting,
    }))
}

/// Looks up a live buffer (for capabilities that read buffers JS filled).
pub fn buffer(handle: u32) -> KernelResult<Arc<SharedBuffer>> {
    BUFFERS.get(handle)
}

/// Frees every buffer of a kernel (on kernel close).
pub fn release_owned(kernel_id: u64) {
    drop(BUFFERS.drain_where(|buffer| buffer.kernel_id == kernel_id));
}

/// Allocates `byte_length` zeroed bytes owned by `kernel`. Writes the buffer's
/// handle to `out[0]` and its address to `out[1]`; JS maps the address once.
///
/// # Safety
/// `out` must point to two writable, aligned `u64`s.
#[no_mangle]
pub unsafe extern "C" fn krepis_buffer_alloc(kernel: u32, byte_length: u32, out: *mut u64) -> i32 {
    call("krepis_buffer_alloc", || {
        if out.is_null() || !out.is_aligned() {
            return Err(KernelError::invalid_argument(
                "out must point to two aligned u64",
            ));
        }
        let (handle, address) = alloc(kernel, byte_length)?;
        // SAFETY: checked non-null and aligned; the caller guarantees two u64.
        unsafe {
            out.write(u64::from(handle));
            out.add(1).write(address);
        }
        Ok(0)
    })
}

/// How `krepis_buffer_release` lets a buffer go.
pub const BUFFER_RELEASED: u32 = 0;
/// Freed by the JS garbage-collection safety net: counted as a leak.
pub const BUFFER_LEAKED: u32 = 1;
/// JS could not detach its view (the ArrayBuffer was transferred away):
/// the handle dies but the memory is kept forever, and counted.
pub const BUFFER_ABANDONED: u32 = 2;

/// Releases a buffer (`mode`: 0 released, 1 leaked, 2 abandoned; see the
/// constants). The SDK has detached every JS view first, except in mode 2.
#[no_mangle]
pub extern "C" fn krepis_buffer_release(buffer: u32, mode: u32) -> i32 {
    call("krepis_buffer_release", || {
        if mode > BUFFER_ABANDONED {
            return Err(KernelError::invalid_argument(format!(
                "release mode must be 0, 1 or 2, got {mode}"
            )));
        }
        let buffer = BUFFERS.remove(buffer)?;
        let counter = match mode {
            BUFFER_LEAKED => &buffer.accounting.leaked_buffers,
            BUFFER_ABANDONED => {
                buffer.abandoned.store(true, Ordering::SeqCst);
                &buffer.accounting.abandoned_buffers
            }
            _ => return Ok(0),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(0)
    })
}
