//! The cluster backend of the store: the same API on a prefix of an etcd v3
//! cluster (`store: { cluster: { endpoints, prefix } }`).
//!
//! Reads are served by a local replica (an in-memory sled database kept
//! current from an etcd watch), through the ordinary store code; commits,
//! undo and linearizable reads go to etcd. Files, bottom up:
//! - [`client`]: connecting, etcd's failures as typed errors;
//! - [`replica`]: the snapshot, the watch, applying changes, resync;
//! - [`shared`]: [`Cluster`], the state the files below share;
//! - [`commit`]: a commit as one etcd transaction, etcd's limits;
//! - [`journal`]: undo, linearizable reads, journal retention;
//! - this file: opening and closing, the committer, the exports.
//!
//! Single-key `put`/`delete` are refused on a cluster store (`UNSUPPORTED`,
//! naming `commit`): they are synchronous and unjournaled locally, and a
//! cluster write can be neither.

pub mod client;
pub mod commit;
pub mod journal;
pub mod replica;
pub mod shared;

use super::db::Store;
use super::queue::{reply, Job};
use crate::boundary::{call, in_bytes, out_bytes, write_out, write_u64};
use crate::error::{KernelError, KernelResult};
use crate::kernel::Kernel;
use crate::proto::{
    ClusterConfig, CommitRequest, ErrorCode, StoreConfig, StoreRecovery, StoreStats,
};
use prost::Message;
use replica::Replica;
pub use shared::Cluster;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEFAULT_TIMEOUT_MS: u32 = 5000;
/// etcd's defaults for `--max-txn-ops` and `--max-request-bytes`.
const DEFAULT_MAX_TXN_OPS: u32 = 128;
const DEFAULT_MAX_REQUEST_BYTES: u32 = 1536 * 1024;
const REPLICA_CACHE_BYTES: u64 = 64 << 20;
/// Retention runs after every this many commits of this kernel.
const PRUNE_EVERY: u64 = 16;

/// Wall-clock milliseconds.
pub fn now_ms() -> u64 {
    crate::store::journal::now_ms()
}

impl Cluster {
    /// Runs one job of the store's queue on the runtime; answers it even if
    /// the runtime drops the task (kernel close).
    fn run(self: &Arc<Self>, job: Job, store: &Arc<Store>) {
        struct Answer {
            job: Option<Job>,
            store: Arc<Store>,
            in_flight: Arc<AtomicUsize>,
        }
        impl Answer {
            fn send(&mut self, result: KernelResult<u64>) {
                if let Some(job) = self.job.take() {
                    reply(&self.store.completions, job, result);
                }
            }
        }
        impl Drop for Answer {
            fn drop(&mut self) {
                self.send(Err(KernelError::new(
                    ErrorCode::Closed,
                    "the kernel closed before the cluster answered; the commit may or may not have been applied (journal.read tells)",
                )));
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let cluster = Arc::clone(self);
        let mut answer = Answer {
            job: Some(job),
            store: Arc::clone(store),
            in_flight: Arc::clone(&self.in_flight),
        };
        self.runtime.spawn(async move {
            let result = match answer.job.as_ref() {
                Some(Job::Commit { request, tree, .. }) => {
                    match CommitRequest::decode(request.as_slice()) {
                        Ok(request) => commit::commit(&cluster, &request, tree, 0, &[]).await,
                        Err(error) => Err(KernelError::invalid_argument(format!(
                            "not a krepis.v1.CommitRequest: {error}"
                        ))),
                    }
                }
                Some(Job::Undo { tx_id, ctx, .. }) => {
                    journal::undo(&cluster, *tx_id, ctx.clone()).await
                }
                // Everything acknowledged is already durable on the cluster.
                _ => Ok(0),
            };
            if result.is_ok() && !matches!(answer.job, Some(Job::Flush { .. })) {
                let commits = cluster.commits.fetch_add(1, Ordering::Relaxed) + 1;
                if commits % PRUNE_EVERY == 0 {
                    let _ = journal::prune(&cluster).await;
                }
            }
            answer.send(result);
        });
    }
}

/// Opens the cluster store of `kernel`: connects, reads the snapshot (within
/// the timeout), starts following the watch and the committer, and attaches
/// both the replica's [`Store`] and the [`Cluster`] to the kernel.
pub fn open_for(
    kernel: &Kernel,
    config: &StoreConfig,
    cluster: &ClusterConfig,
) -> KernelResult<()> {
    let urls = client::endpoint_urls(&cluster.endpoints)?;
    if cluster.prefix.is_empty() {
        return Err(KernelError::invalid_argument(
            "store.cluster.prefix must not be empty: the store owns every key under it",
        )
        .with_detail("field", "store.cluster.prefix"));
    }
    let timeout = Duration::from_millis(u64::from(match cluster.timeout_ms {
        0 => DEFAULT_TIMEOUT_MS,
        ms => ms,
    }));
    let runtime = kernel.runtime_handle()?;
    let endpoints = cluster.endpoints.clone();
    let what = format!(
        "opening the cluster store {:?}",
        String::from_utf8_lossy(&cluster.prefix)
    );
    let label = PathBuf::from(format!(
        "etcd:{}#{}",
        String::from_utf8_lossy(&cluster.prefix),
        kernel.id()
    ));
    let db = sled::Config::new()
        .temporary(true)
        .cache_capacity(REPLICA_CACHE_BYTES)
        .flush_every_ms(None)
        .mode(sled::Mode::HighThroughput)
        .open()
        .map_err(|error| super::dir::sled_error(&label, error))?;
    let store = Arc::new(Store::new(
        db,
        &label,
        label.clone(),
        0,
        config,
        Arc::clone(kernel.events()),
        // No commit log to recover: the cluster is the durable copy.
        StoreRecovery::default(),
    ));
    store.mark_replica();
    let replica = Arc::new(Replica::new(
        Arc::clone(&store),
        cluster.prefix.clone(),
        endpoints.clone(),
    ));
    let client = runtime.block_on(async {
        let deadline = Instant::now() + timeout;
        let client = tokio::time::timeout_at(deadline.into(), client::connect(&urls))
            .await
            .map_err(|_| client::connection_error(&what, &endpoints, "connecting timed out"))?
            .map_err(|error| client::etcd_error(&what, &endpoints, &error))?;
        // The first snapshot: retried until the deadline (members starting).
        let mut last = String::from("no answer");
        loop {
            match tokio::time::timeout_at(deadline.into(), replica.resync(&client)).await {
                Ok(Ok(())) => return Ok(client),
                Ok(Err(error)) if error.code == ErrorCode::Connection => last = error.message,
                Ok(Err(error)) => return Err(error),
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                return Err(client::connection_error(&what, &endpoints, &last));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })?;
    let state = Arc::new(Cluster {
        replica: Arc::clone(&replica),
        client: client.clone(),
        timeout,
        max_txn_ops: match cluster.max_txn_ops {
            0 => DEFAULT_MAX_TXN_OPS,
            ops => ops,
        } as usize,
        max_request_bytes: match cluster.max_request_bytes {
            0 => DEFAULT_MAX_REQUEST_BYTES,
            bytes => bytes,
        } as usize,
        runtime: runtime.clone(),
        instance: instance_id(kernel.id()),
        sequence: AtomicU64::new(0),
        commits: AtomicU64::new(0),
        in_flight: Arc::new(AtomicUsize::new(0)),
    });
    runtime.spawn(Arc::clone(&replica).follow(client));
    start_committer(&state, &store)?;
    kernel.attach(Arc::clone(&state));
    kernel.attach(store);
    Ok(())
}

/// 64 bits no other kernel of any process picks: time, pid, kernel id and
/// std's per-process random hash keys.
fn instance_id(kernel_id: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    hasher.write_u64(kernel_id);
    hasher.finish()
}

/// The thread that takes jobs off the store's queue and runs each on the
/// runtime (commits run concurrently; etcd orders them).
fn start_committer(cluster: &Arc<Cluster>, store: &Arc<Store>) -> KernelResult<()> {
    let (sender, receiver) = std::sync::mpsc::sync_channel::<Job>(4096);
    // Dropped when the thread ends: `Committer::stop` waits for that.
    let (ended, done) = std::sync::mpsc::sync_channel::<()>(0);
    let cluster = Arc::clone(cluster);
    let weak = Arc::downgrade(store);
    let thread = std::thread::Builder::new()
        .name("krepis-cluster-commit".to_owned())
        .spawn(move || {
            while let Ok(job) = receiver.recv() {
                match weak.upgrade() {
                    Some(store) => cluster.run(job, &store),
                    None => drop(job),
                }
            }
            // Closing: let running commits answer (their deadlines bound this).
            let until = Instant::now() + cluster.timeout + Duration::from_secs(1);
            while cluster.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
            cluster.replica.stop();
            drop(ended);
        })
        .map_err(|error| KernelError::io("starting the cluster committer", &error))?;
    store.committer.connect(sender, thread, done);
    Ok(())
}

/// Stops following the cluster (the store itself closes with the kernel's).
pub fn close_of(kernel: &Kernel) {
    if let Some(cluster) = kernel.detach::<Cluster>() {
        cluster.replica.stop();
    }
}

/// The store's stats on a cluster: tx ids are revisions.
pub fn stats_of(kernel: &Kernel) -> Option<StoreStats> {
    let cluster = kernel.attached::<Cluster>()?;
    let journal_records = cluster
        .replica
        .journal
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .by_tx
        .len() as u64;
    Some(StoreStats {
        next_tx_id: cluster.replica.applied() as u64 + 1,
        journal_records,
        commits: cluster.commits.load(Ordering::Relaxed),
        flushes: 0,
        size_on_disk_bytes: 0,
        // No commit log: nothing is recovered when a cluster store opens.
        recovery: None,
    })
}

fn of(kernel: u32) -> KernelResult<(Arc<Cluster>, Arc<Store>)> {
    let kernel = crate::kernel::kernel(kernel)?;
    let store = crate::store::db::of(&kernel)?;
    let cluster = kernel.attached::<Cluster>().ok_or_else(|| {
        KernelError::new(
            ErrorCode::Unsupported,
            "this kernel's store is local (no store.cluster): its reads are already linearizable",
        )
    })?;
    Ok((cluster, store))
}

/// Diagnostics: holds the replica's watch off or lets it resume (tests
/// simulate a kernel cut off from the cluster with it).
pub fn debug_pause(kernel: u32, paused: bool) -> KernelResult<()> {
    of(kernel)?.0.replica.pause(paused);
    Ok(())
}

/// Queues a linearizable barrier: once it resolves (a
/// `krepis.v1.CommitResult` through `krepis_store_completions` whose `tx_id`
/// is the replica's revision), the replica reflects every commit made on
/// the cluster before the call. `ctx` (an encoded `krepis.v1.Context`, may be
/// empty) bounds it with its deadline. `UNSUPPORTED` on a local store.
///
/// # Safety
/// `ctx` must point to `ctx_len` readable bytes; `out_ticket` to one aligned u64.
#[no_mangle]
pub unsafe extern "C" fn krepis_store_sync(
    kernel: u32,
    ctx: *const u8,
    ctx_len: u32,
    out_ticket: *mut u64,
) -> i32 {
    call("krepis_store_sync", || {
        // SAFETY: forwarded from this function's contract.
        let ctx = unsafe { in_bytes(ctx, ctx_len, "ctx")? };
        let ctx = crate::proto::Context::decode(ctx).map_err(|error| {
            KernelError::invalid_argument(format!("not a krepis.v1.Context: {error}"))
        })?;
        let (cluster, store) = of(kernel)?;
        let ticket = store.completions.ticket();
        // Tracked like every job, so closing the store answers it if the
        // cluster has not (the first answer wins).
        store.completions.track(ticket, "krepis_store_sync");
        let deadline = commit::deadline_of(Some(&ctx), cluster.timeout);
        let task_cluster = Arc::clone(&cluster);
        cluster.runtime.spawn(async move {
            let result = journal::sync(&task_cluster, deadline)
                .await
                .map(|revision| revision as u64);
            store
                .completions
                .answer(ticket, result, "krepis_store_sync");
        });
        // SAFETY: forwarded from this function's contract.
        unsafe { write_u64(out_ticket, ticket, "out_ticket")? };
        Ok(0)
    })
}

/// Writes what the replica reflects (a `krepis.v1.ReplicaState`: revision,
/// staleness) into `out` and returns its length. `UNSUPPORTED` on a local store.
///
/// # Safety
/// `out` must point to `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_store_replica(kernel: u32, out: *mut u8, cap: u32) -> i32 {
    call("krepis_store_replica", || {
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { out_bytes(out, cap, "out")? };
        write_out(&of(kernel)?.0.replica.state().encode_to_vec(), out)
    })
}
