//! A KNUL link (docs/knul.md): one QUIC connection between two kernels, its
//! hello exchange, the two pumps that move packets between QUIC and the
//! link's rings, and its close handshake.
//!
//! - The receive pump reads the peer's reliable stream (and datagrams),
//!   checks every header before JS sees it, and copies each packet once,
//!   from QUIC's buffer into the kernel → JS ring. When that ring is full it
//!   stops reading, so QUIC flow control slows the sender: back-pressure.
//! - The send pump drains the JS → kernel ring in batches: reliable packets
//!   are written back to back on this side's stream (one write per batch),
//!   unreliable ones become datagrams.
//! - The control stream carries `close`; a graceful close delivers every
//!   reliable packet sent before it.

use super::knul::{Header, HeaderError, Kind, KNUL_HEADER_BYTES, KNUL_VERSION};
use super::lease::LeasingConsumer;
use crate::error::{KernelError, KernelResult};
use crate::events::{EventQueue, EVENT_LINK_CLOSED};
use crate::proto::{ErrorCode, LinkStats, LinkStatus};
use crate::ring::{Producer, Ring};
use bytes::{Bytes, BytesMut};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::Notify;

/// Tag of a packet record in the receive ring: `[header 40 B][payload]`.
pub const LINK_RECORD_PACKET: u32 = 1;
/// Header flag: sent on the reliable stream.
pub const FLAG_RELIABLE: u16 = 1;

/// Close codes (docs/knul.md).
pub const CLOSE_NORMAL: u32 = 0;
pub const CLOSE_GOING_AWAY: u32 = 1;
pub const CLOSE_PROTOCOL: u32 = 2;
pub const CLOSE_VERSION: u32 = 3;
pub const CLOSE_TOO_LARGE: u32 = 4;
pub const CLOSE_POLICY: u32 = 5;

/// Reliable packets at least this large go from the send ring to quinn
/// without a copy (smaller ones are cheaper to copy into one batch).
const ZERO_COPY_BYTES: usize = 64 << 10;
/// Stream chunks taken from quinn per read.
const CHUNKS_PER_READ: usize = 32;
/// Largest control packet payload (hello, close reason).
const CONTROL_MAX_PAYLOAD: u32 = 4096;
/// How long the hello exchange may take after TLS.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a close may take before it gives up and reports that delivery
/// was not confirmed.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one control packet write may take.
const CONTROL_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Header flag of a `close` that confirms the peer's close: "I have read
/// everything you sent, up to the end of your stream".
pub const FLAG_FINAL: u16 = 2;

/// A `close` the peer sent.
#[derive(Debug, Clone)]
struct PeerClose {
    code: u32,
    reason: String,
    /// A confirmation: the peer read everything this side sent...
    last: bool,
    /// ...except these packets, which it dropped because it had closed too.
    discarded: u32,
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
struct Counters {
    packets_sent: AtomicU64,
    bytes_sent: AtomicU64,
    packets_received: AtomicU64,
    bytes_received: AtomicU64,
    datagrams_dropped: AtomicU64,
    /// Packets dropped unread because this side had closed.
    discarded: AtomicU64,
}

/// A connection that finished TLS and the hello exchange.
pub struct Established {
    pub conn: quinn::Connection,
    pub control_send: quinn::SendStream,
    pub control_recv: quinn::RecvStream,
    /// The largest payload the peer accepts.
    pub peer_max: u32,
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
}

pub struct Link {
    pub kernel_id: u64,
    handle: OnceLock<u32>,
    conn: quinn::Connection,
    events: Arc<EventQueue>,
    recv_ring: Arc<Ring>,
    send_ring: Arc<Ring>,
    max_packet: u32,
    peer_max: u32,
    tenants: Option<Arc<HashSet<u64>>>,
    control_send: tokio::sync::Mutex<quinn::SendStream>,
    control_recv: Mutex<Option<quinn::RecvStream>>,
    ended: Mutex<Option<Ended>>,
    /// This side asked to close (the close path ends the link).
    closing: AtomicBool,
    /// After this side's close, packets that arrive are read and dropped
    /// (this side declared it reads no more), so the peer is never blocked.
    discarding: AtomicBool,
    /// The peer's `close`, once it arrived.
    peer_close: Mutex<Option<PeerClose>>,
    /// Wakes the close paths when the handshake moves (a `close` arrived,
    /// ours was sent, our confirmation was acknowledged).
    close_progress: Notify,
    /// This side sent its own (non-final) `close`.
    close_sent: AtomicBool,
    /// This side answers a peer's `close` with a confirmation...
    responding: AtomicBool,
    /// ...which the peer's QUIC stack acknowledged.
    final_acked: AtomicBool,
    /// The control reader stopped (it has read every control packet).
    control_exited: Exited,
    /// How the send pump ended: `Ok` once the peer acknowledged every byte.
    send_outcome: Mutex<Option<KernelResult<()>>>,
    /// How the receive pump ended: `Ok` at the end of the peer's stream.
    receive_outcome: Mutex<Option<KernelResult<()>>>,
    receive_exited: Exited,
    send_exited: Exited,
    counters: Counters,
}

/// A flag plus a notification: "this pump has stopped".
#[derive(Default)]
struct Exited {
    done: AtomicBool,
    notify: Notify,
}

impl Exited {
    fn set(&self) {
        self.done.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.done.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

fn protocol_error(code: u32, message: String) -> KernelError {
    KernelError::new(ErrorCode::Protocol, message).with_detail("closeCode", code.to_string())
}

/// The close code and message for a refused header.
fn header_refused(error: &HeaderError, what: &str) -> KernelError {
    match error {
        HeaderError::TooLarge { length, max } => protocol_error(
            CLOSE_TOO_LARGE,
            format!("the peer sent a {what} of {length} bytes, over maxPacketBytes ({max})"),
        ),
        HeaderError::Version(version) => protocol_error(
            CLOSE_VERSION,
            format!("the peer sent a {what} of KNUL version {version} (this side speaks {KNUL_VERSION})"),
        ),
        other => protocol_error(
            CLOSE_PROTOCOL,
            format!("the peer sent a malformed {what} header (bad {}: {other:?})", other.field()),
        ),
    }
    .with_detail("field", error.field())
}

/// Maps a QUIC connection error to a typed error naming what happened.
pub fn connection_error(error: &quinn::ConnectionError) -> KernelError {
    use quinn::ConnectionError as E;
    match error {
        E::ApplicationClosed(close) => {
            let code = close.error_code.into_inner();
            let reason = String::from_utf8_lossy(&close.reason).into_owned();
            KernelError::new(
                ErrorCode::Connection,
                format!("the peer closed the link (code {code}: {reason})"),
            )
            .with_detail("closeCode", code.to_string())
            .with_detail("reason", reason)
        }
        E::LocallyClosed => KernelError::new(ErrorCode::Closed, "the link was closed"),
        E::TimedOut => KernelError::new(
            ErrorCode::Connection,
            "the peer stopped answering (QUIC idle timeout)",
        ),
        E::Reset => KernelError::new(
            ErrorCode::Connection,
            "the peer reset the connection (it restarted or lost the link)",
        ),
        other => KernelError::new(ErrorCode::Connection, format!("connection failed: {other}")),
    }
}

fn read_error(error: quinn::ReadError) -> KernelError {
    match error {
        quinn::ReadError::ConnectionLost(error) => connection_error(&error),
        other => protocol_error(
            CLOSE_PROTOCOL,
            format!("reading the peer's stream: {other}"),
        ),
    }
}

fn write_error(error: quinn::WriteError) -> KernelError {
    match error {
        quinn::WriteError::ConnectionLost(error) => connection_error(&error),
        other => KernelError::new(ErrorCode::Connection, format!("sending: {other}")),
    }
}

fn control_packet(kind: Kind, flags: u16, payload: &[u8]) -> Vec<u8> {
    let header = Header {
        version: KNUL_VERSION,
        kind,
        flags,
        priority: 255,
        payload_length: payload.len() as u32,
        tenant: 0,
        trace_id: [0; 16],
    };
    let mut packet = header.encode().to_vec();
    packet.extend_from_slice(payload);
    packet
}

/// Reads one control packet (header + payload).
async fn read_control(recv: &mut quinn::RecvStream) -> KernelResult<(Header, Vec<u8>)> {
    let mut header = [0u8; KNUL_HEADER_BYTES];
    recv.read_exact(&mut header)
        .await
        .map_err(|error| match error {
            // Finished between packets: the peer sends no more control packets.
            quinn::ReadExactError::FinishedEarly(0) => {
                protocol_error(CLOSE_PROTOCOL, "the peer's control stream ended".into())
                    .with_detail("endOfStream", "true")
            }
            error => read_exact_error(error, "control packet"),
        })?;
    let header = Header::decode(&header, CONTROL_MAX_PAYLOAD)
        .map_err(|e| header_refused(&e, "control packet"))?;
    let mut payload = vec![0u8; header.payload_length as usize];
    recv.read_exact(&mut payload)
        .await
        .map_err(|error| read_exact_error(error, "control packet"))?;
    Ok((header, payload))
}

fn read_exact_error(error: quinn::ReadExactError, what: &str) -> KernelError {
    match error {
        quinn::ReadExactError::ReadError(error) => read_error(error),
        quinn::ReadExactError::FinishedEarly(got) => protocol_error(
            CLOSE_PROTOCOL,
            format!("the peer's control stream ended in the middle of a {what} ({got} bytes)"),
        ),
    }
}

/// Sends this side's `hello`: `[max_packet_bytes u32][versions]` (the
/// client offers the versions it speaks, the server names the one it picked;
/// both are version 1 here).
async fn write_hello(send: &mut quinn::SendStream, max_packet: u32) -> KernelResult<()> {
    let mut payload = max_packet.to_le_bytes().to_vec();
    payload.push(KNUL_VERSION);
    send.write_all(&control_packet(Kind::Hello, FLAG_RELIABLE, &payload))
        .await
        .map_err(write_error)
}

/// Client side of the hello exchange: offers our version and limit, learns the peer's.
pub async fn client_hello(conn: quinn::Connection, max_packet: u32) -> KernelResult<Established> {
    let (mut control_send, mut control_recv) =
        conn.open_bi().await.map_err(|e| connection_error(&e))?;
    write_hello(&mut control_send, max_packet).await?;
    let (header, payload) = read_control(&mut control_recv).await?;
    if header.kind != Kind::Hello || payload.len() != 5 || payload[4] != KNUL_VERSION {
        let error = protocol_error(
            CLOSE_PROTOCOL,
            "the server answered the hello with something else than a KNUL v1 hello".into(),
        );
        conn.close(
            quinn::VarInt::from_u32(CLOSE_PROTOCOL),
            error.message.as_bytes(),
        );
        return Err(error);
    }
    let peer_max = u32::from_le_bytes(payload[..4].try_into().expect("4 bytes"));
    Ok(Established {
        conn,
        control_send,
        control_recv,
        peer_max,
    })
}

/// Server side of the hello exchange. A refusal closes the connection with
/// the close code and reason (the peer sees both) and returns the error.
pub async fn server_hello(conn: quinn::Connection, max_packet: u32) -> KernelResult<Established> {
    let outcome = async {
        let (mut control_send, mut control_recv) =
            conn.accept_bi().await.map_err(|e| connection_error(&e))?;
        let (header, payload) = read_control(&mut control_recv).await?;
        if header.kind != Kind::Hello || payload.len() < 5 {
            return Err(protocol_error(
                CLOSE_PROTOCOL,
                format!(
                    "the peer's first packet was a {:?}, not a hello",
                    header.kind
                ),
            ));
        }
        if !payload[4..].contains(&KNUL_VERSION) {
            return Err(protocol_error(
                CLOSE_VERSION,
                format!(
                    "knul: this peer speaks version {KNUL_VERSION} only (offered: {:?})",
                    &payload[4..]
                ),
            ));
        }
        let peer_max = u32::from_le_bytes(payload[..4].try_into().expect("4 bytes"));
        write_hello(&mut control_send, max_packet).await?;
        Ok(Established {
            conn: conn.clone(),
            control_send,
            control_recv,
            peer_max,
        })
    };
    match tokio::time::timeout(HELLO_TIMEOUT, outcome).await {
        Ok(Ok(established)) => Ok(established),
        Ok(Err(error)) => {
            let code = error
                .details
                .get("closeCode")
                .and_then(|code| code.parse().ok())
                .unwrap_or(CLOSE_PROTOCOL);
            conn.close(quinn::VarInt::from_u32(code), error.message.as_bytes());
            Err(error)
        }
        Err(_) => {
            let error = protocol_error(CLOSE_PROTOCOL, "the peer sent no hello within 10 s".into());
            conn.close(
                quinn::VarInt::from_u32(CLOSE_PROTOCOL),
                error.message.as_bytes(),
            );
            Err(error)
        }
    }
}

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
        })
    }

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

    /// Starts the pumps and the control reader (after the handle is known).
    pub fn start(self: &Arc<Self>, handle: u32, runtime: &tokio::runtime::Handle) {
        let _ = self.handle.set(handle);
        super::tls::open_windows(&self.conn);
        runtime.spawn(receive_pump(Arc::clone(self)));
        runtime.spawn(send_pump(Arc::clone(self)));
        let control = self
            .control_recv
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(control) = control {
            runtime.spawn(supervise(Arc::clone(self), control));
        }
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

    fn lock_peer_close(&self) -> std::sync::MutexGuard<'_, Option<PeerClose>> {
        self.peer_close.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the link with `error` ("going away": delivery was not confirmed),
    /// whatever else is under way.
    fn end_with_error(&self, error: KernelError, by_peer: bool) {
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
    fn fail(&self, error: KernelError) {
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

    pub fn is_ended(&self) -> bool {
        self.ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Starts a graceful close (docs/knul.md, "Close"): everything JS
    /// published is delivered and confirmed, packets JS has not read are
    /// dropped, then the connection closes. Idempotent.
    pub fn close(self: &Arc<Self>, code: u32, reason: String, runtime: &tokio::runtime::Handle) {
        if self.closing.swap(true, Ordering::SeqCst) || self.is_ended() {
            return;
        }
        // JS reads no more: what it has not read yet is dropped, and the
        // receive pump drops what still arrives instead of blocking.
        self.discarding.store(true, Ordering::SeqCst);
        self.recv_ring.close();
        runtime.spawn(close_gracefully(Arc::clone(self), code, reason));
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

/// Copies framed packets from the reliable stream into the receive ring.
struct Framer {
    header: [u8; KNUL_HEADER_BYTES],
    header_bytes: usize,
    /// The record being filled: payload address, bytes written, total.
    record: Option<(usize, usize, usize)>,
    /// Payload bytes still to drop (a packet read after this side closed).
    skip: usize,
}

impl Framer {
    fn idle(&self) -> bool {
        self.header_bytes == 0 && self.record.is_none() && self.skip == 0
    }

    /// Adds to a lost connection's error how much of a packet had arrived.
    fn cut_short(&self, error: KernelError) -> KernelError {
        if self.idle() {
            return error;
        }
        let message = format!(
            "{} (the link dropped after {})",
            error.message,
            self.describe_partial()
        );
        KernelError { message, ..error }.with_detail("midPacket", "true")
    }

    /// What is missing of a packet cut off by the end of the stream.
    fn describe_partial(&self) -> String {
        match self.record {
            Some((_, written, total)) => {
                format!("{written} of {total} bytes of a packet's payload")
            }
            None if self.skip > 0 => format!("a packet ({} payload bytes missing)", self.skip),
            None => format!("{} of {KNUL_HEADER_BYTES} header bytes", self.header_bytes),
        }
    }

    async fn feed(
        &mut self,
        mut data: &[u8],
        link: &Link,
        producer: &mut Producer,
    ) -> KernelResult<()> {
        while !data.is_empty() {
            if self.skip > 0 {
                let take = self.skip.min(data.len());
                self.skip -= take;
                data = &data[take..];
                continue;
            }
            if let Some((address, written, total)) = self.record.as_mut() {
                let take = (*total - *written).min(data.len());
                // SAFETY: the record was reserved with `total` payload bytes at
                // `address`; JS does not read it before it is published.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        data.as_ptr(),
                        (*address as *mut u8).add(*written),
                        take,
                    )
                };
                *written += take;
                data = &data[take..];
                if written == total {
                    self.record = None;
                }
                continue;
            }
            let take = (KNUL_HEADER_BYTES - self.header_bytes).min(data.len());
            self.header[self.header_bytes..self.header_bytes + take].copy_from_slice(&data[..take]);
            self.header_bytes += take;
            data = &data[take..];
            if self.header_bytes < KNUL_HEADER_BYTES {
                break;
            }
            self.header_bytes = 0;
            let header = Header::decode(&self.header, link.max_packet)
                .map_err(|error| header_refused(&error, "packet"))?;
            link.check_data(&header, true)?;
            let length = header.payload_length as usize;
            if link.discarding.load(Ordering::SeqCst) {
                link.counters.discarded.fetch_add(1, Ordering::Relaxed);
                self.skip = length;
                continue;
            }
            let payload = match write_record(producer, &self.header, length).await {
                Ok(payload) => payload,
                // This side closed while the ring was full: drop the rest.
                Err(error)
                    if error.code == ErrorCode::Closed
                        && link.discarding.load(Ordering::SeqCst) =>
                {
                    link.counters.discarded.fetch_add(1, Ordering::Relaxed);
                    self.skip = length;
                    continue;
                }
                Err(error) => return Err(error),
            };
            link.counters
                .packets_received
                .fetch_add(1, Ordering::Relaxed);
            link.counters
                .bytes_received
                .fetch_add(length as u64, Ordering::Relaxed);
            if length > 0 {
                self.record = Some((payload, 0, length));
            }
        }
        Ok(())
    }
}

/// Reserves a packet record (waiting for space: back-pressure), writes its
/// header and returns the payload's address.
async fn write_record(
    producer: &mut Producer,
    header: &[u8; KNUL_HEADER_BYTES],
    length: usize,
) -> KernelResult<usize> {
    let size = (KNUL_HEADER_BYTES + length) as u32;
    // Addresses are kept as usize: a raw pointer would make the task !Send.
    let reserved = producer
        .try_reserve(size, LINK_RECORD_PACKET)?
        .map(|record| record as usize);
    let record = match reserved {
        Some(record) => record,
        None => producer
            .reserve(size, LINK_RECORD_PACKET)
            .await?
            .map(|record| record as usize)
            .ok_or_else(|| KernelError::new(ErrorCode::Closed, "the link closed"))?,
    };
    // SAFETY: the reservation holds header + payload bytes at `record`.
    unsafe { std::ptr::copy_nonoverlapping(header.as_ptr(), record as *mut u8, KNUL_HEADER_BYTES) };
    Ok(record + KNUL_HEADER_BYTES)
}

impl Link {
    /// Checks a data packet's kind, channel and tenant.
    fn check_data(&self, header: &Header, reliable: bool) -> KernelResult<()> {
        if header.kind != Kind::Data {
            return Err(protocol_error(
                CLOSE_PROTOCOL,
                format!(
                    "the peer sent a {:?} packet where data was expected",
                    header.kind
                ),
            ));
        }
        if (header.flags & FLAG_RELIABLE != 0) != reliable {
            return Err(protocol_error(
                CLOSE_PROTOCOL,
                "the peer's packet flags do not match the channel it came on (reliable flag)"
                    .into(),
            ));
        }
        if let Some(tenants) = &self.tenants {
            if !tenants.contains(&header.tenant) {
                return Err(protocol_error(
                    CLOSE_POLICY,
                    format!("the peer sent a packet for a tenant this listener does not serve (tenant hash {:#x})", header.tenant),
                ));
            }
        }
        Ok(())
    }

    /// One datagram: checked like a stream packet, dropped when JS is behind.
    fn receive_datagram(&self, datagram: &[u8], producer: &mut Producer) -> KernelResult<()> {
        let header = Header::decode(datagram, self.max_packet)
            .map_err(|error| header_refused(&error, "datagram"))?;
        if datagram.len() != KNUL_HEADER_BYTES + header.payload_length as usize {
            return Err(protocol_error(
                CLOSE_PROTOCOL,
                format!(
                    "the peer sent a datagram of {} bytes whose header announces {} payload bytes",
                    datagram.len(),
                    header.payload_length
                ),
            ));
        }
        self.check_data(&header, false)?;
        if self.discarding.load(Ordering::SeqCst) {
            return Ok(());
        }
        match producer.try_reserve(datagram.len() as u32, LINK_RECORD_PACKET)? {
            Some(record) => {
                // SAFETY: the reservation holds `datagram.len()` bytes.
                unsafe { std::ptr::copy_nonoverlapping(datagram.as_ptr(), record, datagram.len()) };
                self.counters
                    .packets_received
                    .fetch_add(1, Ordering::Relaxed);
                self.counters
                    .bytes_received
                    .fetch_add(u64::from(header.payload_length), Ordering::Relaxed);
            }
            None => {
                self.counters
                    .datagrams_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

async fn receive_pump(link: Arc<Link>) {
    let outcome = receive(&link).await;
    if let Err(error) = &outcome {
        link.fail(error.clone());
    }
    *link
        .receive_outcome
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(outcome);
    link.receive_exited.set();
}

async fn receive(link: &Link) -> KernelResult<()> {
    let mut producer = Producer::new(Arc::clone(&link.recv_ring));
    let mut framer = Framer {
        header: [0; KNUL_HEADER_BYTES],
        header_bytes: 0,
        record: None,
        skip: 0,
    };
    let mut stream: Option<quinn::RecvStream> = None;
    let mut stream_done = false;
    let mut chunks: [Bytes; CHUNKS_PER_READ] = Default::default();
    loop {
        tokio::select! {
            // Stream first: when the connection drops, its error says how
            // much of a packet had arrived.
            biased;
            accepted = link.conn.accept_uni(), if stream.is_none() && !stream_done => {
                let accepted = accepted.map_err(|error| connection_error(&error));
                stream = Some(accepted.map_err(|error| framer.cut_short(error))?);
            }
            read = async { stream.as_mut().expect("guarded").read_chunks(&mut chunks).await },
                if stream.is_some() => {
                match read {
                    // Several chunks per call: one lock of the connection
                    // state for up to CHUNKS_PER_READ QUIC frames.
                    Ok(Some(count)) => {
                        for chunk in &chunks[..count] {
                            framer.feed(chunk, link, &mut producer).await?;
                        }
                    }
                    Ok(None) => {
                        if !framer.idle() {
                            return Err(protocol_error(
                                CLOSE_PROTOCOL,
                                format!("the peer ended its stream after {}", framer.describe_partial()),
                            ));
                        }
                        stream = None;
                        stream_done = true;
                    }
                    Err(error) => return Err(framer.cut_short(read_error(error))),
                }
            }
            datagram = link.conn.read_datagram() => {
                let datagram = datagram.map_err(|error| framer.cut_short(connection_error(&error)))?;
                link.receive_datagram(&datagram, &mut producer)?;
            }
        }
        if framer.idle() {
            producer.publish();
        }
        if stream_done {
            // Every reliable packet has arrived; datagrams after the peer's
            // close are not worth waiting for.
            producer.publish();
            return Ok(());
        }
    }
}

async fn send_pump(link: Arc<Link>) {
    let outcome = send(&link).await;
    if let Err(error) = &outcome {
        link.fail(error.clone());
    }
    *link.send_outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
    link.send_exited.set();
}

async fn send(link: &Link) -> KernelResult<()> {
    let mut stream = link
        .conn
        .open_uni()
        .await
        .map_err(|error| connection_error(&error))?;
    let mut consumer = LeasingConsumer::new(Arc::clone(&link.send_ring));
    let mut batch = BytesMut::new();
    let mut datagrams: Vec<Bytes> = Vec::new();
    loop {
        let more = consumer.readable().await;
        let mut refused: Option<KernelError> = None;
        let (mut packets, mut bytes) = (0u64, 0u64);
        // The stream's next bytes, in order: copied runs of small packets,
        // and `None` where a large packet goes out of the ring as is.
        let mut chunks: Vec<Option<Bytes>> = Vec::new();
        let leases = consumer.drain(|_tag, record| {
            if refused.is_some() {
                return false;
            }
            match Header::decode(record, link.peer_max) {
                Ok(header)
                    if header.kind == Kind::Data
                        && record.len() == KNUL_HEADER_BYTES + header.payload_length as usize =>
                {
                    packets += 1;
                    bytes += u64::from(header.payload_length);
                    if header.flags & FLAG_RELIABLE == 0 {
                        datagrams.push(Bytes::copy_from_slice(record));
                        false
                    } else if record.len() >= ZERO_COPY_BYTES {
                        if !batch.is_empty() {
                            chunks.push(Some(batch.split().freeze()));
                        }
                        chunks.push(None);
                        true
                    } else {
                        batch.extend_from_slice(record);
                        false
                    }
                }
                _ => {
                    refused = Some(KernelError::invalid_argument(
                        "the link's send ring holds a record that is not a valid KNUL data packet",
                    ));
                    false
                }
            }
        })?;
        if let Some(error) = refused {
            return Err(error);
        }
        if !batch.is_empty() {
            chunks.push(Some(batch.split().freeze()));
        }
        for datagram in datagrams.drain(..) {
            match link.conn.send_datagram(datagram) {
                Ok(()) => {}
                Err(quinn::SendDatagramError::ConnectionLost(error)) => {
                    return Err(connection_error(&error))
                }
                // Too large for the path now, or the peer disabled datagrams:
                // unreliable packets may be lost; count it.
                Err(_) => {
                    link.counters
                        .datagrams_dropped
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if !chunks.is_empty() {
            // A leased packet's ring space comes back when quinn drops its
            // bytes (acknowledged): the ring bounds what is in flight.
            let mut leases = leases.into_iter();
            let mut chunks: Vec<Bytes> = chunks
                .into_iter()
                .map(|chunk| {
                    chunk.unwrap_or_else(|| {
                        Bytes::from_owner(leases.next().expect("one lease per large packet"))
                    })
                })
                .collect();
            stream
                .write_all_chunks(&mut chunks)
                .await
                .map_err(write_error)?;
        }
        link.counters
            .packets_sent
            .fetch_add(packets, Ordering::Relaxed);
        link.counters.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
        if !more {
            break;
        }
    }
    // The ring closed (graceful close): finish the stream and wait until
    // the peer's QUIC stack acknowledged every byte of it.
    let _ = stream.finish();
    match stream.stopped().await {
        Ok(None) => Ok(()),
        Ok(Some(code)) => Err(KernelError::new(
            ErrorCode::Connection,
            format!("the peer stopped reading this link's packets (code {code})"),
        )),
        Err(quinn::StoppedError::ConnectionLost(error)) => Err(connection_error(&error)),
        Err(error) => Err(KernelError::new(
            ErrorCode::Connection,
            format!("sending: {error}"),
        )),
    }
}

/// Writes one control packet, bounded in time (a peer that does not read
/// its control stream cannot hold a close forever).
async fn write_control(link: &Link, kind: Kind, flags: u16, payload: &[u8]) -> KernelResult<()> {
    let packet = control_packet(kind, flags, payload);
    let write = async {
        let mut send = link.control_send.lock().await;
        send.write_all(&packet).await.map_err(write_error)
    };
    tokio::time::timeout(CONTROL_WRITE_TIMEOUT, write)
        .await
        .map_err(|_| {
            KernelError::new(
                ErrorCode::Connection,
                "the peer does not read its control stream (a control packet waited 5 s)",
            )
        })?
}

/// A `close` payload: `[code u32]`, for a confirmation `[discarded u32]`,
/// then the UTF-8 reason (at most 1024 bytes).
fn close_payload(code: u32, discarded: Option<u32>, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(1024);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = code.to_le_bytes().to_vec();
    if let Some(discarded) = discarded {
        payload.extend_from_slice(&discarded.to_le_bytes());
    }
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    payload
}

fn parse_close(payload: &[u8], last: bool) -> PeerClose {
    let word = |at: usize| {
        payload
            .get(at..at + 4)
            .map(|word| u32::from_le_bytes(word.try_into().expect("4 bytes")))
    };
    let reason_at = if last { 8 } else { 4 };
    PeerClose {
        code: word(0).unwrap_or(CLOSE_PROTOCOL),
        reason: String::from_utf8_lossy(payload.get(reason_at..).unwrap_or(&[])).into_owned(),
        last,
        discarded: if last { word(4).unwrap_or(0) } else { 0 },
    }
}

/// Reads the control stream: answers pings, takes the peer's `close`, and
/// ends the link when the connection is lost.
async fn supervise(link: Arc<Link>, control: quinn::RecvStream) {
    read_control_stream(&link, control).await;
    link.control_exited.set();
    link.close_progress.notify_waiters();
}

async fn read_control_stream(link: &Arc<Link>, mut control: quinn::RecvStream) {
    loop {
        match read_control(&mut control).await {
            Ok((header, payload)) => match header.kind {
                Kind::Ping => {
                    // Answered only when the control stream is free: a peer
                    // that floods pings without reading pongs gets fewer.
                    if let Ok(mut send) = link.control_send.try_lock() {
                        let pong = control_packet(Kind::Pong, FLAG_RELIABLE, &payload);
                        let _ = tokio::time::timeout(CONTROL_WRITE_TIMEOUT, send.write_all(&pong))
                            .await;
                    }
                }
                Kind::Pong => {}
                Kind::Close => {
                    let close = parse_close(&payload, header.flags & FLAG_FINAL != 0);
                    // A confirmation answers this side's close: legitimate once
                    // this side started closing (its close may still be on its way
                    // out when the peer's answer already arrives).
                    if close.last && !link.closing.load(Ordering::SeqCst) {
                        return link.fail(protocol_error(
                            CLOSE_PROTOCOL,
                            "the peer confirmed a close this side never sent".into(),
                        ));
                    }
                    let repeated = link
                        .lock_peer_close()
                        .as_ref()
                        .is_some_and(|earlier| !earlier.last && !close.last);
                    if repeated {
                        continue; // only the first close counts
                    }
                    let respond = (!close.last).then(|| (close.code, close.reason.clone()));
                    *link.lock_peer_close() = Some(close);
                    link.close_progress.notify_waiters();
                    if let Some((code, reason)) = respond {
                        link.responding.store(true, Ordering::SeqCst);
                        tokio::spawn(respond_to_close(Arc::clone(link), code, reason));
                    }
                }
                other => {
                    return link.fail(protocol_error(
                        CLOSE_PROTOCOL,
                        format!("the peer sent a {other:?} packet on the control stream"),
                    ))
                }
            },
            Err(error) if error.details.contains_key("endOfStream") => return,
            Err(error) if error.code == ErrorCode::Protocol => return link.fail(error),
            Err(error) => {
                // The connection is gone. The receive pump sees the same loss
                // and knows more (e.g. that it cut a packet short): let it
                // report first.
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), link.receive_exited.wait()).await;
                return link.fail(error);
            }
        }
    }
}

/// The peer started closing (or both sides did): read everything it sent,
/// up to the end of its stream, then confirm with a final `close`. A peer
/// that started alone closes the connection once it has the confirmation.
async fn respond_to_close(link: Arc<Link>, code: u32, reason: String) {
    // As long as it takes: this side's JS decides how fast it reads (the
    // peer gives up after its own close timeout and closes the connection).
    tokio::select! {
        _ = link.receive_exited.wait() => {}
        lost = link.conn.closed() => {
            let error = connection_error(&lost);
            return link.end_with_error(error, true);
        }
    }
    if link.is_ended() {
        return;
    }
    let received = link
        .receive_outcome
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or(Ok(()));
    if let Err(error) = received {
        // The peer's stream did not end cleanly (e.g. it gave up waiting and
        // closed the connection): packets were lost, whatever the code says.
        return link.end_with_error(error, true);
    }
    // The peer drops what this side still sends; stop sending.
    link.send_ring.close();
    // When this side closes too, its own `close` goes first.
    loop {
        let notified = link.close_progress.notified();
        if !link.closing.load(Ordering::SeqCst)
            || link.close_sent.load(Ordering::SeqCst)
            || link.is_ended()
        {
            break;
        }
        notified.await;
    }
    // Packets this side dropped unread: skipped after its own close, plus
    // reliable ones still in the ring (JS stopped reading when it closed;
    // the ring no longer moves on either side here).
    let mut discarded = link.counters.discarded.load(Ordering::SeqCst);
    if link.discarding.load(Ordering::SeqCst) {
        discarded += link.recv_ring.queued_records_where(is_reliable_record);
    }
    let confirm = close_payload(
        code,
        Some(discarded.min(u64::from(u32::MAX)) as u32),
        &reason,
    );
    if let Err(error) =
        write_control(&link, Kind::Close, FLAG_RELIABLE | FLAG_FINAL, &confirm).await
    {
        // No close task of this side would end the link otherwise.
        return link.end_with_error(error, true);
    }
    // Nothing follows the confirmation on the control stream.
    let acked = {
        let mut send = link.control_send.lock().await;
        let _ = send.finish();
        matches!(send.stopped().await, Ok(None))
    };
    if acked {
        link.final_acked.store(true, Ordering::SeqCst);
        link.close_progress.notify_waiters();
    }
    if link.closing.load(Ordering::SeqCst) {
        // Both sides closed at once: this side's close path ends the link.
        return;
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, link.conn.closed()).await;
    let error = (code >= CLOSE_PROTOCOL).then(|| {
        KernelError::new(
            ErrorCode::Connection,
            format!("the peer closed the link with code {code}: {reason}"),
        )
        .with_detail("closeCode", code.to_string())
        .with_detail("reason", reason.clone())
    });
    link.end(Ended {
        code,
        reason,
        by_peer: true,
        error,
    });
}

/// Whether a receive-ring record (a KNUL packet) came on the reliable stream.
fn is_reliable_record(record: &[u8]) -> bool {
    record
        .get(6)
        .is_some_and(|flags| u16::from(*flags) & FLAG_RELIABLE != 0)
}

/// The result the peer's confirmation carries, once it arrived.
fn confirmation(link: &Link) -> Option<KernelResult<()>> {
    let discarded = link
        .lock_peer_close()
        .as_ref()
        .filter(|close| close.last)
        .map(|close| close.discarded)?;
    Some(match discarded {
        0 => Ok(()),
        discarded => Err(KernelError::new(
            ErrorCode::Connection,
            format!(
                "the peer closed at the same time and dropped {discarded} packets it had not read"
            ),
        )
        .with_detail("discarded", discarded.to_string())),
    })
}

/// This side's graceful close: deliver what JS published, tell the peer,
/// wait for its confirmation that it read everything, close the connection.
async fn close_gracefully(link: Arc<Link>, code: u32, reason: String) {
    let handshake = async {
        // JS published every packet before asking to close: the send pump
        // drains the ring, finishes the stream, and waits for the acks.
        link.send_ring.close();
        link.send_exited.wait().await;
        let sent = link
            .send_outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or(Ok(()));
        sent?;
        write_control(
            &link,
            Kind::Close,
            FLAG_RELIABLE,
            &close_payload(code, None, &reason),
        )
        .await?;
        link.close_sent.store(true, Ordering::SeqCst);
        link.close_progress.notify_waiters();
        // The peer confirms once its JS has read up to the end of our stream.
        // When it closed too, it waits for our confirmation as well: this
        // side closes the connection only once that one was acknowledged.
        loop {
            let notified = link.close_progress.notified();
            let answered =
                !link.responding.load(Ordering::SeqCst) || link.final_acked.load(Ordering::SeqCst);
            if let Some(outcome) = confirmation(&link) {
                if answered {
                    return outcome;
                }
            }
            tokio::select! {
                _ = notified => {}
                lost = link.conn.closed() => {
                    // The peer closes once it has everything: its confirmation
                    // may still sit unread in the control stream.
                    let _ = tokio::time::timeout(Duration::from_secs(1), link.control_exited.wait()).await;
                    return confirmation(&link).unwrap_or_else(|| Err(connection_error(&lost)));
                }
            }
        }
    };
    let outcome = match tokio::time::timeout(CLOSE_TIMEOUT, handshake).await {
        Ok(outcome) => outcome,
        Err(_) => Err(KernelError::new(
            ErrorCode::Connection,
            format!(
                "the peer did not confirm within {} s that it read every packet: some may not have been delivered",
                CLOSE_TIMEOUT.as_secs()
            ),
        )),
    };
    match outcome {
        Ok(()) => link.end(Ended {
            code,
            reason,
            by_peer: false,
            error: None,
        }),
        Err(error) => link.end_with_error(error, false),
    }
}
