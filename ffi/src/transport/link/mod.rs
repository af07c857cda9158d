//! A KNUL link (docs/knul.md): one QUIC connection between two kernels,
//! moving packets between QUIC and the link's two rings.
//!
//! Files, from the bottom up (a file imports only files listed before it):
//! - [`codes`]: record tag, header flags, close codes (ABI constants);
//! - [`errors`]: QUIC failures and refused headers as typed errors;
//! - [`control`]: control packets on the control stream;
//! - [`hello`]: the hello exchange, client and server side;
//! - [`framer`]: cutting the reliable stream into packets (no QUIC in it);
//! - [`state`]: the [`Link`] object and how it ends;
//! - [`pumps`]: the receive and send pumps, datagrams, leased sends;
//! - [`close`]: the close handshake, its confirmation and timeouts;
//! - this file: a link's life as the transport sees it — made from an
//!   established connection, started, closed or aborted, its status.

pub mod close;
pub mod codes;
pub mod control;
pub mod errors;
pub mod framer;
pub mod hello;
pub mod pumps;
pub mod state;

pub use close::CLOSE_TIMEOUT;
pub use codes::{
    CLOSE_BUSY, CLOSE_GOING_AWAY, CLOSE_NORMAL, CLOSE_POLICY, CLOSE_PROTOCOL, CLOSE_TOO_LARGE,
    CLOSE_VERSION, FLAG_FINAL, FLAG_RELIABLE, LINK_RECORD_PACKET,
};
pub use errors::connection_error;
pub use hello::{client_hello, server_hello, Established, HELLO_TIMEOUT};
pub use state::{Ended, Link, LinkSetup};

use crate::proto::{LinkStats, LinkStatus};
use state::{Counters, Exited};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::Notify;

impl Link {
    /// Wraps an established connection; `start` runs it.
    pub fn new(established: Established, setup: LinkSetup) -> Arc<Link> {
        Arc::new(Link {
            kernel_id: setup.kernel_id,
            handle: OnceLock::new(),
            conn: established.conn,
            events: setup.events,
            recv_ring: setup.recv_ring,
            send_ring: setup.send_ring,
            max_packet: setup.max_packet,
            peer_max: established.peer_max,
            tenants: setup.tenants,
            control_send: tokio::sync::Mutex::new(established.control_send),
            control_recv: Mutex::new(Some(established.control_recv)),
            ended: Mutex::new(None),
            closing: AtomicBool::new(false),
            discarding: AtomicBool::new(false),
            peer_close: Mutex::new(None),
            close_progress: Notify::new(),
            close_sent: AtomicBool::new(false),
            responding: AtomicBool::new(false),
            final_acked: AtomicBool::new(false),
            control_exited: Exited::default(),
            send_outcome: Mutex::new(None),
            receive_outcome: Mutex::new(None),
            receive_exited: Exited::default(),
            send_exited: Exited::default(),
            counters: Counters::default(),
            window: setup.window,
            reservation: Mutex::new(Some(setup.reservation)),
        })
    }

    /// Starts the pumps and the control reader (after the handle is known).
    pub fn start(self: &Arc<Self>, handle: u32, runtime: &tokio::runtime::Handle) {
        let _ = self.handle.set(handle);
        crate::transport::tls::open_windows(&self.conn, self.window);
        runtime.spawn(pumps::receive_pump(Arc::clone(self)));
        runtime.spawn(pumps::send_pump(Arc::clone(self)));
        let control = self
            .control_recv
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(control) = control {
            runtime.spawn(close::supervise(Arc::clone(self), control));
        }
    }

    /// Starts a graceful close (docs/knul.md, "Close"): everything JS
    /// published is delivered and confirmed, packets JS has not read are
    /// dropped, then the connection closes. Idempotent.
    /// `timeout` bounds the whole close (docs/knul.md: 30 s by default).
    pub fn close(
        self: &Arc<Self>,
        code: u32,
        reason: String,
        timeout: std::time::Duration,
        runtime: &tokio::runtime::Handle,
    ) {
        if self.closing.swap(true, Ordering::SeqCst) || self.is_ended() {
            return;
        }
        // JS reads no more: what it has not read yet is dropped, and the
        // receive pump drops what still arrives instead of blocking.
        self.discarding.store(true, Ordering::SeqCst);
        self.recv_ring.close();
        runtime.spawn(close::close_gracefully(
            Arc::clone(self),
            code,
            reason,
            timeout,
        ));
    }

    /// Ends the link at once (kernel or listener closing).
    pub fn abort(&self, code: u32, reason: &str) {
        self.closing.store(true, Ordering::SeqCst);
        self.end(Ended {
            code,
            reason: reason.to_owned(),
            by_peer: false,
            error: None,
        });
    }

    pub fn status(&self) -> LinkStatus {
        let ended = self.ended.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let stats = self.conn.stats();
        let counters = &self.counters;
        let stats = LinkStats {
            packets_sent: counters.packets_sent.load(Ordering::Relaxed),
            bytes_sent: counters.bytes_sent.load(Ordering::Relaxed),
            packets_received: counters.packets_received.load(Ordering::Relaxed),
            bytes_received: counters.bytes_received.load(Ordering::Relaxed),
            datagrams_dropped: counters.datagrams_dropped.load(Ordering::Relaxed),
            rtt_micros: stats.path.rtt.as_micros() as u64,
            congestion_window_bytes: stats.path.cwnd,
            lost_packets: stats.path.lost_packets,
            udp_datagrams_sent: stats.udp_tx.datagrams,
            udp_datagrams_received: stats.udp_rx.datagrams,
        };
        match ended {
            None => LinkStatus {
                open: true,
                stats: Some(stats),
                ..Default::default()
            },
            Some(ended) => LinkStatus {
                open: false,
                close_code: ended.code,
                close_reason: ended.reason,
                closed_by_peer: ended.by_peer,
                error: ended.error.map(|error| error.to_proto("link")),
                stats: Some(stats),
            },
        }
    }
}
