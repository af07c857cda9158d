//! stdout and stderr of a guarded command: one pump per stream, on the
//! kernel's blocking pool, that reads it to the end and streams it into a
//! kernel → JS ring (`spawn()`), collects it in memory (`run()`), or both.
//! A stream past its byte limit is cut and the command's tree killed; the
//! pumps keep draining otherwise, so a command never blocks on a full pipe.
//! stdout may instead go to a [`StreamReader`] of another capability (the
//! runtimes' framer), which reads it to the end itself.

use super::stopper::Stopper;
use crate::proto::{GuardResult, GuardViolation};
use crate::ring::{ring, Producer, Ring, RING_RECORD_HEADER_BYTES};
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The rings stdout and stderr stream into (handle 0: none), claimed as
/// their only kernel-side producer.
pub fn claim_rings(stdout: u32, stderr: u32) -> crate::error::KernelResult<[Option<Arc<Ring>>; 2]> {
    let rings = [stdout, stderr].map(|handle| {
        if handle == 0 {
            Ok(None)
        } else {
            ring(handle).map(Some)
        }
    });
    let [stdout_ring, stderr_ring] = rings;
    let (stdout_ring, stderr_ring) = (stdout_ring?, stderr_ring?);
    for ring in [&stdout_ring, &stderr_ring].into_iter().flatten() {
        ring.claim()?;
    }
    Ok([stdout_ring, stderr_ring])
}

/// Reads a stream to its end in place of the pump (on the pump's thread);
/// a violation it returns kills the command's tree and is reported.
pub type StreamReader = Box<dyn FnOnce(Box<dyn Read + Send>) -> Option<GuardViolation> + Send>;

/// The pumps of one command, as the waiter sees them.
pub struct Output {
    collect: bool,
    /// A reader of another capability reads stdout: its violation must be
    /// in the result, so the result waits (briefly) for it too.
    read_elsewhere: bool,
    /// Collected output accumulates here, so whatever was read is kept even
    /// if a pump never finishes.
    sinks: Arc<[Mutex<Vec<u8>>; 2]>,
    truncated: Arc<[AtomicBool; 2]>,
    /// One message per finished pump. A std channel: tokio timers die with
    /// the runtime on kernel close.
    pumps_done: Receiver<()>,
}

/// Starts a pump for each of `sources` (stdout, stderr) on `runtime`'s
/// blocking pool. Each stream goes to its ring (closed when the stream
/// ends) and, when `collect`, into memory; past `limit` bytes (0 = none) it
/// is cut and `stop` kills the tree. `stdout_reader`, when given, reads
/// stdout instead of its pump.
pub fn start(
    runtime: &tokio::runtime::Handle,
    sources: [Option<Box<dyn Read + Send>>; 2],
    rings: [Option<Arc<Ring>>; 2],
    limit: u64,
    collect: bool,
    stop: &Arc<Stopper>,
    mut stdout_reader: Option<StreamReader>,
) -> Output {
    let sinks: Arc<[Mutex<Vec<u8>>; 2]> = Arc::default();
    let truncated: Arc<[AtomicBool; 2]> = Arc::default();
    let (pumped, pumps_done) = channel::<()>();
    let read_elsewhere = stdout_reader.is_some();
    for (index, ((source, ring), name)) in sources
        .into_iter()
        .zip(rings)
        .zip(["stdout", "stderr"])
        .enumerate()
    {
        let (stop, pump_runtime) = (Arc::clone(stop), runtime.clone());
        let (sinks, truncated, pumped) =
            (Arc::clone(&sinks), Arc::clone(&truncated), pumped.clone());
        let reader = if index == 0 {
            stdout_reader.take()
        } else {
            None
        };
        runtime.spawn_blocking(move || {
            match (reader, source) {
                (Some(reader), Some(source)) => {
                    if let Some(violation) = reader(source) {
                        stop.kill(Some((violation.kind.as_str(), violation.detail)));
                    }
                }
                (None, Some(source)) => {
                    let sink = collect.then(|| &sinks[index]);
                    if pump(
                        source,
                        ring.clone(),
                        limit,
                        &stop,
                        name,
                        &pump_runtime,
                        sink,
                    ) {
                        truncated[index].store(true, Ordering::SeqCst);
                    }
                }
                _ => {}
            }
            if let Some(ring) = ring {
                ring.close();
            }
            let _ = pumped.send(());
        });
    }
    Output {
        collect,
        read_elsewhere,
        sinks,
        truncated,
        pumps_done,
    }
}

impl Output {
    /// Puts the output into `result` once the command ended. Collected
    /// output, or stdout read by another capability (whose violation belongs
    /// in the result): waits (briefly) for the pumps first. A process that escaped
    /// every kill may still hold the output open; streamed output is the
    /// reader's business and does not hold the result back.
    pub fn complete(self, result: &mut GuardResult, stop: &Stopper) {
        if self.collect || self.read_elsewhere {
            let deadline = Instant::now() + Duration::from_millis(500);
            for _ in 0..2 {
                let left = deadline.saturating_duration_since(Instant::now());
                if self.pumps_done.recv_timeout(left).is_err() {
                    stop.record(
                        "orphans",
                        "a process outside the command's reach kept its output open",
                    );
                    break;
                }
            }
        }
        let take = |sink: &Mutex<Vec<u8>>| {
            std::mem::take(&mut *sink.lock().unwrap_or_else(|p| p.into_inner()))
        };
        result.stdout = take(&self.sinks[0]);
        result.stderr = take(&self.sinks[1]);
        result.stdout_truncated = self.truncated[0].load(Ordering::SeqCst);
        result.stderr_truncated = self.truncated[1].load(Ordering::SeqCst);
    }
}

/// Writes one process output stream into a ring, up to `limit` bytes.
/// Returns whether it had to truncate.
fn pump(
    mut source: impl Read,
    ring: Option<Arc<Ring>>,
    limit: u64,
    stop: &Stopper,
    name: &str,
    runtime: &tokio::runtime::Handle,
    sink: Option<&Mutex<Vec<u8>>>,
) -> bool {
    let mut producer = ring.map(Producer::new);
    let max_chunk = producer.as_ref().map_or(64 * 1024, |p| {
        (p.capacity() - RING_RECORD_HEADER_BYTES).min(64 * 1024) as usize
    });
    let mut buffer = vec![0u8; max_chunk];
    let mut total = 0u64;
    loop {
        let read = match source.read(&mut buffer) {
            Ok(0) | Err(_) => return false,
            Ok(read) => read,
        };
        let allowed = if limit == 0 {
            read as u64
        } else {
            (limit - total.min(limit)).min(read as u64)
        };
        if let Some(sink) = sink {
            sink.lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(&buffer[..allowed as usize]);
        }
        if let Some(producer) = producer.as_mut() {
            if allowed > 0 {
                match runtime.block_on(producer.reserve(allowed as u32, 0)) {
                    Ok(Some(slot)) => {
                        // SAFETY: `allowed` bytes were reserved at `slot`.
                        unsafe {
                            std::ptr::copy_nonoverlapping(buffer.as_ptr(), slot, allowed as usize)
                        };
                        producer.publish();
                    }
                    _ => {
                        // The reader went away: keep draining so the child never blocks.
                    }
                }
            }
        }
        total += read as u64;
        if limit != 0 && total > limit {
            stop.kill(Some((
                "output",
                format!("{name} exceeded maxOutputBytes ({limit} bytes)"),
            )));
            return true;
        }
    }
}
