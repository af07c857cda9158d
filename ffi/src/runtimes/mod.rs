//! Runtimes: Deno children the kernel starts, confines, talks to and keeps
//! alive (supervision and pools live in `bindings/runtimes/`). A runtime is a
//! guarded command ([`crate::guard::spawn_with`]: the same sandbox, limits,
//! result and `EVENT_GUARD`) whose stdin and stdout carry framed messages:
//! the JS → kernel ring's records are written to its stdin by the guard, and
//! its stdout is read by [`channel`], which checks every [`frame`] before
//! JS sees it. stderr streams to JS like a guarded command's.
//!
//! Files: [`frame`] (the frame header and its checks), [`channel`] (child →
//! parent frames), this file (the export).

mod channel;
pub mod frame;

use crate::boundary::{call, in_bytes};
use crate::error::{KernelError, KernelResult};
use crate::guard::{spawn_with, Input, Stdio};
use crate::proto::RuntimeSpawn;
use crate::ring::{record_size, ring, Direction};
use frame::{RUNTIME_FRAME_HEADER_BYTES, RUNTIME_MAX_MESSAGE_BYTES};
use prost::Message;

fn spawn(
    kernel_handle: u32,
    request: RuntimeSpawn,
    to_child: u32,
    from_child: u32,
    stderr: u32,
) -> KernelResult<(u32, u32)> {
    let kernel = crate::kernel::kernel(kernel_handle)?;
    let guard = request.guard.ok_or_else(|| {
        KernelError::invalid_argument("guard is required").with_detail("field", "guard")
    })?;
    let max = request.max_message_bytes;
    if max == 0 || max > RUNTIME_MAX_MESSAGE_BYTES {
        return Err(KernelError::invalid_argument(format!(
            "maxMessageBytes must be 1 to {RUNTIME_MAX_MESSAGE_BYTES}, got {max}"
        ))
        .with_detail("field", "maxMessageBytes"));
    }
    let to_child = ring(to_child)?;
    let from_child = ring(from_child)?;
    if to_child.direction() != Direction::ToKernel || from_child.direction() != Direction::ToJs {
        return Err(KernelError::invalid_argument(
            "the channel needs a JS → kernel ring to the child and a kernel → JS ring from it",
        ));
    }
    if record_size(RUNTIME_FRAME_HEADER_BYTES + max) > u64::from(from_child.capacity()) {
        return Err(KernelError::invalid_argument(format!(
            "a ring of {} bytes cannot hold a frame of maxMessageBytes ({max})",
            from_child.capacity()
        ))
        .with_detail("field", "maxMessageBytes"));
    }
    to_child.claim()?;
    from_child.claim()?;
    let runtime = kernel.runtime_handle()?;
    let stdio = Stdio {
        stdin: Some(Input::Ring(to_child)),
        stdout: Some(Box::new(move |source| {
            channel::read_frames(source, from_child, max, runtime)
        })),
    };
    spawn_with(kernel_handle, guard, 0, stderr, stdio)
}

/// Starts a runtime: `request` is an encoded `krepis.v1.RuntimeSpawn` (the
/// guarded Deno command and the channel's message bound). Frames JS writes
/// into `to_child` (a JS → kernel ring) go to the child's stdin; the child's
/// frames come back through `from_child` (kernel → JS), its stderr through
/// `stderr_ring` (0 = discarded). Writes the process handle (a guard handle:
/// `krepis_guard_result`, `_kill`, `_usage`, `_close` apply) and the pid to
/// `out[0]` and `out[1]`.
///
/// # Safety
/// `request` must point to `request_len` readable bytes; `out` to two u32s.
#[no_mangle]
pub unsafe extern "C" fn krepis_runtime_spawn(
    kernel: u32,
    request: *const u8,
    request_len: u32,
    to_child: u32,
    from_child: u32,
    stderr_ring: u32,
    out: *mut u32,
) -> i32 {
    call("krepis_runtime_spawn", || {
        if out.is_null() || !out.is_aligned() {
            return Err(KernelError::invalid_argument(
                "out must point to two aligned u32s",
            ));
        }
        // SAFETY: forwarded from this function's contract.
        let bytes = unsafe { in_bytes(request, request_len, "request")? };
        let request = RuntimeSpawn::decode(bytes).map_err(|error| {
            KernelError::invalid_argument(format!("not a krepis.v1.RuntimeSpawn: {error}"))
        })?;
        let (handle, pid) = spawn(kernel, request, to_child, from_child, stderr_ring)?;
        // SAFETY: checked non-null and aligned; the caller provides two u32s.
        unsafe {
            out.write(handle);
            out.add(1).write(pid);
        }
        Ok(0)
    })
}
