//! [`Store`]: the state of one kernel's store (sled, key stripes, the
//! transaction counter, the committer's queue, its health) shared by
//! everything in this folder. Opening it is `super::open_for`; the committer
//! threads are `super::commit`.
//!
//! Health: a failed write (sled's or the commit log's, e.g. `ENOSPC`) puts
//! the store in a *failed* state: sled keeps the error for good, so every
//! later write (put, delete, commit, undo, flush) is refused at once with
//! `IO` naming the path and saying to reopen; reads go on working. Single
//! puts and deletes acknowledged since the last successful flush are counted,
//! so `flush()` (or closing the kernel) can say how many were not made
//! durable.

use super::dir;
use super::queue::{closed, Committer, Completions, Job};
use crate::error::{KernelError, KernelResult};
use crate::events::EventQueue;
use crate::kernel::Kernel;
use crate::proto::{ErrorCode, StoreConfig, StoreRecovery};
use std::mem::ManuallyDrop;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

const DEFAULT_MAX_VALUE_BYTES: u64 = 256 << 20;
/// How long a store job may wait for the disk before it is answered `IO`.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `work` on a thread of its own and waits at most `bound` for it: a
/// write stuck in the kernel (a dead disk) cannot hang the caller. `None`
/// when it did not finish in time (it goes on in the background).
pub fn bounded<T: Send + 'static>(
    name: &str,
    bound: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (sender, receiver) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let _ = sender.send(work());
        });
    match spawned {
        Ok(_) => receiver.recv_timeout(bound).ok(),
        Err(_) => None,
    }
}

/// Lock stripes per store (a power of two).
const STRIPES: usize = 64;

/// FNV-1a of a sled key, folded onto a stripe.
pub fn stripe_of(key: &[u8]) -> usize {
    let hash = key.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash as usize) & (STRIPES - 1)
}

/// The store of one kernel.
pub struct Store {
    /// Dropped on a thread of its own (see `Drop`): sled's last handle
    /// flushes and syncs, which must not hang a closing kernel.
    pub(crate) db: ManuallyDrop<sled::Db>,
    dir: PathBuf,
    /// The key this store holds in the process's open-dir registry.
    registered: PathBuf,
    /// Key stripes: a writer holds the stripes of every key it touches.
    stripes: Vec<Mutex<()>>,
    pub(crate) next_tx: AtomicU64,
    pub(crate) max_value_bytes: u64,
    pub(crate) journal_max_records: u64,
    pub(crate) journal_max_age_ms: u64,
    pub(crate) commits: AtomicU64,
    pub(crate) flushes: AtomicU64,
    pub(crate) committer: Committer,
    pub(crate) completions: Arc<Completions>,
    /// How long a job may wait for the disk (`store.ioTimeoutMs`).
    pub(crate) io_timeout: Duration,
    /// Single puts and deletes acknowledged since the start of the last
    /// successful sled flush (an upper bound of what a failure loses).
    pub(crate) unflushed: AtomicU64,
    /// What recovery did when the store opened.
    pub(crate) recovery: StoreRecovery,
    closed: AtomicBool,
    /// Closing left a thread stuck in a write behind.
    left_behind: AtomicBool,
    failed: AtomicBool,
    failure: Mutex<Option<KernelError>>,
    watchdog: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// A cluster store's replica (`super::cluster`): no local writes.
    replica: AtomicBool,
}

impl Store {
    /// Wraps an opened, recovered sled database of `dir` (claimed under
    /// `registered`) whose next transaction id is `next_tx`; finished jobs
    /// are announced on `events`.
    pub fn new(
        db: sled::Db,
        dir: &Path,
        registered: PathBuf,
        next_tx: u64,
        config: &StoreConfig,
        events: Arc<EventQueue>,
        recovery: StoreRecovery,
    ) -> Store {
        Store {
            db: ManuallyDrop::new(db),
            dir: dir.to_path_buf(),
            registered,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            next_tx: AtomicU64::new(next_tx),
            max_value_bytes: match config.max_value_bytes {
                0 => DEFAULT_MAX_VALUE_BYTES,
                bytes => bytes,
            },
            journal_max_records: config.journal_max_records,
            journal_max_age_ms: config.journal_max_age_ms,
            commits: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            committer: Committer::default(),
            completions: Arc::new(Completions::new(events)),
            io_timeout: match config.io_timeout_ms {
                0 => DEFAULT_IO_TIMEOUT,
                ms => Duration::from_millis(ms),
            },
            unflushed: AtomicU64::new(0),
            recovery,
            closed: AtomicBool::new(false),
            left_behind: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            watchdog: Mutex::new(None),
            replica: AtomicBool::new(false),
        }
    }

    /// Keeps the watchdog thread to stop it at close.
    pub fn set_watchdog(&self, thread: std::thread::JoinHandle<()>) {
        *self.watchdog.lock().unwrap_or_else(|p| p.into_inner()) = Some(thread);
    }

    /// Refuses further commits, flushes and releases the data dir, within
    /// the I/O timeout whatever the disk does (threads stuck in a write that
    /// never returns are left behind). Idempotent. `Err` (`IO`) when puts or
    /// deletes acknowledged since the last successful flush may not have been
    /// made durable (a crash or the next open may not have them) and no flush
    /// reported it.
    pub fn close(&self) -> KernelResult<()> {
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let bound = self.io_timeout;
        let deadline = std::time::Instant::now() + bound;
        let left = || deadline.saturating_duration_since(std::time::Instant::now());
        if !self.committer.stop(left()) {
            self.left_behind.store(true, Ordering::SeqCst);
        }
        let db = (*self.db).clone();
        let covered = self.unflushed.swap(0, Ordering::SeqCst);
        let flushed = if self.is_failed() {
            None
        } else {
            bounded("krepis-store-close", left(), move || db.flush())
        };
        if flushed.is_none() {
            self.left_behind.store(true, Ordering::SeqCst);
        }
        let lost = match flushed {
            Some(Ok(_)) => 0,
            _ => covered + self.unflushed.swap(0, Ordering::SeqCst),
        };
        // Anything still unanswered (threads left behind) gets an answer.
        for (ticket, operation) in self.completions.unanswered() {
            self.completions.answer(ticket, Err(closed()), operation);
        }
        self.completions.close();
        if let Some(watchdog) = self
            .watchdog
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = watchdog.join();
        }
        dir::unregister(&self.registered);
        if lost == 0 {
            return Ok(());
        }
        let cause = match flushed {
            Some(Err(error)) => self.sled_error(error).message,
            Some(Ok(_)) => String::new(),
            None if self.is_failed() => self.failure_message(),
            None => format!(
                "the final flush did not finish within {} ms",
                bound.as_millis()
            ),
        };
        Err(KernelError::new(
            ErrorCode::Io,
            format!(
                "closing the store: up to {lost} put/delete calls made since the last successful \
                 flush may not have been made durable and may be lost ({cause}). Commits that \
                 resolved are not affected"
            ),
        )
        .with_detail("path", self.dir.display().to_string())
        .with_detail("lostWrites", lost.to_string()))
    }

    /// Queues the job `job(ticket)` for the committer and returns its ticket
    /// (its result arrives through `krepis_store_completions`). Refused at
    /// once while the store is stalled on a disk that does not respond.
    pub fn submit(&self, job: impl FnOnce(u64) -> Job) -> KernelResult<u64> {
        self.completions.check_not_stalled()?;
        let ticket = self.completions.ticket();
        let job = job(ticket);
        self.completions.track(ticket, job.operation());
        if !self.committer.submit(job) {
            self.completions.untrack(ticket);
            return Err(closed());
        }
        Ok(ticket)
    }

    /// Marks this store as the replica of a cluster store: single-key writes
    /// are refused (commits go to the cluster).
    pub fn mark_replica(&self) {
        self.replica.store(true, Ordering::SeqCst);
    }

    /// `UNSUPPORTED` on a cluster store's replica, naming what to use.
    pub fn check_local_write(&self, operation: &str) -> KernelResult<()> {
        if self.replica.load(Ordering::Relaxed) {
            return Err(KernelError::new(
                ErrorCode::Unsupported,
                format!("{operation} is refused on a cluster store: it is synchronous and unjournaled, and a cluster write can be neither; use `await store.commit([{{ type: \"{operation}\", ... }}])`, a durable, journaled cluster transaction"),
            )
            .with_detail("use", "commit"));
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Refuses further writes after one failed (sled keeps a failed write's
    /// error for good, and applies a batch key by key in memory, so a failed
    /// batch may be partly visible until the store is reopened and recovered).
    pub fn fail(&self, error: &KernelError) {
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        failure.get_or_insert_with(|| error.clone());
        self.failed.store(true, Ordering::SeqCst);
    }

    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    fn failure_message(&self) -> String {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or_else(String::new, |error| error.message.clone())
    }

    /// `Err` (`IO`) once a write failed.
    pub fn check_healthy(&self) -> KernelResult<()> {
        if !self.is_failed() {
            return Ok(());
        }
        Err(KernelError::new(
            ErrorCode::Io,
            format!(
                "the store refuses writes after a failed write ({}); free space or fix the disk, \
                 then close the kernel and open it again to recover",
                self.failure_message()
            ),
        )
        .with_detail("path", self.dir.display().to_string())
        .with_detail("reason", "failed"))
    }

    /// A sled error as the typed error it means, naming the store's path.
    pub fn sled_error(&self, error: sled::Error) -> KernelError {
        dir::sled_error(&self.dir, error)
    }

    /// A sled error from a write: an I/O failure puts the store in the
    /// failed state (sled refuses every later write anyway).
    pub fn write_error(&self, error: sled::Error) -> KernelError {
        let io = matches!(error, sled::Error::Io(_));
        let error = self.sled_error(error);
        if io {
            self.fail(&error);
        }
        error
    }

    /// Locks the stripes of `keys` (sled keys), in stripe order so that
    /// writers never deadlock. Hold the guards across read-check-write.
    pub(crate) fn lock_keys<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a [u8]>,
    ) -> Vec<MutexGuard<'_, ()>> {
        self.lock_stripes(keys.into_iter().map(stripe_of).collect())
    }

    /// Locks `stripes` in ascending order (the order every locker uses, so
    /// two lockers never wait on each other in a cycle).
    pub(crate) fn lock_stripes(&self, mut stripes: Vec<usize>) -> Vec<MutexGuard<'_, ()>> {
        stripes.sort_unstable();
        stripes.dedup();
        stripes
            .into_iter()
            .map(|stripe| {
                self.stripes[stripe]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
            })
            .collect()
    }

    pub fn check_value(&self, len: usize) -> KernelResult<()> {
        if len as u64 > self.max_value_bytes {
            return Err(KernelError::invalid_argument(format!(
                "a value of {len} bytes exceeds the store's maximum of {} bytes (store.maxValueBytes)",
                self.max_value_bytes
            ))
            .with_detail("reason", "value_too_large"));
        }
        Ok(())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.close();
        // SAFETY: `self.db` is never used again: `self` is being dropped.
        let db = unsafe { ManuallyDrop::take(&mut self.db) };
        // sled's last handle flushes and syncs on drop (and may panic if the
        // sync fails): do it on a thread of its own. A normal close waits for
        // it, so sled's file lock is released when the kernel's close
        // returns; after a disk stopped responding it does not wait at all.
        let wait = if self.left_behind.load(Ordering::SeqCst) {
            Duration::ZERO
        } else {
            self.io_timeout
        };
        let _ = bounded("krepis-store-drop", wait, move || drop(db));
    }
}

/// The store of `kernel`, or an error naming why there is none.
pub fn of(kernel: &Kernel) -> KernelResult<Arc<Store>> {
    kernel.attached::<Store>().ok_or_else(|| {
        if kernel.data_dir().is_none() {
            KernelError::new(
                ErrorCode::InvalidArgument,
                "this kernel has no data dir (dataDir: null), so it has no store",
            )
        } else {
            KernelError::new(ErrorCode::Closed, "the kernel is closed")
        }
    })
}
