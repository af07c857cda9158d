//! Transactions: atomic, journaled, durable commits with group commit.
//!
//! JS submits a commit with one fast call (`krepis_store_commit_submit`) and
//! collects finished commits in batches through the completion queue
//! (`krepis_store_completions`); undo and flush block a caller until done.
//! Two threads form a pipeline:
//!
//! 1. the committer applies requests in arrival order, each as ONE atomic
//!    sled batch (data + journal record + next tx id) under the stripes of
//!    its keys, and passes the applied group on;
//! 2. the flusher appends the group's journal records to the commit log and
//!    syncs it once ([`super::wal`]), then answers the whole group.
//!
//! While one group is being synced the committer applies the next, and
//! every commit that queued up meanwhile shares the next sync: sixteen
//! concurrent committers cost a few fsyncs, not sixteen.
//!
//! Results (including errors) are encoded as `krepis.v1.CommitResult`: the
//! thread-local last error would be on another thread, out of JS's reach.

use super::db::{self, Store};
use super::group::Group;
use super::journal;
use super::keys::{data_key, prefixes_for, show_key};
use super::queue::{closed, reply, Completions, Job};
use super::wal::{self, Wal};
use crate::boundary::{call, in_bytes, out_bytes, write_u64};
use crate::error::{KernelError, KernelResult};
use crate::proto::{op::Kind, Change, CommitRequest, ErrorCode, JournalRecord};
use prost::Message;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Weak};

/// Most requests one group applies before passing them on.
const MAX_GROUP: usize = 512;
/// While a sync is in flight, the committer waits up to this long between
/// arrivals for a group of this size.
const LINGER_GROUP: usize = 16;
const LINGER: std::time::Duration = std::time::Duration::from_micros(150);

/// An applied group on its way to the flusher.
struct Applied {
    jobs: Vec<(Job, KernelResult<u64>)>,
    /// Framed journal records of the successful commits, in tx order.
    log: Vec<u8>,
    sled_flush: bool,
}

/// Starts the committer and flusher threads of `store`, which own `log`.
pub fn start(store: &Arc<Store>, log: Wal) -> KernelResult<()> {
    let (sender, receiver) = sync_channel::<Job>(4096);
    let (done, ended) = std::sync::mpsc::channel::<()>();
    let (to_flusher, flusher_receiver) = sync_channel::<Applied>(64);
    // The threads hold weak references: they must not keep the store open.
    let weak = Arc::downgrade(store);
    let flusher_weak = Arc::downgrade(store);
    let completions = Arc::clone(&store.completions);
    let flusher_completions = Arc::clone(&store.completions);
    let flusher = std::thread::Builder::new()
        .name("krepis-flusher".into())
        .spawn(move || flusher_loop(&flusher_weak, &flusher_receiver, log, flusher_completions))
        .map_err(|error| KernelError::io("starting the store flusher", &error))?;
    let thread = std::thread::Builder::new()
        .name("krepis-committer".into())
        .spawn(move || {
            committer_loop(&weak, &receiver, &to_flusher, completions);
            drop(to_flusher);
            let _ = flusher.join();
            drop(done);
        })
        .map_err(|error| KernelError::io("starting the store committer", &error))?;
    store.committer.connect(sender, thread, ended);
    Ok(())
}

fn committer_loop(
    store: &Weak<Store>,
    receiver: &Receiver<Job>,
    flusher: &SyncSender<Applied>,
    completions: Arc<Completions>,
) {
    while let Ok(first) = receiver.recv() {
        let mut jobs = vec![first];
        loop {
            while jobs.len() < MAX_GROUP {
                match receiver.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            // While the flusher is still syncing the previous group, a
            // bigger group costs nothing in latency and is cheaper to apply
            // (one sled batch): linger briefly for more commits.
            if jobs.len() >= LINGER_GROUP || !completions.syncing.load(Ordering::SeqCst) {
                break;
            }
            match receiver.recv_timeout(LINGER) {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let Some(store) = store.upgrade() else {
            for job in jobs {
                reply(&completions, job, Err(closed()));
            }
            continue;
        };
        let mut group = Group::new(&store);
        let mut results: Vec<(Job, KernelResult<u64>)> = Vec::with_capacity(jobs.len());
        let mut sled_flush = false;
        for job in jobs {
            // A panic in one request must not take the thread (and every
            // later commit) down with it.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &job {
                Job::Commit { request, tree, .. } => CommitRequest::decode(request.as_slice())
                    .map_err(|error| {
                        KernelError::invalid_argument(format!(
                            "not a krepis.v1.CommitRequest: {error}"
                        ))
                    })
                    .and_then(|request| apply(&mut group, &request, tree, 0)),
                Job::Undo { tx_id, ctx, .. } => journal::undo(&mut group, *tx_id, ctx.clone())
                    .and_then(|inverse| apply(&mut group, &inverse, "", *tx_id)),
                Job::Flush { .. } => Ok(0),
            }))
            .unwrap_or_else(|_| Err(KernelError::new(ErrorCode::Panic, "the committer panicked")));
            sled_flush |= matches!(job, Job::Flush { .. });
            results.push((job, result));
        }
        let mut log = group.take_log();
        let finished = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| group.finish()))
            .unwrap_or_else(|_| {
                Err(KernelError::new(
                    ErrorCode::Panic,
                    "applying a group panicked",
                ))
            });
        if let Err(error) = finished {
            // sled applies a batch key by key in memory: part of it may be
            // visible. Nothing of it goes to the commit log (so recovery does
            // not bring it back) and the store refuses writes until reopened.
            store.fail(&error);
            log.clear();
            for (_, result) in &mut results {
                if result.is_ok() {
                    *result = Err(error.clone());
                }
            }
        }
        let applied = Applied {
            jobs: results,
            log,
            sled_flush,
        };
        drop(store);
        if let Err(error) = flusher.send(applied) {
            for (job, _) in error.0.jobs {
                reply(&completions, job, Err(closed()));
            }
        }
    }
}

fn flusher_loop(
    store: &Weak<Store>,
    receiver: &Receiver<Applied>,
    mut log: Wal,
    completions: Arc<Completions>,
) {
    while let Ok(first) = receiver.recv() {
        let mut group = first;
        while let Ok(more) = receiver.try_recv() {
            group.jobs.extend(more.jobs);
            group.log.extend_from_slice(&more.log);
            group.sled_flush |= more.sled_flush;
        }
        let Some(store) = store.upgrade() else {
            for (job, _) in group.jobs {
                reply(&completions, job, Err(closed()));
            }
            continue;
        };
        // One sync makes the whole group durable.
        completions.syncing.store(true, Ordering::SeqCst);
        let durable = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if group.sled_flush {
                // A flush reports a store that failed earlier (and what that lost).
                store.check_healthy()?;
            }
            log.append_durably(&mut group.log)?;
            if group.sled_flush || log.size() > wal::ROTATE_BYTES {
                // sled catches up with everything applied so far; then the
                // log holds nothing sled does not have and can be emptied.
                let covered = store.unflushed.swap(0, Ordering::SeqCst);
                if let Err(error) = store.db.flush() {
                    store.unflushed.fetch_add(covered, Ordering::SeqCst);
                    return Err(store.write_error(error));
                }
                log.truncate()?;
            }
            Ok(())
        }))
        .unwrap_or_else(|_| {
            Err(KernelError::new(
                ErrorCode::Panic,
                "making a group durable panicked",
            ))
        });
        completions.syncing.store(false, Ordering::SeqCst);
        if let Err(error) = &durable {
            store.fail(error);
        }
        // Whatever the watchdog answered meanwhile: the write finished.
        completions.progressed();
        store.flushes.fetch_add(1, Ordering::Relaxed);
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| journal::prune(&store)));
        // Puts and deletes a failed flush could not make durable: reported
        // once, by the flush that found out (closing the kernel reports any
        // made later).
        let flush_failure = match &durable {
            Err(error) if group.sled_flush => Some(flush_failed(
                error,
                store.unflushed.swap(0, Ordering::SeqCst),
            )),
            _ => None,
        };
        drop(store);
        for (job, result) in group.jobs {
            let result = match (&durable, result) {
                (Err(error), _) if matches!(job, Job::Flush { .. }) => Err(flush_failure
                    .clone()
                    .unwrap_or_else(|| flush_failed(error, 0))),
                (Err(error), Ok(_)) => Err(KernelError::new(
                    ErrorCode::Io,
                    format!(
                        "the commit was applied but making it durable failed ({}); its outcome \
                         is unknown until the store is reopened: close the kernel and open it \
                         again",
                        error.message
                    ),
                )
                .with_detail("outcome", "unknown")),
                (_, result) => result,
            };
            reply(&completions, job, result);
        }
    }
}

/// What a failed flush reports: why, and how many acknowledged puts and
/// deletes (at most) that leaves without durability.
fn flush_failed(error: &KernelError, lost: u64) -> KernelError {
    let affected = if lost == 0 {
        "No put/delete made since the last successful flush is affected".to_owned()
    } else {
        format!(
            "Up to {lost} put/delete calls made since the last successful flush may not have \
             been made durable: they may be lost once the kernel closes"
        )
    };
    // A store that failed earlier says how to recover already.
    let advice = if error.message.contains("open it again") {
        ""
    } else {
        ". Free space or fix the disk, then close the kernel and open it again"
    };
    let mut failed = KernelError::new(
        error.code,
        format!(
            "the flush failed: {}. {affected}; commits that resolved are not affected (the \
             commit log has them){advice}",
            error.message
        ),
    )
    .with_detail("lostWrites", lost.to_string());
    if let Some(path) = error.details.get("path") {
        failed = failed.with_detail("path", path.clone());
    }
    failed
}

/// The tree an op or check names, or the commit's default tree.
fn tree_name<'a>(tree: &'a Option<String>, default_tree: &'a str) -> &'a str {
    tree.as_deref().unwrap_or(default_tree)
}

/// Validates a request and resolves the tree prefix of every op and check.
pub fn prefixes_of(
    request: &CommitRequest,
    default_tree: &str,
) -> KernelResult<HashMap<String, Vec<u8>>> {
    prefixes_for(
        request
            .ops
            .iter()
            .map(|op| tree_name(&op.tree, default_tree))
            .chain(
                request
                    .checks
                    .iter()
                    .map(|check| tree_name(&check.tree, default_tree)),
            ),
    )
}

/// Adds one commit to `group`: checks its preconditions against the group's
/// view, records previous values, stages its writes and journal record.
/// Returns its tx id. Nothing is staged when it fails.
pub fn apply(
    group: &mut Group<'_>,
    request: &CommitRequest,
    default_tree: &str,
    undo_of: u64,
) -> KernelResult<u64> {
    let store = group.store();
    if store.is_closed() {
        return Err(closed());
    }
    store.check_healthy()?;
    if request.ops.is_empty() {
        return Err(
            KernelError::invalid_argument("a commit needs at least one op")
                .with_detail("field", "ops"),
        );
    }
    let prefixes = prefixes_of(request, default_tree)?;
    for (index, op) in request.ops.iter().enumerate() {
        match Kind::try_from(op.kind) {
            Ok(Kind::Put) => store.check_value(op.value.len())?,
            Ok(Kind::Delete) => {}
            _ => {
                return Err(KernelError::invalid_argument(format!(
                    "ops[{index}].type must be \"put\" or \"delete\""
                )))
            }
        }
    }
    let op_keys: Vec<Vec<u8>> = request
        .ops
        .iter()
        .map(|op| data_key(&prefixes[tree_name(&op.tree, default_tree)], &op.key))
        .collect();
    let check_keys: Vec<Vec<u8>> = request
        .checks
        .iter()
        .map(|check| data_key(&prefixes[tree_name(&check.tree, default_tree)], &check.key))
        .collect();
    group.lock(&op_keys);
    group.lock(&check_keys);

    for (check, key) in request.checks.iter().zip(&check_keys) {
        let tree = tree_name(&check.tree, default_tree);
        let current = group.get(key)?;
        let holds = match (&current, check.absent) {
            (None, true) => true,
            (Some(value), false) => value.as_slice() == check.value.as_slice(),
            _ => false,
        };
        if !holds {
            let (expected, found) = match (&current, check.absent) {
                (Some(_), true) => ("no value", "a value"),
                (None, _) => ("the given value", "no value"),
                _ => ("the given value", "a different value"),
            };
            return Err(KernelError::new(
                ErrorCode::Conflict,
                format!(
                    "check failed for key {:?} in tree {tree:?}: expected {expected}, found {found}; nothing was written",
                    show_key(&check.key),
                ),
            )
            .with_detail("key", show_key(&check.key))
            .with_detail("tree", tree));
        }
    }

    let tx_id = group.next_tx_id();
    let mut changes: Vec<Change> = Vec::with_capacity(request.ops.len());
    let mut seen: HashMap<&[u8], usize> = HashMap::new();
    let mut writes: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::with_capacity(request.ops.len());
    for (op, key) in request.ops.iter().zip(&op_keys) {
        let value = match Kind::try_from(op.kind) {
            Ok(Kind::Put) => Some(op.value.clone()),
            _ => None,
        };
        writes.push((key.clone(), value.clone()));
        // A key written twice: the journal keeps its value before the
        // transaction and its final value.
        if let Some(&index) = seen.get(key.as_slice()) {
            changes[index].value = value;
            continue;
        }
        seen.insert(key.as_slice(), changes.len());
        changes.push(Change {
            tree: tree_name(&op.tree, default_tree).to_owned(),
            key: op.key.clone(),
            previous: group.get(key)?,
            value,
        });
    }
    let record = JournalRecord {
        tx_id,
        time_unix_ms: journal::now_ms(),
        ctx: request.ctx.clone(),
        changes,
        undo_of,
    };
    let encoded = record.encode_to_vec();
    group.stage(writes, record, &encoded);
    Ok(tx_id)
}

/// Queues `request` (an encoded `krepis.v1.CommitRequest`) for an atomic,
/// journaled, durable commit on `tree` and returns at once, writing the
/// commit's ticket to `out_ticket[0]`. The result arrives through
/// `krepis_store_completions`, together with every other finished commit:
/// one event per batch, not one per commit.
///
/// # Safety
/// `request` must point to `request_len` readable bytes; `out_ticket` to one aligned u64.
#[no_mangle]
pub unsafe extern "C" fn krepis_store_commit_submit(
    tree: u32,
    request: *const u8,
    request_len: u32,
    out_ticket: *mut u64,
) -> i32 {
    call("krepis_store_commit_submit", || {
        // SAFETY: forwarded from this function's contract.
        let request = unsafe { in_bytes(request, request_len, "request")? }.to_vec();
        let tree = super::tree::tree(tree)?;
        let ticket = tree.store.submit(|ticket| Job::Commit {
            request,
            tree: tree.name.clone(),
            ticket,
        })?;
        // SAFETY: forwarded from this function's contract.
        unsafe { write_u64(out_ticket, ticket, "out_ticket")? };
        Ok(0)
    })
}

/// Writes the kernel's finished commits, flushes and undos into `out`, each
/// `[ticket u64][length u32][0 u32][krepis.v1.CommitResult]` padded to 8
/// bytes, as many as fit, and returns the bytes written. 0 when none is
/// ready: an `EVENT_COMPLETIONS` announces the next.
///
/// # Safety
/// `out` must point to `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_store_completions(kernel: u32, out: *mut u8, cap: u32) -> i32 {
    call("krepis_store_completions", || {
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { out_bytes(out, cap, "out")? };
        db::of(&*crate::kernel::kernel(kernel)?)?
            .completions
            .take_into(out)
    })
}

/// Queues a flush: makes every write so far durable, including single-key
/// puts and deletes. Writes its ticket to `out_ticket[0]`; the result (a
/// `krepis.v1.CommitResult`) arrives through `krepis_store_completions`.
///
/// # Safety
/// `out_ticket` must point to one aligned u64.
#[no_mangle]
pub unsafe extern "C" fn krepis_store_flush(kernel: u32, out_ticket: *mut u64) -> i32 {
    call("krepis_store_flush", || {
        let store = db::of(&*crate::kernel::kernel(kernel)?)?;
        let ticket = store.submit(|ticket| Job::Flush { ticket })?;
        // SAFETY: forwarded from this function's contract.
        unsafe { write_u64(out_ticket, ticket, "out_ticket")? };
        Ok(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Op, StoreConfig};

    /// Where commit time goes (run: cargo test --release -p krepis commit_profile -- --ignored --nocapture).
    #[test]
    #[ignore]
    fn commit_profile() {
        let dir =
            std::env::temp_dir().join(format!("krepis-commit-profile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let kernel = crate::kernel::Kernel::open(&crate::proto::KernelConfig {
            data_dir: dir.display().to_string(),
            worker_threads: 1,
            ..Default::default()
        })
        .unwrap();
        super::super::open_for(&kernel, &StoreConfig::default()).unwrap();
        let store = db::of(&kernel).unwrap();
        let value = vec![42u8; 100];
        for i in 0..20_000u32 {
            store
                .db
                .insert(
                    data_key(b"d\0", format!("k{i:015}").as_bytes()),
                    value.as_slice(),
                )
                .unwrap();
        }
        let request = |n: u32| CommitRequest {
            ops: (0..10)
                .map(|k| Op {
                    kind: Kind::Put as i32,
                    key: format!("k{:015}", (n * 10 + k) % 20_000).into_bytes(),
                    value: vec![(n % 250) as u8; 100],
                    tree: None,
                })
                .collect(),
            checks: vec![],
            ctx: None,
        };
        let start = std::time::Instant::now();
        for n in 0..3000 {
            let mut group = Group::new(&store);
            apply(&mut group, &request(n), "", 0).unwrap();
            group.finish().unwrap();
        }
        let apply_us = start.elapsed().as_micros() as f64 / 3000.0;
        let start = std::time::Instant::now();
        for _ in 0..200 {
            let mut group = Group::new(&store);
            apply(&mut group, &request(7), "", 0).unwrap();
            group.finish().unwrap();
            store.db.flush().unwrap();
        }
        let flush_us = start.elapsed().as_micros() as f64 / 200.0 - apply_us;
        eprintln!("apply {apply_us:.1} us/commit, flush {flush_us:.1} us");
        store.close().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
