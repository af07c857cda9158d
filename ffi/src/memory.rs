//! Kernel-owned memory that JavaScript maps without copying: zeroed, 64-byte
//! aligned (a cache line, and enough for any typed array), freed on drop.

use crate::error::{KernelError, KernelResult};
use crate::proto::{BufferStats, ErrorCode};
use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

/// Alignment of every allocation shared with JS.
pub const MEMORY_ALIGNMENT: usize = 64;

/// One allocation. The address stays fixed for its whole life, so a JS
/// `ArrayBuffer` created over it once stays valid until the SDK detaches it.
pub struct NativeMemory {
    ptr: NonNull<u8>,
    layout: Layout,
    len: usize,
}

// SAFETY: NativeMemory owns its allocation exclusively (like a Box<[u8]>);
// concurrent access to the bytes is coordinated by its users (rings use
// atomics for their cursors, buffers are written by one side at a time).
unsafe impl Send for NativeMemory {}
// SAFETY: as above; &NativeMemory only hands out raw pointers.
unsafe impl Sync for NativeMemory {}

impl NativeMemory {
    /// Allocates `len` zeroed bytes. Failure is an error, never an abort.
    pub fn zeroed(len: usize) -> KernelResult<Self> {
        let layout = Layout::from_size_align(len.max(1), MEMORY_ALIGNMENT)
            .map_err(|_| KernelError::invalid_argument(format!("cannot allocate {len} bytes")))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or_else(|| {
            KernelError::new(
                ErrorCode::ResourceExhausted,
                format!("out of memory allocating {len} bytes"),
            )
        })?;
        Ok(Self { ptr, layout, len })
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address as JS receives it.
    pub fn address(&self) -> u64 {
        self.ptr.as_ptr() as usize as u64
    }
}

impl Drop for NativeMemory {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with exactly this layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// Per-kernel counters of the memory it shares with JS (shared buffers and
/// rings), behind `kernel.stats().buffers`. Kept here, below both users, so
/// buffers and rings count into one place without importing each other.
#[derive(Default)]
pub struct BufferAccounting {
    pub(crate) live_buffers: AtomicU64,
    pub(crate) live_bytes: AtomicU64,
    pub(crate) leaked_buffers: AtomicU64,
    pub(crate) abandoned_buffers: AtomicU64,
    pub(crate) live_rings: AtomicU64,
    pub(crate) ring_capacity_bytes: AtomicU64,
}

impl BufferAccounting {
    /// Counters of buffers and rings; ring occupancy is added by the caller
    /// (it is read from the rings themselves).
    pub fn stats(&self) -> BufferStats {
        BufferStats {
            live_buffers: self.live_buffers.load(Ordering::Relaxed),
            live_bytes: self.live_bytes.load(Ordering::Relaxed),
            leaked_buffers: self.leaked_buffers.load(Ordering::Relaxed),
            live_rings: self.live_rings.load(Ordering::Relaxed),
            ring_capacity_bytes: self.ring_capacity_bytes.load(Ordering::Relaxed),
            ring_used_bytes: 0,
            abandoned_buffers: self.abandoned_buffers.load(Ordering::Relaxed),
        }
    }
}
