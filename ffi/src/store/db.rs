//! [`Store`]: the state of one kernel's store (sled, key stripes, the
//! transaction counter, the committer's queue) shared by everything in this
//! folder. Opening it is `super::open_for`; the committer threads are
//! `super::commit`.

use super::dir;
use super::queue::{closed, Committer, Completions, Job};
use crate::error::{KernelError, KernelResult};
use crate::events::EventQueue;
use crate::kernel::Kernel;
use crate::proto::{ErrorCode, StoreConfig};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

const DEFAULT_MAX_VALUE_BYTES: u64 = 256 << 20;

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
    pub(crate) db: sled::Db,
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
    closed: AtomicBool,
    poisoned: Mutex<Option<String>>,
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
    ) -> Store {
        Store {
            db,
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
            closed: AtomicBool::new(false),
            poisoned: Mutex::new(None),
            replica: AtomicBool::new(false),
        }
    }

    /// Refuses further commits, flushes and releases the data dir. Idempotent.
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        self.committer.stop();
        let _ = self.db.flush();
        dir::unregister(&self.registered);
    }

    /// Queues the job `job(ticket)` for the committer and returns its ticket
    /// (its result arrives through `krepis_store_completions`).
    pub fn submit(&self, job: impl FnOnce(u64) -> Job) -> KernelResult<u64> {
        let ticket = self.completions.ticket();
        if !self.committer.submit(job(ticket)) {
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

    /// Refuses further commits after a write failed half-way (sled applies a
    /// batch key by key in memory, so a failed batch may be partly visible
    /// until the store is reopened and recovered).
    pub fn poison(&self, why: &str) {
        let mut poisoned = self.poisoned.lock().unwrap_or_else(|p| p.into_inner());
        poisoned.get_or_insert_with(|| why.to_owned());
    }

    /// `Err` once the store is poisoned.
    pub fn check_healthy(&self) -> KernelResult<()> {
        match self.poisoned.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(why) => Err(KernelError::new(
                ErrorCode::Io,
                format!("the store refuses writes after a failed write ({why}); close and reopen the kernel to recover"),
            )),
            None => Ok(()),
        }
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
        self.close();
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
