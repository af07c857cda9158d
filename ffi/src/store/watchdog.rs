//! The watchdog: every store job gets an answer within the store's I/O
//! timeout, even when the disk stops responding (an `fsync` that never
//! returns, a frozen file system). Jobs older than the timeout are answered
//! `IO` with an unknown outcome (the write they wait for may still complete),
//! and the store refuses new jobs until that write finished: a caller learns
//! at once that the disk is not responding instead of queueing behind it.

use super::queue::Completions;
use crate::error::KernelError;
use crate::proto::ErrorCode;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The error a job gets when the disk did not answer in time.
pub fn timed_out(operation: &str, dir: &std::path::Path, timeout: Duration) -> KernelError {
    let what = match operation {
        "krepis_store_flush" => "the flush",
        "krepis_journal_undo" => "the undo",
        _ => "the commit",
    };
    KernelError::new(
        ErrorCode::Io,
        format!(
            "{what} did not finish within {} ms (store.ioTimeoutMs): a disk write in {} is not \
             completing. Its outcome is unknown: it may still become durable when the disk \
             responds. The store refuses new writes until that write finished",
            timeout.as_millis(),
            dir.display()
        ),
    )
    .with_detail("path", dir.display().to_string())
    .with_detail("reason", "timeout")
    .with_detail("outcome", "unknown")
}

/// Starts the watchdog of a store in `dir` whose jobs complete through
/// `completions`; it ends when `completions` is closed.
pub fn start(
    completions: Arc<Completions>,
    dir: PathBuf,
    timeout: Duration,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    // Often enough that an overdue job waits at most a quarter more.
    let tick = (timeout / 4).clamp(Duration::from_millis(5), Duration::from_millis(250));
    std::thread::Builder::new()
        .name("krepis-store-watchdog".into())
        .spawn(move || {
            while completions.wait_open(tick) {
                let overdue = completions.overdue(timeout);
                if !overdue.is_empty() {
                    completions.stall(
                        KernelError::new(
                            ErrorCode::Io,
                            format!(
                                "the store in {} is not responding: a disk write has not \
                                 finished for more than {} ms (store.ioTimeoutMs); nothing new \
                                 is accepted until it does (or the kernel is reopened)",
                                dir.display(),
                                timeout.as_millis()
                            ),
                        )
                        .with_detail("path", dir.display().to_string())
                        .with_detail("reason", "stalled"),
                    );
                }
                for (ticket, operation) in overdue {
                    completions.answer(ticket, Err(timed_out(operation, &dir, timeout)), operation);
                }
            }
        })
}
