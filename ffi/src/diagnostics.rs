//! Diagnostics: exports that exist for the SDK's tests and benchmarks, not
//! for applications. They are kept out of the public ABI: `lib.rs` marks this
//! module `cbindgen:ignore`, so nothing here is in `ffi/include/krepis.h` or
//! its hash; `deno task codegen` writes them to a header of their own,
//! `ffi/include/krepis_diagnostics.h`, and to
//! `bindings/_gen/diagnostics_symbols.ts`, which only tests and benches open.
//!
//! - a deliberate panic (a native panic must become a typed error);
//! - a kernel-side producer and consumer for rings (the data plane's tests
//!   and benchmarks), with a payload pattern both sides can verify;
//! - a kernel-side checksum of a shared buffer (JS writes land in place);
//! - one thread-safe callback per record: the baseline rings are measured
//!   against.

use crate::boundary::call;
use crate::error::KernelError;
use crate::kernel::kernel_by_id;
use crate::ring::{self, record_size, record_too_large, Consumer, Direction, Producer, Ring};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Diagnostics: panics on purpose inside the boundary, so an application (and
/// the SDK's tests) can verify that a native panic becomes a typed error and
/// the process survives. Always returns a negative status.
#[no_mangle]
pub extern "C" fn krepis_debug_panic() -> i32 {
    call("krepis_debug_panic", || {
        panic!("krepis_debug_panic was called (deliberate panic for diagnostics)")
    })
}

/// Diagnostics: sums the bytes `[offset, offset + len)` of a buffer as the
/// kernel sees them (wrapping u64) into `out[0]`, so tests can prove the
/// kernel reads what JS wrote in place.
///
/// # Safety
/// `out` must point to one writable, aligned `u64`.
#[no_mangle]
pub unsafe extern "C" fn krepis_buffer_debug_sum(
    buffer: u32,
    offset: u32,
    len: u32,
    out: *mut u64,
) -> i32 {
    call("krepis_buffer_debug_sum", || {
        if out.is_null() || !out.is_aligned() {
            return Err(KernelError::invalid_argument(
                "out must point to one aligned u64",
            ));
        }
        let buffer = crate::buffers::buffer(buffer)?;
        let end = u64::from(offset) + u64::from(len);
        if end > buffer.len() as u64 {
            return Err(KernelError::invalid_argument(format!(
                "range {offset}..{end} is outside the buffer of {} bytes",
                buffer.len()
            )));
        }
        // SAFETY: the range lies inside the live allocation (checked above).
        let bytes = unsafe {
            std::slice::from_raw_parts(buffer.bytes().add(offset as usize), len as usize)
        };
        let sum = bytes
            .iter()
            .fold(0u64, |sum, &byte| sum.wrapping_add(u64::from(byte)));
        // SAFETY: checked non-null and aligned; the caller guarantees one u64.
        unsafe { out.write(sum) };
        Ok(0)
    })
}

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

/// Diagnostics flag: fill every payload byte with the test pattern.
pub const RING_DIAG_FILL: u32 = 1;
/// Diagnostics flag: close the ring after the last record.
pub const RING_DIAG_CLOSE_WHEN_DONE: u32 = 2;

/// The byte at `index` of record `sequence` in the diagnostics pattern.
pub fn pattern_byte(sequence: u64, index: usize) -> u8 {
    (sequence as u8).wrapping_add(index as u8).wrapping_mul(31)
}

async fn produce_pattern(ring: Arc<Ring>, count: u32, len: u32, flags: u32) {
    let mut producer = Producer::new(Arc::clone(&ring));
    let flush_at = (ring.capacity() / 8).max(record_size(len) as u32);
    for sequence in 0..u64::from(count) {
        let payload = match producer.reserve(len, sequence as u32).await {
            Ok(Some(payload)) => payload,
            Ok(None) | Err(_) => return,
        };
        // SAFETY: `payload` points to `len` reserved bytes owned by this producer.
        unsafe {
            if flags & RING_DIAG_FILL != 0 {
                for index in 0..len as usize {
                    payload.add(index).write(pattern_byte(sequence, index));
                }
            } else if len >= 8 {
                // Stamp only: the handoff cost, not the fill, is what is measured.
                (payload as *mut u64).write_unaligned(sequence.to_le());
            }
        }
        ring.counters.records.fetch_add(1, Ordering::Relaxed);
        ring.counters
            .bytes
            .fetch_add(u64::from(len), Ordering::Relaxed);
        if producer.unpublished_bytes() >= flush_at {
            producer.publish();
        }
    }
    producer.publish();
    if flags & RING_DIAG_CLOSE_WHEN_DONE != 0 {
        ring.close();
    }
}

async fn consume_pattern(ring: Arc<Ring>, flags: u32) {
    let mut consumer = Consumer::new(Arc::clone(&ring));
    loop {
        let counters = &ring.counters;
        let drained = consumer.drain(|tag, payload| {
            let mut sum = 0u64;
            let mut bad = false;
            for (index, &byte) in payload.iter().enumerate() {
                sum = sum.wrapping_add(u64::from(byte));
                if flags & RING_DIAG_FILL != 0 && byte != pattern_byte(u64::from(tag), index) {
                    bad = true;
                }
            }
            counters.records.fetch_add(1, Ordering::Relaxed);
            counters
                .bytes
                .fetch_add(payload.len() as u64, Ordering::Relaxed);
            counters.checksum.fetch_add(sum, Ordering::Relaxed);
            if bad {
                counters.errors.fetch_add(1, Ordering::Relaxed);
            }
        });
        if drained.is_err() {
            ring.counters.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if !consumer.readable().await {
            let _ = consumer.drain(|_, _| {});
            return;
        }
    }
}

/// Diagnostics: starts a kernel task producing `count` records of
/// `payload_len` bytes into a kernel → JS ring; record `i` has tag `i` and
/// its payload starts with `i` as u64 (or, with flag 1, every byte follows
/// the test pattern). Flag 2 closes the ring after the last record. Used by
/// the tests and benchmarks of the data plane.
#[no_mangle]
pub extern "C" fn krepis_ring_debug_produce(
    ring: u32,
    count: u32,
    payload_len: u32,
    flags: u32,
) -> i32 {
    call("krepis_ring_debug_produce", || {
        let ring = ring::ring(ring)?;
        if ring.direction() != Direction::ToJs {
            return Err(KernelError::invalid_argument(
                "the kernel can only produce into a kernel → JS ring",
            ));
        }
        if record_size(payload_len) > u64::from(ring.capacity()) {
            return Err(record_too_large(payload_len, ring.capacity()));
        }
        let owner = kernel_by_id(ring.kernel_id())?;
        ring.claim()?;
        owner.spawn(produce_pattern(ring, count, payload_len, flags))?;
        Ok(0)
    })
}

/// Diagnostics: starts a kernel task that drains a JS → kernel ring until it
/// closes, counting records and bytes and summing payload bytes (see
/// `krepis_ring_stats`); with flag 1 it also verifies the test pattern.
#[no_mangle]
pub extern "C" fn krepis_ring_debug_consume(ring: u32, flags: u32) -> i32 {
    call("krepis_ring_debug_consume", || {
        let ring = ring::ring(ring)?;
        if ring.direction() != Direction::ToKernel {
            return Err(KernelError::invalid_argument(
                "the kernel can only consume from a JS → kernel ring",
            ));
        }
        let owner = kernel_by_id(ring.kernel_id())?;
        ring.claim()?;
        owner.spawn(consume_pattern(ring, flags))?;
        Ok(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ErrorCode;
    use prost::Message;

    #[test]
    fn panics_become_errors() {
        assert_eq!(krepis_debug_panic(), -(ErrorCode::Panic as i32));
        let mut buffer = vec![0u8; 1024];
        // SAFETY: valid buffer for the call's duration.
        let length = unsafe { crate::boundary::krepis_last_error(buffer.as_mut_ptr(), 1024) };
        let error = crate::proto::Error::decode(&buffer[..length as usize]).unwrap();
        assert_eq!(error.code, ErrorCode::Panic as i32);
        assert!(error.message.contains("deliberate panic"));
    }
}
