//! The FFI boundary: every export runs its body through [`call`], which turns
//! errors and panics into a negative status plus a thread-local last error.
//! No panic or unwind ever reaches Deno.

use crate::error::{KernelError, KernelResult};
use crate::proto::ErrorCode;
use prost::Message;
use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    /// The last error of an export called on this thread, encoded as
    /// `krepis.v1.Error`. Deno's synchronous FFI calls run on the JS thread,
    /// so the SDK reads it right after a failing call.
    static LAST_ERROR: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Where the panic hook leaves the location of a panic on this thread.
    static PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

static PANIC_HOOK: Once = Once::new();

/// Replaces the default hook (which prints to stderr) of this library's copy of
/// std: a caught panic is reported through the last error instead. The host's
/// own hook (Deno's) is a different std and is not affected.
fn install_panic_hook() {
    PANIC_HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let location = info
                .location()
                .map(|location| format!("{}:{}", location.file(), location.line()));
            PANIC_LOCATION.with(|slot| *slot.borrow_mut() = location);
        }));
    });
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

fn set_last_error(operation: &str, error: &KernelError) {
    let encoded = error.to_proto(operation).encode_to_vec();
    LAST_ERROR.with(|slot| *slot.borrow_mut() = encoded);
}

/// Runs an export's body: `Ok(n)` becomes status `n` (>= 0), an error or a
/// panic becomes a negative status and the thread's last error.
pub fn call(operation: &'static str, body: impl FnOnce() -> KernelResult<i32>) -> i32 {
    install_panic_hook();
    let error = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(status)) if status >= 0 => return status,
        Ok(Ok(status)) => KernelError::new(
            ErrorCode::Internal,
            format!("{operation} produced a negative success value {status}"),
        ),
        Ok(Err(error)) => error,
        Err(payload) => {
            let location = PANIC_LOCATION.with(|slot| slot.borrow_mut().take());
            let mut error = KernelError::new(
                ErrorCode::Panic,
                format!(
                    "the kernel panicked in {operation}: {}",
                    panic_message(payload.as_ref())
                ),
            );
            if let Some(location) = location {
                error = error.with_detail("location", location);
            }
            error
        }
    };
    set_last_error(operation, &error);
    error.status()
}

/// Borrows a caller-provided output buffer.
///
/// # Safety
/// `ptr` must be null or point to `cap` writable bytes that stay valid and
/// unaliased for `'a` (Deno passes a live `Uint8Array` for the call's duration).
pub unsafe fn out_bytes<'a>(ptr: *mut u8, cap: u32, what: &str) -> KernelResult<&'a mut [u8]> {
    if ptr.is_null() {
        return if cap == 0 {
            Ok(&mut [])
        } else {
            Err(KernelError::invalid_argument(format!(
                "{what} is null but its length is {cap}"
            )))
        };
    }
    // SAFETY: non-null, and the caller guarantees `cap` writable bytes.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, cap as usize) })
}

/// Borrows caller-provided input bytes.
///
/// # Safety
/// `ptr` must be null or point to `len` readable bytes valid for `'a`.
pub unsafe fn in_bytes<'a>(ptr: *const u8, len: u32, what: &str) -> KernelResult<&'a [u8]> {
    if ptr.is_null() {
        return if len == 0 {
            Ok(&[])
        } else {
            Err(KernelError::invalid_argument(format!(
                "{what} is null but its length is {len}"
            )))
        };
    }
    // SAFETY: non-null, and the caller guarantees `len` readable bytes.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len as usize) })
}

/// Writes `value` to a caller's `out` pointer to one `u64`, refusing a null
/// or misaligned pointer.
///
/// # Safety
/// `out` must be null or point to one writable `u64`.
pub unsafe fn write_u64(out: *mut u64, value: u64, what: &str) -> KernelResult<()> {
    if out.is_null() || !out.is_aligned() {
        return Err(KernelError::invalid_argument(format!(
            "{what} must point to one aligned u64"
        )));
    }
    // SAFETY: checked non-null and aligned; the caller guarantees one u64.
    unsafe { out.write(value) };
    Ok(())
}

/// Copies `bytes` into `out` when it fits and returns the full length either
/// way, so a caller with a short buffer learns the size it needs.
pub fn write_out(bytes: &[u8], out: &mut [u8]) -> KernelResult<i32> {
    let length = i32::try_from(bytes.len())
        .map_err(|_| KernelError::new(ErrorCode::Internal, "output larger than 2 GiB"))?;
    if let Some(target) = out.get_mut(..bytes.len()) {
        target.copy_from_slice(bytes);
    }
    Ok(length)
}

/// Writes this thread's last error (`krepis.v1.Error`, protobuf) into `out`.
/// Returns its length (0 = no error yet); when that exceeds `cap` nothing is
/// written and the caller retries with a larger buffer.
///
/// # Safety
/// `out` must be null or point to `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_last_error(out: *mut u8, cap: u32) -> i32 {
    call("krepis_last_error", || {
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { out_bytes(out, cap, "out")? };
        LAST_ERROR.with(|slot| write_out(&slot.borrow(), out))
    })
}
