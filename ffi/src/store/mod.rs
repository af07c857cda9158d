//! The store: a durable key-value store on sled in `<dataDir>/store`, owned
//! by a kernel, with atomic, journaled commits and a commit log.
//!
//! Files, from the bottom up (a file imports only files listed before it):
//! - [`keys`]: the key layout in the one sled tree;
//! - [`dir`]: claiming the data dir, syncing it, errors that name it;
//! - [`wal`]: the commit log (durability of acknowledged commits);
//! - [`queue`]: jobs for the committer and where their results go;
//! - [`watchdog`]: answers jobs the disk does not finish in time;
//! - [`db`]: [`Store`], the state shared by everything here, its health;
//! - [`group`]: commits staged into one atomic sled batch;
//! - [`journal`]: journal records, retention, reading, undo (inverse ops);
//! - [`tree`]: named trees as JS holds them, single-key operations;
//! - [`commit`]: the committer and flusher threads, commit exports;
//! - [`scan`], [`watch`]: streaming scans and change feeds;
//! - [`cluster`]: the same store on a prefix of an etcd cluster (a local
//!   replica read by the files above; commits go to etcd);
//! - this file: opening and closing a kernel's store, its stats.

pub mod cluster;
pub mod commit;
pub mod db;
pub mod dir;
pub mod group;
pub mod journal;
pub mod keys;
pub mod queue;
pub mod scan;
pub mod tree;
pub mod wal;
pub mod watch;
pub mod watchdog;

pub use db::Store;

use crate::error::{KernelError, KernelResult};
use crate::events::EventQueue;
use crate::kernel::Kernel;
use crate::proto::{StoreConfig, StoreStats};
use dir::{corrupt, sled_error};
use keys::{FORMAT, JOURNAL, META_FORMAT, META_NEXT_TX};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEFAULT_CACHE_BYTES: u64 = 256 << 20;

/// Opens the store of `kernel`'s data dir (if it has one) and attaches it to
/// the kernel. Never reinitialises anything it does not recognise.
pub fn open_for(kernel: &Kernel, config: &StoreConfig) -> KernelResult<()> {
    // Validated on a cluster store too (it has no commit log to recover).
    recover_mode(config)?;
    if let Some(cluster) = &config.cluster {
        return cluster::open_for(kernel, config, cluster);
    }
    let Some(data_dir) = kernel.data_dir() else {
        return Ok(());
    };
    let store = open(data_dir, config, kernel.events())?;
    kernel.attach(store);
    Ok(())
}

/// Closes `kernel`'s store (flush, stop the committer, release the data dir)
/// even if something still holds a reference to it. `Err` (`IO`) when puts
/// or deletes that were acknowledged were not made durable (see
/// [`Store::close`]); the store is closed either way.
pub fn close_of(kernel: &Kernel) -> KernelResult<()> {
    cluster::close_of(kernel);
    match kernel.detach::<Store>() {
        Some(store) => store.close(),
        None => Ok(()),
    }
}

/// Releases the tree and scan handles of a kernel (on kernel close).
pub fn release_owned(kernel_id: u64) {
    tree::release_trees(kernel_id);
    scan::release_scans(kernel_id);
}

/// The store's part of `kernel.stats()`; `None` without a store.
pub fn stats_of(kernel: &Kernel) -> Option<StoreStats> {
    if let Some(stats) = cluster::stats_of(kernel) {
        return Some(stats);
    }
    let store = kernel.attached::<Store>()?;
    Some(StoreStats {
        next_tx_id: store.next_tx.load(Ordering::SeqCst),
        journal_records: journal::count(&store),
        commits: store.commits.load(Ordering::Relaxed),
        flushes: store.flushes.load(Ordering::Relaxed),
        size_on_disk_bytes: store.db.size_on_disk().unwrap_or(0),
        recovery: Some(store.recovery.clone()),
    })
}

/// The recovery mode a config asks for.
fn recover_mode(config: &StoreConfig) -> KernelResult<wal::RecoverMode> {
    match config.recover.as_str() {
        "" | "refuse" => Ok(wal::RecoverMode::Refuse),
        "truncate" => Ok(wal::RecoverMode::Truncate),
        other => Err(KernelError::invalid_argument(format!(
            "store.recover must be \"refuse\" or \"truncate\", got {other:?}"
        ))
        .with_detail("field", "store.recover")),
    }
}

fn open(
    data_dir: &Path,
    config: &StoreConfig,
    events: &Arc<EventQueue>,
) -> KernelResult<Arc<Store>> {
    let mode = recover_mode(config)?;
    let ours = dir::inspect(data_dir)?;
    let registered = dir::register(data_dir)?;
    let opened = open_registered(data_dir, config, mode, ours, registered.clone(), events);
    if opened.is_err() {
        dir::unregister(&registered);
    }
    opened
}

fn open_registered(
    data_dir: &Path,
    config: &StoreConfig,
    mode: wal::RecoverMode,
    ours: bool,
    registered: PathBuf,
    events: &Arc<EventQueue>,
) -> KernelResult<Arc<Store>> {
    let path = data_dir.join(dir::STORE_DIR);
    if ours && !path.is_dir() {
        return Err(corrupt(
            data_dir,
            "has lost its store (store/ is missing or empty); nothing was recreated",
        ));
    }
    let cache = match config.cache_capacity_bytes {
        0 => DEFAULT_CACHE_BYTES,
        bytes => bytes,
    };
    // sled may panic on some corrupt files; that is a corrupt store, not a crash.
    let open = || {
        std::panic::catch_unwind(|| {
            sled::Config::new()
                .path(&path)
                .cache_capacity(cache)
                .flush_every_ms(Some(500))
                .mode(sled::Mode::HighThroughput)
                .open()
        })
        .map_err(|_| {
            corrupt(
                data_dir,
                "has a store sled cannot read (it panicked while opening)",
            )
        })
    };
    let started = Instant::now();
    let db = loop {
        match open()? {
            Err(error)
                if dir::lock_contended(&error)
                    && dir::closed_here_recently(&registered)
                    && started.elapsed() < dir::LOCK_RELEASE_WAIT =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            opened => break opened.map_err(|error| sled_error(data_dir, error))?,
        }
    };
    let next_tx = match db.get(META_FORMAT).map_err(|e| sled_error(data_dir, e))? {
        Some(format) if format.as_ref() == FORMAT => {
            let next = db
                .get(META_NEXT_TX)
                .map_err(|e| sled_error(data_dir, e))?
                .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_ref()).ok())
                .ok_or_else(|| {
                    corrupt(data_dir, "has a store without a valid next transaction id")
                })?;
            // Every commit batch stores the counter; the journal's last
            // record is checked too, as a second source.
            let last = db
                .scan_prefix([JOURNAL])
                .next_back()
                .transpose()
                .map_err(|e| sled_error(data_dir, e))?
                .and_then(|(key, _)| keys::tx_of(&key));
            u64::from_be_bytes(next).max(last.map_or(0, |tx| tx + 1))
        }
        Some(other) => {
            return Err(corrupt(
                data_dir,
                format!(
                    "has a store of an unknown format {:?}",
                    String::from_utf8_lossy(&other)
                ),
            ))
        }
        // Never recreate the store of a data dir that had one.
        None if ours => {
            return Err(corrupt(
                data_dir,
                "has lost its store (store/ is missing or empty); nothing was recreated",
            ))
        }
        None if db.is_empty() => {
            let mut batch = sled::Batch::default();
            batch.insert(META_FORMAT, FORMAT);
            batch.insert(META_NEXT_TX, &1u64.to_be_bytes());
            db.apply_batch(batch).map_err(|e| sled_error(data_dir, e))?;
            db.flush().map_err(|e| sled_error(data_dir, e))?;
            1
        }
        None => return Err(corrupt(data_dir, "has a store that krepis did not create")),
    };
    // Acknowledged commits that sled had not flushed yet come back here.
    let map = |error| sled_error(data_dir, error);
    let (log, recovery) = wal::Wal::recover(&db, data_dir, ours, mode, &map)?;
    if !ours {
        dir::write_marker(data_dir)?;
    }
    let next_tx = next_tx.max(
        db.get(META_NEXT_TX)
            .map_err(|e| sled_error(data_dir, e))?
            .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_ref()).ok())
            .map_or(0, u64::from_be_bytes),
    );
    let store = Arc::new(Store::new(
        db,
        data_dir,
        registered,
        next_tx,
        config,
        Arc::clone(events),
        recovery,
    ));
    commit::start(&store, log)?;
    let watchdog = watchdog::start(
        Arc::clone(&store.completions),
        data_dir.to_path_buf(),
        store.io_timeout,
    )
    .map_err(|error| KernelError::io("starting the store watchdog", &error))?;
    store.set_watchdog(watchdog);
    journal::prune(&store)?;
    Ok(store)
}
