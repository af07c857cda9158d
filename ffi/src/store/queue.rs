//! The queue between callers and the committer thread: the jobs it runs,
//! where their results go (a blocked caller, or the completion queue JS
//! drains once per batch), and how results are encoded for JS.

use crate::error::{KernelError, KernelResult};
use crate::proto::{self, CommitResult, ErrorCode};
use prost::Message;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

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

impl Job {
    fn into_reply(self) -> Reply {
        match self {
            Job::Commit { reply, .. } | Job::Undo { reply, .. } | Job::Flush { reply } => reply,
        }
    }
}

/// Where a job's result goes.
pub enum Reply {
    /// A thread blocked in [`Committer::run`].
    Channel(SyncSender<KernelResult<u64>>),
    /// The store's completion queue, under this ticket (see `krepis_store_completions`).
    Ticket(u64),
}

/// Bytes of one completion's header in `krepis_store_completions` output.
pub const COMPLETION_HEADER_BYTES: u32 = 16;

/// Finished tickets waiting for JS to collect them, one wake-up per batch.
#[derive(Default)]
pub struct Completions {
    ready: Mutex<Vec<(u64, Vec<u8>)>>,
    available: Condvar,
    next_ticket: AtomicU64,
    /// The flusher is syncing a group right now.
    pub(crate) syncing: AtomicBool,
}

impl Completions {
    /// A new ticket for a submitted job.
    pub fn ticket(&self) -> u64 {
        self.next_ticket.fetch_add(1, Ordering::Relaxed) + 1
    }

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

    /// Waits up to `timeout` for finished jobs, then writes as many as fit
    /// into `out`, each `[ticket u64][length u32][0 u32][krepis.v1.CommitResult]`
    /// padded to 8 bytes. Returns the bytes written (0 on timeout); `Err`
    /// from `closed` when nothing is ready and it says the store closed.
    pub fn take_into(
        &self,
        out: &mut [u8],
        timeout: Duration,
        closed: impl Fn() -> KernelResult<()>,
    ) -> KernelResult<i32> {
        let deadline = Instant::now() + timeout;
        let mut ready = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        while ready.is_empty() {
            closed()?;
            let now = Instant::now();
            if now >= deadline {
                return Ok(0);
            }
            ready = self
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
    }
}

/// Answers a job: wakes its blocked caller or queues its completion.
pub fn reply(completions: &Completions, job: Job, result: KernelResult<u64>) {
    match job.into_reply() {
        Reply::Channel(sender) => {
            let _ = sender.send(result);
        }
        Reply::Ticket(ticket) => completions.push(ticket, result),
    }
}

/// The store's connection to its committer thread.
#[derive(Default)]
pub struct Committer {
    sender: Mutex<Option<SyncSender<Job>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Committer {
    /// Connects to a started committer thread.
    pub fn connect(&self, sender: SyncSender<Job>, thread: std::thread::JoinHandle<()>) {
        *self.sender.lock().unwrap_or_else(|p| p.into_inner()) = Some(sender);
        *self.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(thread);
    }

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
