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
use std::sync::atomic::{AtomicU64, Ordering};
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

/// The wake benchmark (`bench/wake.ts`): ways a kernel thread can wake the
/// JS event loop, compared on one JS → kernel → JS echo. JS pings the lab
/// thread (a fast call and a condition variable, the same in every mode);
/// the lab thread stamps the time and wakes JS with `mode`:
///
/// 1. a `nonblocking` call JS keeps pending, parked on a condition variable
///    (a Deno blocking-pool thread wakes, then the event loop);
/// 2. a thread-safe callback called by a notifier thread the lab signals;
/// 3. a thread-safe callback called by the lab thread itself (it blocks
///    until JS ran the callback);
/// 4. one byte on a loopback TCP connection JS reads with Deno's async I/O;
/// 5. a signal to the process (`SIGUSR2`) JS listens for;
/// 6. no wake at all: JS spins on the event queues' push count
///    (`krepis_events_spin`, here `krepis_debug_wake_lab_spin`) and the lab
///    announces a push, as a queue does while its JS side spins.
pub const WAKE_LAB_NONBLOCKING: u32 = 1;
pub const WAKE_LAB_CALLBACK_THREAD: u32 = 2;
pub const WAKE_LAB_CALLBACK_DIRECT: u32 = 3;
pub const WAKE_LAB_SOCKET: u32 = 4;
pub const WAKE_LAB_SIGNAL: u32 = 5;
pub const WAKE_LAB_SPIN: u32 = 6;

/// A JS `Deno.UnsafeCallback.threadSafe` taking nothing.
pub type WakeCallback = Option<unsafe extern "C" fn()>;

/// A counter and its condition variable: one side bumps, the other waits.
#[derive(Default)]
struct Signal {
    count: std::sync::Mutex<u64>,
    changed: std::sync::Condvar,
}

impl Signal {
    fn bump(&self) {
        let mut count = self.count.lock().unwrap_or_else(|p| p.into_inner());
        *count += 1;
        self.changed.notify_one();
    }

    /// Waits until the count differs from `seen` (or `timeout`); returns it.
    fn wait_past(&self, seen: u64, timeout: std::time::Duration) -> u64 {
        let count = self.count.lock().unwrap_or_else(|p| p.into_inner());
        let (count, _) = self
            .changed
            .wait_timeout_while(count, timeout, |count| *count == seen)
            .unwrap_or_else(|p| p.into_inner());
        *count
    }
}

struct WakeLab {
    ping: Signal,
    woken: Signal,
    notify: Signal,
    stamp: AtomicU64,
    stopped: std::sync::atomic::AtomicBool,
}

static WAKE_LAB: std::sync::Mutex<Option<Arc<WakeLab>>> = std::sync::Mutex::new(None);

fn monotonic_ns() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}

fn wake_lab() -> Result<Arc<WakeLab>, KernelError> {
    WAKE_LAB
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .ok_or_else(|| KernelError::invalid_argument("the wake lab is not started"))
}

/// Diagnostics: starts the wake lab in `mode` (see [`WAKE_LAB_NONBLOCKING`]
/// and the modes after it), stopping a previous one. `callback` is JS's
/// thread-safe callback (modes 2 and 3), `port` the loopback port JS listens
/// on (mode 4).
#[no_mangle]
pub extern "C" fn krepis_debug_wake_lab_start(mode: u32, callback: WakeCallback, port: u32) -> i32 {
    call("krepis_debug_wake_lab_start", || {
        let _ = krepis_debug_wake_lab_stop();
        let wake: Box<dyn FnMut(&WakeLab) + Send> = match mode {
            WAKE_LAB_NONBLOCKING => Box::new(|lab: &WakeLab| lab.woken.bump()),
            WAKE_LAB_SPIN => Box::new(|_: &WakeLab| crate::events::announce()),
            WAKE_LAB_CALLBACK_THREAD | WAKE_LAB_CALLBACK_DIRECT => {
                let callback =
                    callback.ok_or_else(|| KernelError::invalid_argument("callback is null"))?;
                if mode == WAKE_LAB_CALLBACK_DIRECT {
                    // SAFETY: JS keeps the thread-safe callback open while the lab runs.
                    Box::new(move |_: &WakeLab| unsafe { callback() })
                } else {
                    Box::new(|lab: &WakeLab| lab.notify.bump())
                }
            }
            WAKE_LAB_SOCKET => {
                let mut socket = std::net::TcpStream::connect(("127.0.0.1", port as u16))
                    .map_err(|error| KernelError::io("connecting to JS", &error))?;
                let _ = socket.set_nodelay(true);
                Box::new(move |_: &WakeLab| {
                    let _ = std::io::Write::write_all(&mut socket, &[1]);
                })
            }
            #[cfg(unix)]
            WAKE_LAB_SIGNAL => Box::new(|_: &WakeLab| {
                // SAFETY: kill(2) on our own pid with a signal JS listens for.
                unsafe { libc::kill(libc::getpid(), libc::SIGUSR2) };
            }),
            other => {
                return Err(KernelError::invalid_argument(format!(
                    "unknown or unsupported wake lab mode {other}"
                )))
            }
        };
        let lab = Arc::new(WakeLab {
            ping: Signal::default(),
            woken: Signal::default(),
            notify: Signal::default(),
            stamp: AtomicU64::new(0),
            stopped: std::sync::atomic::AtomicBool::new(false),
        });
        if mode == WAKE_LAB_CALLBACK_THREAD {
            let callback =
                callback.ok_or_else(|| KernelError::invalid_argument("callback is null"))?;
            let notifier = Arc::clone(&lab);
            std::thread::Builder::new()
                .name("krepis-wake-notifier".into())
                .spawn(move || {
                    let mut seen = 0;
                    while !notifier.stopped.load(Ordering::SeqCst) {
                        let now = notifier
                            .notify
                            .wait_past(seen, std::time::Duration::from_millis(50));
                        if now != seen {
                            seen = now;
                            // SAFETY: JS keeps the thread-safe callback open while the lab runs.
                            unsafe { callback() };
                        }
                    }
                })
                .map_err(|error| KernelError::io("starting the notifier", &error))?;
        }
        let worker = Arc::clone(&lab);
        let mut wake = wake;
        std::thread::Builder::new()
            .name("krepis-wake-lab".into())
            .spawn(move || {
                let mut seen = 0;
                while !worker.stopped.load(Ordering::SeqCst) {
                    let now = worker
                        .ping
                        .wait_past(seen, std::time::Duration::from_millis(50));
                    if now != seen {
                        seen = now;
                        worker.stamp.store(monotonic_ns(), Ordering::SeqCst);
                        wake(&worker);
                    }
                }
            })
            .map_err(|error| KernelError::io("starting the wake lab", &error))?;
        *WAKE_LAB.lock().unwrap_or_else(|p| p.into_inner()) = Some(lab);
        Ok(0)
    })
}

/// Diagnostics: JS asks the wake lab thread to wake it (a fast call).
#[no_mangle]
pub extern "C" fn krepis_debug_wake_lab_ping() -> i32 {
    call("krepis_debug_wake_lab_ping", || {
        wake_lab()?.ping.bump();
        Ok(0)
    })
}

/// [nonblocking] Diagnostics: mode 1's wait: returns once the lab woke JS
/// more than `seen` times (the new count, low 31 bits), or 0 after `timeout_ms`.
#[no_mangle]
pub extern "C" fn krepis_debug_wake_lab_wait(seen: u32, timeout_ms: u32) -> i32 {
    call("krepis_debug_wake_lab_wait", || {
        let lab = wake_lab()?;
        let timeout = std::time::Duration::from_millis(u64::from(timeout_ms));
        let now = lab.woken.wait_past(u64::from(seen), timeout);
        Ok((now & 0x7fff_ffff) as i32)
    })
}

/// Diagnostics: mode 6's wait, the event pump's spin: busy-waits up to
/// `max_micros` until a push was announced since JS saw the count `seen`;
/// returns the count now.
#[no_mangle]
pub extern "C" fn krepis_debug_wake_lab_spin(seen: u32, max_micros: u32) -> u32 {
    crate::events::spin(
        seen,
        std::time::Duration::from_micros(u64::from(max_micros.min(1000))),
    )
}

/// Diagnostics: stops the wake lab's threads.
#[no_mangle]
pub extern "C" fn krepis_debug_wake_lab_stop() -> i32 {
    call("krepis_debug_wake_lab_stop", || {
        if let Some(lab) = WAKE_LAB.lock().unwrap_or_else(|p| p.into_inner()).take() {
            lab.stopped.store(true, Ordering::SeqCst);
            lab.woken.bump();
        }
        Ok(0)
    })
}

/// Diagnostics: writes the kernel's monotonic clock (ns) to `out[0]` and
/// the time the wake lab last decided to wake JS to `out[1]`.
///
/// # Safety
/// `out` must point to two writable, aligned `u64`s.
#[no_mangle]
pub unsafe extern "C" fn krepis_debug_clock(out: *mut u64) -> i32 {
    call("krepis_debug_clock", || {
        if out.is_null() || !out.is_aligned() {
            return Err(KernelError::invalid_argument(
                "out must point to two aligned u64",
            ));
        }
        let stamp = WAKE_LAB
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, |lab| lab.stamp.load(Ordering::SeqCst));
        // SAFETY: checked non-null and aligned; the caller guarantees two u64.
        unsafe {
            out.write(monotonic_ns());
            out.add(1).write(stamp);
        }
        Ok(0)
    })
}

/// Diagnostics: holds a cluster store's replica watch off (`paused` 1) or
/// lets it resume (0), as if the kernel were cut off from the cluster; tests
/// use it to let a compaction outrun the replica.
#[no_mangle]
pub extern "C" fn krepis_store_debug_pause_replica(kernel: u32, paused: u32) -> i32 {
    call("krepis_store_debug_pause_replica", || {
        crate::store::cluster::debug_pause(kernel, paused != 0)?;
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
