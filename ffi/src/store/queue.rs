//! The queue between JS and the committer thread: the jobs it runs (each
//! under a ticket), the completion queue their results go to (JS drains it
//! once per batch, woken by one event), and how results are encoded for JS.
//!
//! Every ticket is answered exactly once, within a bounded time: the threads
//! answer it when the job is done, and a watchdog (`super::watchdog`)
//! answers jobs older than the store's I/O timeout with `IO` (a disk that
//! stopped responding must not hang JS). Whichever answers first wins; a
//! late answer is dropped.

use crate::error::{KernelError, KernelResult};
use crate::events::{EventQueue, EVENT_COMPLETIONS};
use crate::proto::{self, CommitResult, ErrorCode};
use prost::Message;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What the committer does for JS; the result goes to the completion queue
/// under the job's ticket.
pub enum Job {
    Commit {
        /// Encoded `krepis.v1.CommitRequest`, decoded on the committer thread.
        request: Vec<u8>,
        tree: String,
        ticket: u64,
    },
    Undo {
        tx_id: u64,
        ctx: Option<proto::Context>,
        ticket: u64,
    },
    /// Make everything durable, including unjournaled puts (a sled flush).
    Flush { ticket: u64 },
}

impl Job {
    fn ticket(&self) -> u64 {
        match self {
            Job::Commit { ticket, .. } | Job::Undo { ticket, .. } | Job::Flush { ticket } => {
                *ticket
            }
        }
    }

    /// The export a result names as its operation.
    pub fn operation(&self) -> &'static str {
        match self {
            Job::Commit { .. } => "krepis_store_commit_submit",
            Job::Undo { .. } => "krepis_journal_undo",
            Job::Flush { .. } => "krepis_store_flush",
        }
    }
}

/// Bytes of one completion's header in `krepis_store_completions` output.
pub const COMPLETION_HEADER_BYTES: u32 = 16;

/// Finished tickets waiting for JS to collect them: one event (and at most
/// one wake-up) per batch, posted when the first result of a batch arrives.
pub struct Completions {
    ready: Mutex<Vec<(u64, Vec<u8>)>>,
    events: Arc<EventQueue>,
    next_ticket: AtomicU64,
    /// The flusher is syncing a group right now.
    pub(crate) syncing: AtomicBool,
    /// Tickets not answered yet: when each was submitted, and its export.
    pending: Mutex<BTreeMap<u64, (Instant, &'static str)>>,
    /// Why the store is stalled (a job outlived the I/O timeout and the
    /// write it waits for has not finished), if it is.
    stalled: Mutex<Option<KernelError>>,
    /// Set once the store closed: the watchdog stops.
    closed: (Mutex<bool>, Condvar),
}

impl Completions {
    /// Completions announced on the kernel's `events`.
    pub fn new(events: Arc<EventQueue>) -> Completions {
        Completions {
            ready: Mutex::new(Vec::new()),
            events,
            next_ticket: AtomicU64::new(0),
            syncing: AtomicBool::new(false),
            pending: Mutex::new(BTreeMap::new()),
            stalled: Mutex::new(None),
            closed: (Mutex::new(false), Condvar::new()),
        }
    }

    /// A new ticket for a job about to be submitted.
    pub fn ticket(&self) -> u64 {
        self.next_ticket.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Starts the clock of a submitted job.
    pub fn track(&self, ticket: u64, operation: &'static str) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ticket, (Instant::now(), operation));
    }

    /// Forgets a job that was never queued.
    pub fn untrack(&self, ticket: u64) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ticket);
    }

    /// Jobs submitted more than `timeout` ago and not answered yet.
    pub fn overdue(&self, timeout: Duration) -> Vec<(u64, &'static str)> {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending
            .iter()
            .filter(|(_, (since, _))| since.elapsed() >= timeout)
            .map(|(&ticket, &(_, operation))| (ticket, operation))
            .collect()
    }

    /// Every job not answered yet.
    pub fn unanswered(&self) -> Vec<(u64, &'static str)> {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending
            .iter()
            .map(|(&ticket, &(_, operation))| (ticket, operation))
            .collect()
    }

    /// Marks the store stalled (the watchdog answered a job for it).
    pub fn stall(&self, why: KernelError) {
        self.stalled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(why);
    }

    /// The write the store was stalled on finished (or failed): it takes
    /// jobs again.
    pub fn progressed(&self) {
        self.stalled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    /// `Err` while the store is stalled.
    pub fn check_not_stalled(&self) -> KernelResult<()> {
        match self
            .stalled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }

    /// Stops the watchdog.
    pub fn close(&self) {
        *self.closed.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.closed.1.notify_all();
    }

    /// Waits up to `tick`; false once the store closed.
    pub fn wait_open(&self, tick: Duration) -> bool {
        let closed = self.closed.0.lock().unwrap_or_else(|p| p.into_inner());
        if *closed {
            return false;
        }
        let (closed, _) = self
            .closed
            .1
            .wait_timeout(closed, tick)
            .unwrap_or_else(|p| p.into_inner());
        !*closed
    }

    /// Answers `ticket` unless it was answered already (first answer wins).
    pub fn answer(&self, ticket: u64, result: KernelResult<u64>, operation: &str) {
        let fresh = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ticket)
            .is_some();
        if fresh {
            self.push(ticket, result, operation);
        }
    }

    fn push(&self, ticket: u64, result: KernelResult<u64>, operation: &str) {
        let encoded = encode_result(result, operation);
        let first = {
            let mut ready = self.ready.lock().unwrap_or_else(|p| p.into_inner());
            ready.push((ticket, encoded));
            ready.len() == 1
        };
        if first {
            self.events.push(EVENT_COMPLETIONS, 0);
        }
    }

    /// Writes as many finished jobs as fit into `out`, each
    /// `[ticket u64][length u32][0 u32][krepis.v1.CommitResult]` padded to 8
    /// bytes, and returns the bytes written (0 when none is ready; the next
    /// one posts an `EVENT_COMPLETIONS`).
    pub fn take_into(&self, out: &mut [u8]) -> KernelResult<i32> {
        let mut ready = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        if ready.is_empty() {
            return Ok(0);
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
    }
}

/// Answers a job: queues its result for JS (unless the watchdog answered it).
pub fn reply(completions: &Completions, job: Job, result: KernelResult<u64>) {
    completions.answer(job.ticket(), result, job.operation());
}

/// The store's connection to its committer thread.
#[derive(Default)]
pub struct Committer {
    sender: Mutex<Option<SyncSender<Job>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Closed by the committer thread when it and the flusher have ended.
    done: Mutex<Option<Receiver<()>>>,
}

impl Committer {
    /// Connects to a started committer thread, which drops the sender of
    /// `done` when it (and the flusher) ended.
    pub fn connect(
        &self,
        sender: SyncSender<Job>,
        thread: std::thread::JoinHandle<()>,
        done: Receiver<()>,
    ) {
        *self.sender.lock().unwrap_or_else(|p| p.into_inner()) = Some(sender);
        *self.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(thread);
        *self.done.lock().unwrap_or_else(|p| p.into_inner()) = Some(done);
    }

    /// Queues a job; false when the store is closed.
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
    /// yet applied are answered `CLOSED`) and joins them, waiting at most
    /// `bound`: a thread stuck in a write that never returns (a dead disk) is
    /// left behind rather than hanging the close. Returns whether they ended.
    /// Idempotent.
    pub fn stop(&self, bound: Duration) -> bool {
        drop(self.sender.lock().unwrap_or_else(|p| p.into_inner()).take());
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        let done = self.done.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(thread) = thread else {
            return true;
        };
        if thread.thread().id() == std::thread::current().id() {
            return true;
        }
        let ended = match done {
            Some(done) => !matches!(
                done.recv_timeout(bound),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout)
            ),
            None => true,
        };
        if ended {
            let _ = thread.join();
        }
        ended
    }
}

/// `CLOSED`: the store is closed.
pub fn closed() -> KernelError {
    KernelError::new(ErrorCode::Closed, "the store is closed")
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
pub fn encode_result(result: KernelResult<u64>, operation: &str) -> Vec<u8> {
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
