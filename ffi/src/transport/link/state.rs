//! The [`Link`] object: what the pumps, the control reader and the close
//! paths share about one link, and how the link ends (once, whoever gets
//! there first). The tasks that work on it live in `pumps`, `close` and
//! `mod.rs`; this file sits below them so they can all name it.

use super::codes::{CLOSE_GOING_AWAY, CLOSE_PROTOCOL};
use crate::error::{KernelError, KernelResult};
use crate::events::{EventQueue, EVENT_LINK_CLOSED};
use crate::proto::ErrorCode;
use crate::ring::Ring;
use crate::transport::budget::Reservation;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::Notify;

/// A `close` the peer sent.
#[derive(Debug, Clone)]
pub struct PeerClose {
    pub code: u32,
    pub reason: String,
    /// A confirmation: the peer read everything this side sent...
    pub last: bool,
    /// ...except these packets, which it dropped because it had closed too.
    pub discarded: u32,
}

/// How a link ended.
#[derive(Debug, Clone)]
pub struct Ended {
    pub code: u32,
    pub reason: String,
    pub by_peer: bool,
    pub error: Option<KernelError>,
}

#[derive(Default)]
pub struct Counters {
    pub packets_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub packets_received: AtomicU64,
    pub bytes_received: AtomicU64,
    pub datagrams_dropped: AtomicU64,
    /// Packets dropped unread because this side had closed.
    pub discarded: AtomicU64,
}

/// What a link needs besides its connection.
pub struct LinkSetup {
    pub kernel_id: u64,
    pub events: Arc<EventQueue>,
    pub recv_ring: Arc<Ring>,
    pub send_ring: Arc<Ring>,
    /// The largest payload this side accepts.
    pub max_packet: u32,
    /// Allowed tenant hashes (None = any).
    pub tenants: Option<Arc<HashSet<u64>>>,
    /// The QUIC connection receive window once the link runs.
    pub window: u32,
    /// The link's share of the budgets, given back when it is dropped.
    pub reservation: Reservation,
}

/// One KNUL link. Its fields are shared with the files of `link/` (the
/// tasks that run it); the rest of the transport uses its methods.
pub struct Link {
    pub kernel_id: u64,
    pub(super) handle: OnceLock<u32>,
    pub(super) conn: quinn::Connection,
    pub(super) events: Arc<EventQueue>,
    pub(super) recv_ring: Arc<Ring>,
    pub(super) send_ring: Arc<Ring>,
    pub(super) max_packet: u32,
    pub(super) peer_max: u32,
    pub(super) tenants: Option<Arc<HashSet<u64>>>,
    pub(super) control_send: tokio::sync::Mutex<quinn::SendStream>,
    pub(super) control_recv: Mutex<Option<quinn::RecvStream>>,
    pub(super) ended: Mutex<Option<Ended>>,
    /// This side asked to close (the close path ends the link).
    pub(super) closing: AtomicBool,
    /// After this side's close, packets that arrive are read and dropped
    /// (this side declared it reads no more), so the peer is never blocked.
    pub(super) discarding: AtomicBool,
    /// The peer's `close`, once it arrived.
    pub(super) peer_close: Mutex<Option<PeerClose>>,
    /// Wakes the close paths when the handshake moves (a `close` arrived,
    /// ours was sent, our confirmation was acknowledged).
    pub(super) close_progress: Notify,
    /// This side sent its own (non-final) `close`.
    pub(super) close_sent: AtomicBool,
    /// This side answers a peer's `close` with a confirmation...
    pub(super) responding: AtomicBool,
    /// ...which the peer's QUIC stack acknowledged.
    pub(super) final_acked: AtomicBool,
    /// The control reader stopped (it has read every control packet).
    pub(super) control_exited: Exited,
    /// How the send pump ended: `Ok` once the peer acknowledged every byte.
    pub(super) send_outcome: Mutex<Option<KernelResult<()>>>,
    /// How the receive pump ended: `Ok` at the end of the peer's stream.
    pub(super) receive_outcome: Mutex<Option<KernelResult<()>>>,
    pub(super) receive_exited: Exited,
    pub(super) send_exited: Exited,
    pub(super) counters: Counters,
    /// The QUIC connection receive window once the link runs.
    pub(super) window: u32,
    /// Given back when JS frees the link (its memory goes then), or with
    /// the link.
    pub(super) reservation: Mutex<Option<Reservation>>,
}

/// A flag plus a notification: "this pump has stopped".
#[derive(Default)]
pub struct Exited {
    done: AtomicBool,
    notify: Notify,
}

impl Exited {
    pub fn set(&self) {
        self.done.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.done.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

impl Link {
    /// The largest payload this side may send.
    pub fn peer_max(&self) -> u32 {
        self.peer_max
    }

    pub fn remote_address(&self) -> std::net::SocketAddr {
        self.conn.remote_address()
    }

    /// Largest unreliable packet (header included) the path carries now.
    pub fn max_datagram_bytes(&self) -> u32 {
        self.conn.max_datagram_size().unwrap_or(0) as u32
    }

    /// Ends the link once: records why, closes the connection and both
    /// rings (JS still reads what was published), and tells JS.
    pub fn end(&self, ended: Ended) {
        {
            let mut slot = self.ended.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_some() {
                return;
            }
            self.conn
                .close(quinn::VarInt::from_u32(ended.code), ended.reason.as_bytes());
            *slot = Some(ended);
        }
        self.recv_ring.close();
        self.send_ring.close();
        self.close_progress.notify_waiters();
        if let Some(handle) = self.handle.get() {
            self.events.push(EVENT_LINK_CLOSED, *handle);
        }
    }

    pub(super) fn lock_peer_close(&self) -> std::sync::MutexGuard<'_, Option<PeerClose>> {
        self.peer_close.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the link with `error` ("going away": delivery was not confirmed),
    /// whatever else is under way.
    pub(super) fn end_with_error(&self, error: KernelError, by_peer: bool) {
        self.end(Ended {
            code: CLOSE_GOING_AWAY,
            reason: error.message.clone(),
            by_peer,
            error: Some(error),
        });
    }

    /// Ends the link because of `error`, except for connection errors while
    /// a close handshake runs: the close paths watch the connection and
    /// report what that loss means for delivery.
    pub(super) fn fail(&self, error: KernelError) {
        let close_task_runs =
            self.closing.load(Ordering::SeqCst) || self.responding.load(Ordering::SeqCst);
        if error.code == ErrorCode::Closed
            || (error.code == ErrorCode::Connection && close_task_runs)
        {
            return;
        }
        let code = error
            .details
            .get("closeCode")
            .and_then(|code| code.parse().ok())
            .unwrap_or(if error.code == ErrorCode::Protocol {
                CLOSE_PROTOCOL
            } else {
                CLOSE_GOING_AWAY
            });
        let by_peer = error.code != ErrorCode::Protocol;
        self.end(Ended {
            code,
            reason: error.message.clone(),
            by_peer,
            error: Some(error),
        });
    }

    /// Gives the link's share of the budgets back (JS freed it).
    pub fn release_budget(&self) {
        drop(
            self.reservation
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
    }

    pub fn is_ended(&self) -> bool {
        self.ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}
