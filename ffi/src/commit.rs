//! Transactions: atomic, journaled, durable commits with group commit.
//!
//! JS calls `krepis_store_commit` as a `nonblocking` FFI call: it runs on one
//! of Deno's worker threads, hands the request to the store's committer
//! thread and blocks until the commit is durable. Two threads form a
//! pipeline:
//!
//! 1. the committer applies requests in arrival order, each as ONE atomic
//!    sled batch (data + journal record + next tx id) under the stripes of
//!    its keys, and passes the applied group on;
//! 2. the flusher appends the group's journal records to the commit log and
//!    syncs it once ([`crate::wal`]), then answers the whole group.
//!
//! While one group is being synced the committer applies the next, and
//! every commit that queued up meanwhile shares the next sync: sixteen
//! concurrent committers cost a few fsyncs, not sixteen.
//!
//! Results (including errors) are encoded into the caller's output buffer as
//! `krepis.v1.CommitResult`: the thread-local last error would be on the
//! worker thread, out of the JS thread's reach.

use crate::boundary::{call, in_bytes, out_bytes, write_out};
use crate::error::{KernelError, KernelResult};
use crate::journal;
use crate::proto::{self, op::Kind, Change, CommitRequest, CommitResult, ErrorCode, JournalRecord};
use crate::store::{data_key, stripe_of, tree_prefix, Store, META_NEXT_TX};
use crate::wal::{self, Wal};
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

/// Most requests one group applies before passing them on.
const MAX_GROUP: usize = 512;
/// While a sync is in flight, the committer waits up to this long between
/// arrivals for a group of this size.
const LINGER_GROUP: usize = 16;
const LINGER: std::time::Duration = std::time::Duration::from_micros(150);

/// What the committer does for a caller.
pub enum Job {
    Commit {
        /// Encoded `krepis.v1.CommitRequest`, decoded on the committer thread.
        request: Vec<u8>,
        tree: String,
        reply: Reply,
    },
    Undo {
        tx_id: u64,
        ctx: Option<proto::Context>,
        reply: Reply,
    },
    /// Make everything durable, including unjournaled puts (a sled flush).
    Flush { reply: Reply },
}

/// Where a job's result goes.
pub enum Reply {
    /// A thread blocked in `Committer::run`.
    Channel(SyncSender<KernelResult<u64>>),
    /// The store's completion queue, under this ticket (see `krepis_store_completions`).
    Ticket(u64),
}

/// Finished tickets waiting for JS to collect them, one wake-up per batch.
#[derive(Default)]
pub struct Completions {
    ready: Mutex<Vec<(u64, Vec<u8>)>>,
    available: Condvar,
    next_ticket: AtomicU64,
    /// The flusher is syncing a group right now.
    syncing: std::sync::atomic::AtomicBool,
}

impl Completions {
    fn push(&self, ticket: u64, result: KernelResult<u64>) {
        let encoded = encode_result(result, "krepis_store_commit");
        let mut ready = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        ready.push((ticket, encoded));
        if ready.len() == 1 {
            self.available.notify_all();
        }
    }

    /// Wakes a waiter (e.g. because the store closed).
    pub fn wake(&self) {
        let _ready = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        self.available.notify_all();
    }
}

/// An applied group on its way to the flusher.
struct Applied {
    jobs: Vec<(Job, KernelResult<u64>)>,
    /// Framed journal records of the successful commits, in tx order.
    log: Vec<u8>,
    sled_flush: bool,
}

/// The store's connection to its committer thread.
#[derive(Default)]
pub struct Committer {
    sender: Mutex<Option<SyncSender<Job>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Committer {
    /// Sends a job and waits for its (durable) result.
    pub fn run(&self, job: impl FnOnce(Reply) -> Job) -> KernelResult<u64> {
        let (reply, result) = sync_channel(1);
        let reply = Reply::Channel(reply);
        let sender = self
            .sender
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(closed)?;
        sender.send(job(reply)).map_err(|_| closed())?;
        result.recv().map_err(|_| {
            KernelError::new(
                ErrorCode::Closed,
                "the store closed before the commit finished",
            )
        })?
    }

    /// Queues a job without waiting; false when the store is closed.
    pub fn submit(&self, job: Job) -> bool {
        let sender = self
            .sender
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match sender {
            Some(sender) => sender.send(job).is_ok(),
            None => false,
        }
    }

    /// Stops the threads once they have answered every queued job (jobs not
    /// yet applied are answered `CLOSED`) and joins them. Idempotent.
    pub fn stop(&self) {
        drop(self.sender.lock().unwrap_or_else(|p| p.into_inner()).take());
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

/// Starts the committer and flusher threads of `store`, which own `log`.
pub fn start(store: &Arc<Store>, log: Wal) -> KernelResult<()> {
    let (sender, receiver) = sync_channel::<Job>(4096);
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
        })
        .map_err(|error| KernelError::io("starting the store committer", &error))?;
    *store
        .committer
        .sender
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(sender);
    *store
        .committer
        .thread
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(thread);
    Ok(())
}

fn closed() -> KernelError {
    KernelError::new(ErrorCode::Closed, "the store is closed")
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
                Job::Undo { tx_id, ctx, .. } => journal::undo(&mut group, *tx_id, ctx.clone()),
                Job::Flush { .. } => Ok(0),
            }))
            .unwrap_or_else(|_| Err(KernelError::new(ErrorCode::Panic, "the committer panicked")));
            sled_flush |= matches!(job, Job::Flush { .. });
            results.push((job, result));
        }
        let mut log = std::mem::take(&mut group.log);
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
            store.poison(&error.message);
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
            let mut durable = log.append_durably(&group.log);
            if durable.is_ok() && (group.sled_flush || log.size() > wal::ROTATE_BYTES) {
                // sled catches up with everything applied so far; then the
                // log holds nothing sled does not have and can be emptied.
                durable = store
                    .db
                    .flush()
                    .map_err(KernelError::from)
                    .and_then(|_| log.truncate());
            }
            durable
        }))
        .unwrap_or_else(|_| {
            Err(KernelError::new(
                ErrorCode::Panic,
                "making a group durable panicked",
            ))
        });
        completions.syncing.store(false, Ordering::SeqCst);
        if let Err(error) = &durable {
            store.poison(&error.message);
        }
        store.flushes.fetch_add(1, Ordering::Relaxed);
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| journal::prune(&store)));
        drop(store);
        for (job, result) in group.jobs {
            let result = match (&durable, result) {
                (Err(error), Ok(_)) => Err(KernelError::new(
                    ErrorCode::Io,
                    format!(
                        "the commit was applied but making it durable failed: {}",
                        error.message
                    ),
                )),
                (_, result) => result,
            };
            reply(&completions, job, result);
        }
    }
}

fn reply(completions: &Completions, job: Job, result: KernelResult<u64>) {
    let reply = match job {
        Job::Commit { reply, .. } | Job::Undo { reply, .. } | Job::Flush { reply } => reply,
    };
    match reply {
        Reply::Channel(sender) => {
            let _ = sender.send(result);
        }
        Reply::Ticket(ticket) => completions.push(ticket, result),
    }
}

/// Printable form of a key for error messages.
pub fn show_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(text) if !text.chars().any(char::is_control) => text.to_owned(),
        _ => key
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<String>(),
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// The commits of one group, applied to sled as ONE atomic batch (one log
/// write instead of one per commit). Holds the stripes of every key the
/// group touched until the batch is applied, and an overlay of the group's
/// writes so later commits in the group see earlier ones.
pub struct Group<'a> {
    store: &'a Store,
    batch: sled::Batch,
    overlay: HashMap<Vec<u8>, Option<Vec<u8>>>,
    stripes: HashSet<usize>,
    guards: Vec<MutexGuard<'a, ()>>,
    next_tx: u64,
    /// Journal records of this group, for undo (not in sled yet).
    pub(crate) records: Vec<JournalRecord>,
    /// The framed records for the commit log.
    pub(crate) log: Vec<u8>,
}

impl<'a> Group<'a> {
    pub fn new(store: &'a Store) -> Group<'a> {
        Group {
            store,
            batch: sled::Batch::default(),
            overlay: HashMap::new(),
            stripes: HashSet::new(),
            guards: Vec::new(),
            next_tx: store.next_tx.load(Ordering::SeqCst),
            records: Vec::new(),
            log: Vec::new(),
        }
    }

    pub fn store(&self) -> &'a Store {
        self.store
    }

    /// Locks the stripes of `keys` not already held by this group.
    pub fn lock(&mut self, keys: &[Vec<u8>]) {
        // Each key hashed once; `insert` keeps only stripes not yet held.
        let fresh: Vec<usize> = keys
            .iter()
            .map(|key| stripe_of(key))
            .filter(|&stripe| self.stripes.insert(stripe))
            .collect();
        self.guards.extend(self.store.lock_stripes(fresh));
    }

    /// The current value of a sled key as this group sees it.
    pub fn get(&self, key: &[u8]) -> KernelResult<Option<Vec<u8>>> {
        match self.overlay.get(key) {
            Some(value) => Ok(value.clone()),
            None => Ok(self.store.db.get(key)?.map(|value| value.to_vec())),
        }
    }

    /// Applies the group's batch (with the next tx id) and releases its stripes.
    pub fn finish(self) -> KernelResult<()> {
        if self.records.is_empty() {
            return Ok(());
        }
        let mut batch = self.batch;
        batch.insert(META_NEXT_TX, &self.next_tx.to_be_bytes());
        self.store.db.apply_batch(batch)?;
        self.store.next_tx.store(self.next_tx, Ordering::SeqCst);
        self.store
            .commits
            .fetch_add(self.records.len() as u64, Ordering::Relaxed);
        Ok(())
    }
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

/// Validates tree names and resolves each one's key prefix (once per tree).
pub fn prefixes_for<'a>(
    trees: impl IntoIterator<Item = &'a str>,
) -> KernelResult<HashMap<String, Vec<u8>>> {
    let mut prefixes: HashMap<String, Vec<u8>> = HashMap::new();
    for tree in trees {
        if !prefixes.contains_key(tree) {
            prefixes.insert(tree.to_owned(), tree_prefix(tree)?);
        }
    }
    Ok(prefixes)
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
    let store = group.store;
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

    // Only the committer thread assigns ids: contiguous, in apply order.
    let tx_id = group.next_tx;
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
        time_unix_ms: now_ms(),
        ctx: request.ctx.clone(),
        changes,
        undo_of,
    };
    let encoded = record.encode_to_vec();
    for (key, value) in writes {
        match &value {
            Some(value) => group.batch.insert(key.as_slice(), value.as_slice()),
            None => group.batch.remove(key.as_slice()),
        }
        group.overlay.insert(key, value);
    }
    group
        .batch
        .insert(journal::key(tx_id).as_slice(), encoded.as_slice());
    wal::frame(&encoded, &mut group.log);
    group.records.push(record);
    group.next_tx = tx_id + 1;
    Ok(tx_id)
}

/// Longest message (and detail value) a result carries: results must fit the
/// SDK's fixed completion buffer whatever the keys look like.
const MAX_RESULT_TEXT: usize = 2000;

fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Encodes a commit's (or undo's) outcome for JS, with the error text bounded
/// so it always fits JS's fixed result buffer (keys in messages can be huge).
pub(crate) fn encode_result(result: KernelResult<u64>, operation: &str) -> Vec<u8> {
    match result {
        Ok(tx_id) => CommitResult { tx_id, error: None },
        Err(error) => {
            let mut proto = error.to_proto(operation);
            proto.message = bounded(&proto.message, MAX_RESULT_TEXT);
            for value in proto.details.values_mut() {
                *value = bounded(value, MAX_RESULT_TEXT / 4);
            }
            CommitResult {
                tx_id: 0,
                error: Some(proto),
            }
        }
    }
    .encode_to_vec()
}

/// Queues `request` (an encoded `krepis.v1.CommitRequest`) for an atomic,
/// journaled, durable commit on `tree` and returns at once, writing the
/// commit's ticket to `out_ticket[0]`. The result arrives through
/// `krepis_store_completions`, together with every other finished commit:
/// one wake-up per group, not one per commit.
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
        if out_ticket.is_null() || !out_ticket.is_aligned() {
            return Err(KernelError::invalid_argument(
                "out_ticket must point to one aligned u64",
            ));
        }
        // SAFETY: forwarded from this function's contract.
        let request = unsafe { in_bytes(request, request_len, "request")? }.to_vec();
        let tree = crate::store::tree(tree)?;
        let ticket = tree
            .store
            .completions
            .next_ticket
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        let job = Job::Commit {
            request,
            tree: tree.name.clone(),
            reply: Reply::Ticket(ticket),
        };
        if !tree.store.committer.submit(job) {
            return Err(closed());
        }
        // SAFETY: checked non-null and aligned above.
        unsafe { out_ticket.write(ticket) };
        Ok(0)
    })
}

/// Bytes of one completion's header in `krepis_store_completions` output.
pub const COMPLETION_HEADER_BYTES: u32 = 16;

/// [nonblocking] Waits up to `timeout_ms` for finished commits of the
/// kernel's store, then writes as many as fit into `out`, each
/// `[ticket u64][length u32][0 u32][krepis.v1.CommitResult]` padded to 8
/// bytes. Returns the bytes written (0 on timeout); `-CLOSED` once the store
/// is closed and nothing is left.
///
/// # Safety
/// `out` must point to `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_store_completions(
    kernel: u32,
    out: *mut u8,
    cap: u32,
    timeout_ms: u32,
) -> i32 {
    call("krepis_store_completions", || {
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { out_bytes(out, cap, "out")? };
        let store = crate::kernel::kernel(kernel)?.store()?;
        let completions = &store.completions;
        let deadline =
            std::time::Instant::now() + std::time::Duration::from_millis(u64::from(timeout_ms));
        let mut ready = completions.ready.lock().unwrap_or_else(|p| p.into_inner());
        while ready.is_empty() {
            if store.is_closed() {
                return Err(closed());
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Ok(0);
            }
            ready = completions
                .available
                .wait_timeout(ready, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let mut written = 0usize;
        let mut taken = 0usize;
        for (ticket, result) in ready.iter() {
            let size = (COMPLETION_HEADER_BYTES as usize + result.len()).div_ceil(8) * 8;
            if written + size > out.len() {
                break;
            }
            out[written..written + 8].copy_from_slice(&ticket.to_le_bytes());
            out[written + 8..written + 12].copy_from_slice(&(result.len() as u32).to_le_bytes());
            out[written + 12..written + 16].fill(0);
            out[written + 16..written + 16 + result.len()].copy_from_slice(result);
            written += size;
            taken += 1;
        }
        if taken == 0 {
            return Err(KernelError::invalid_argument(
                "out is too small for one completion",
            ));
        }
        ready.drain(..taken);
        Ok(written as i32)
    })
}

/// [nonblocking] Makes every write so far durable. Writes a
/// `krepis.v1.CommitResult` into `out` and returns its length.
///
/// # Safety
/// `out` must point to `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_store_flush(kernel: u32, out: *mut u8, cap: u32) -> i32 {
    call("krepis_store_flush", || {
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { out_bytes(out, cap, "out")? };
        let result = crate::kernel::kernel(kernel)
            .and_then(|kernel| kernel.store())
            .and_then(|store| store.committer.run(|reply| Job::Flush { reply }));
        write_out(&encode_result(result, "krepis_store_flush"), out)
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
        let store = Store::open(&dir, &StoreConfig::default()).unwrap();
        let value = vec![42u8; 100];
        for i in 0..20_000u32 {
            store
                .db
                .insert(
                    crate::store::data_key(b"d\0", format!("k{i:015}").as_bytes()),
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
        store.close();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
