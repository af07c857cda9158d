//! Baselines the benchmarks measure the data plane against, built from the
//! same kernel so both run in one process: handing each record to JS with
//! one thread-safe callback call (what the rings replace).

use crate::boundary::call;
use crate::error::KernelError;

/// A JS `Deno.UnsafeCallback.threadSafe` taking `(sequence, length)`.
pub type RecordCallback = Option<unsafe extern "C" fn(sequence: u32, length: u32)>;

/// Diagnostics: starts a thread that calls `callback(sequence, payload_len)`
/// `count` times, one call per record, the way a callback-based data plane
/// would hand records to JS. Returns at once.
#[no_mangle]
pub extern "C" fn krepis_debug_callback_per_record(
    callback: RecordCallback,
    count: u32,
    payload_len: u32,
) -> i32 {
    call("krepis_debug_callback_per_record", || {
        let callback = callback.ok_or_else(|| KernelError::invalid_argument("callback is null"))?;
        std::thread::Builder::new()
            .name("krepis-anchor".into())
            .spawn(move || {
                for sequence in 0..count {
                    // SAFETY: the SDK passes a live thread-safe callback of this
                    // signature and keeps it open until every call has run.
                    unsafe { callback(sequence, payload_len) };
                }
            })
            .map_err(|error| KernelError::io("starting the anchor thread", &error))?;
        Ok(0)
    })
}
