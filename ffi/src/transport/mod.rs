//! The KNUL transport's exports: one `Transport` per kernel (its event queue
//! and client endpoints), listeners, connects and links. The protocol itself
//! is in `link` (docs/knul.md); TLS in `tls`.
//!
//! Asynchronous work never blocks a JS call: `listen` binds at once,
//! `connect` returns an operation id whose completion arrives as an event,
//! and links report readiness through the transport's event queue.

pub mod knul;
pub mod lease;
pub mod link;
pub mod tls;

use crate::boundary::{call, in_bytes, out_bytes, write_out};
use crate::error::{KernelError, KernelResult};
use crate::events::{EventQueue, EVENT_CONNECT, EVENT_LISTENER};
use crate::handles::{HandleKind, HandleTable};
use crate::kernel::kernel;
use crate::proto::{
    ConnectRequest, DevCertificateRequest, ErrorCode, LinkInfo, ListenRequest, ListenerInfo,
    ListenerStats,
};
use crate::ring::{record_size, ring, Direction, Ring};
use knul::{tenant_hash, KNUL_HEADER_BYTES, KNUL_VERSION};
use link::{
    client_hello, connection_error, server_hello, Established, Link, LinkSetup, CLOSE_GOING_AWAY,
    HELLO_TIMEOUT,
};

use prost::Message;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Default and largest `maxPacketBytes`.
pub const KNUL_DEFAULT_MAX_PACKET_BYTES: u32 = 1 << 20;
pub const KNUL_MAX_PACKET_BYTES: u32 = 256 << 20;
/// Room `krepis_listener_accept` needs for a `LinkInfo` (an IPv6 address
/// and a few varints fit with plenty to spare).
pub const LINK_INFO_MAX_BYTES: usize = 256;
/// Concurrent handshakes per listener.
const MAX_HANDSHAKES: usize = 64;
/// Default number of established links waiting for `accept`.
const DEFAULT_BACKLOG: usize = 1024;
/// UDP socket buffers asked for (the OS may cap them, e.g. Linux at
/// `net.core.rmem_max`). The default ~200 KiB overflows when many links
/// handshake at once or a fast link bursts, and each drop costs a QUIC
/// retransmission timeout.
const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// A UDP endpoint on `address` with large socket buffers.
fn endpoint(
    runtime: &tokio::runtime::Handle,
    address: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if address.is_ipv6() {
        // Dual-stack when the OS allows it ("::" then also takes IPv4).
        let _ = socket.set_only_v6(false);
    }
    // Best effort: a smaller buffer only costs speed under bursts.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    socket.bind(&address.into())?;
    let _runtime = runtime.enter();
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        socket.into(),
        Arc::new(quinn::TokioRuntime),
    )
}

static TRANSPORTS: HandleTable<Transport> = HandleTable::new(HandleKind::Transport);
static LISTENERS: HandleTable<Listener> = HandleTable::new(HandleKind::Listener);
static LINKS: HandleTable<Link> = HandleTable::new(HandleKind::Link);

pub struct Transport {
    kernel_id: u64,
    runtime: tokio::runtime::Handle,
    events: Arc<EventQueue>,
    /// Client endpoints (one UDP socket per address family), made on first use.
    clients: Mutex<HashMap<bool, quinn::Endpoint>>,
    /// Finished connects waiting for JS to collect them.
    connects: Mutex<HashMap<u32, KernelResult<LinkInfo>>>,
    next_connect: AtomicU32,
}

struct Listener {
    kernel_id: u64,
    transport: Arc<Transport>,
    endpoint: quinn::Endpoint,
    handle: OnceLock<u32>,
    max_packet: u32,
    tenants: Option<Arc<HashSet<u64>>>,
    backlog: usize,
    queue: Mutex<ListenerQueue>,
    closed: AtomicBool,
    /// Stops the accept loop (links already accepted are not affected).
    stop: tokio::sync::Notify,
    /// Handshakes in progress at most; more wait (quinn buffers them, up to
    /// `max_incoming`).
    handshakes: Arc<tokio::sync::Semaphore>,
    accepted: AtomicU64,
    refused: AtomicU64,
    last_refusal: Mutex<String>,
}

#[derive(Default)]
struct ListenerQueue {
    ready: VecDeque<Established>,
    /// JS waits for the next link: post an event when one arrives.
    armed: bool,
}

fn check_max_packet(value: u32) -> KernelResult<u32> {
    match value {
        0 => Ok(KNUL_DEFAULT_MAX_PACKET_BYTES),
        value if value <= KNUL_MAX_PACKET_BYTES => Ok(value),
        value => Err(KernelError::invalid_argument(format!(
            "maxPacketBytes must be at most {KNUL_MAX_PACKET_BYTES}, got {value}"
        ))
        .with_detail("field", "maxPacketBytes")),
    }
}

fn check_port(port: u32) -> KernelResult<u16> {
    u16::try_from(port).map_err(|_| {
        KernelError::invalid_argument(format!("port must be 0–65535, got {port}"))
            .with_detail("field", "port")
    })
}

fn resolve(hostname: &str, port: u32) -> KernelResult<SocketAddr> {
    let port = check_port(port)?;
    (hostname, port)
        .to_socket_addrs()
        .map_err(|error| {
            KernelError::invalid_argument(format!("cannot resolve {hostname:?}: {error}"))
                .with_detail("field", "hostname")
        })?
        .next()
        .ok_or_else(|| {
            KernelError::invalid_argument(format!("{hostname:?} has no address"))
                .with_detail("field", "hostname")
        })
}

/// Checks the two rings JS made for a link and routes their wake-ups
/// through the transport's event queue.
fn link_rings(
    transport: &Transport,
    recv_ring: u32,
    send_ring: u32,
    max_packet: u32,
) -> KernelResult<(Arc<Ring>, Arc<Ring>)> {
    let receive = ring(recv_ring)?;
    let send = ring(send_ring)?;
    if receive.direction() != Direction::ToJs || send.direction() != Direction::ToKernel {
        return Err(KernelError::invalid_argument(
            "a link needs a kernel → JS ring to receive and a JS → kernel ring to send",
        ));
    }
    let needed = record_size(KNUL_HEADER_BYTES as u32 + max_packet);
    if u64::from(receive.capacity()) < needed {
        return Err(KernelError::invalid_argument(format!(
            "the receive ring ({} bytes) cannot hold a packet of maxPacketBytes ({max_packet})",
            receive.capacity()
        )));
    }
    receive.claim()?;
    send.claim()?;
    receive.attach_events(Arc::clone(&transport.events), recv_ring)?;
    send.attach_events(Arc::clone(&transport.events), send_ring)?;
    Ok((receive, send))
}

/// Registers and starts a link; returns what JS needs to know about it.
fn start_link(
    transport: &Transport,
    established: Established,
    recv: Arc<Ring>,
    send: Arc<Ring>,
    max_packet: u32,
    tenants: Option<Arc<HashSet<u64>>>,
) -> KernelResult<LinkInfo> {
    let link = Link::new(
        established,
        LinkSetup {
            kernel_id: transport.kernel_id,
            events: Arc::clone(&transport.events),
            recv_ring: recv,
            send_ring: send,
            max_packet,
            tenants,
        },
    );
    let handle = match LINKS.insert(Arc::clone(&link)) {
        Ok(handle) => handle,
        Err(error) => {
            link.abort(CLOSE_GOING_AWAY, "the kernel has too many links");
            return Err(error);
        }
    };
    link.start(handle, &transport.runtime);
    let remote = link.remote_address();
    Ok(LinkInfo {
        handle,
        remote_hostname: remote.ip().to_string(),
        remote_port: u32::from(remote.port()),
        version: u32::from(KNUL_VERSION),
        peer_max_packet_bytes: link.peer_max(),
        max_datagram_bytes: link.max_datagram_bytes(),
    })
}

impl Transport {
    fn client_endpoint(&self, ipv6: bool) -> KernelResult<quinn::Endpoint> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(endpoint) = clients.get(&ipv6) {
            return Ok(endpoint.clone());
        }
        let bind: SocketAddr = if ipv6 {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = endpoint(&self.runtime, bind, None)
            .map_err(|error| KernelError::io("binding a UDP socket for connect", &error))?;
        clients.insert(ipv6, endpoint.clone());
        Ok(endpoint)
    }

    fn finish_connect(&self, operation: u32, result: KernelResult<LinkInfo>) {
        self.connects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(operation, result);
        self.events.push(EVENT_CONNECT, operation);
    }
}

impl Listener {
    fn refuse(&self, why: String) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        *self.last_refusal.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }

    fn wake_js(&self) {
        if let Some(handle) = self.handle.get() {
            self.transport.events.push(EVENT_LISTENER, *handle);
        }
    }

    fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let pending =
            std::mem::take(&mut self.queue.lock().unwrap_or_else(|p| p.into_inner()).ready);
        for established in pending {
            established.conn.close(
                quinn::VarInt::from_u32(CLOSE_GOING_AWAY),
                b"the listener closed",
            );
        }
        // The accept loop now refuses newcomers; the endpoint (its UDP
        // socket) lives on while accepted links use it.
        self.stop.notify_one();
        self.wake_js();
    }
}

/// Accepts connections: TLS, then the hello exchange, then the backlog.
async fn accept_loop(listener: Arc<Listener>) {
    loop {
        let incoming = tokio::select! {
            incoming = listener.endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => return,
            },
            _ = listener.stop.notified() => break,
        };
        let listener = Arc::clone(&listener);
        tokio::spawn(async move {
            let Ok(_permit) = Arc::clone(&listener.handshakes).acquire_owned().await else {
                return;
            };
            if listener.closed.load(Ordering::SeqCst) {
                incoming.refuse();
                return;
            }
            let handshake = async {
                let conn = incoming.await.map_err(|error| connection_error(&error))?;
                server_hello(conn, listener.max_packet).await
            };
            let established = match tokio::time::timeout(HELLO_TIMEOUT * 2, handshake).await {
                Ok(Ok(established)) => established,
                Ok(Err(error)) => return listener.refuse(error.message),
                Err(_) => return listener.refuse("the handshake took longer than 20 s".into()),
            };
            let mut queue = listener.queue.lock().unwrap_or_else(|p| p.into_inner());
            if listener.closed.load(Ordering::SeqCst) || queue.ready.len() >= listener.backlog {
                drop(queue);
                established.conn.close(
                    quinn::VarInt::from_u32(CLOSE_GOING_AWAY),
                    b"the listener is not accepting links (closed or backlog full)",
                );
                return listener.refuse("backlog full or listener closed".into());
            }
            queue.ready.push_back(established);
            let armed = std::mem::take(&mut queue.armed);
            drop(queue);
            if armed {
                listener.wake_js();
            }
        });
    }
    // Closed: refuse new connections (the peer learns at once) while
    // accepted links still use the endpoint, then close it.
    loop {
        if listener.endpoint.open_connections() == 0 {
            listener.endpoint.close(
                quinn::VarInt::from_u32(CLOSE_GOING_AWAY),
                b"the listener closed",
            );
            return;
        }
        tokio::select! {
            incoming = listener.endpoint.accept() => match incoming {
                Some(incoming) => incoming.refuse(),
                None => return,
            },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Links and listeners of a kernel, for its stats.
pub fn stats_of(kernel_id: u64) -> crate::proto::TransportStats {
    let count = |owned: bool| u64::from(owned);
    crate::proto::TransportStats {
        links: LINKS.sum(|link| count(link.kernel_id == kernel_id)) as u32,
        listeners: LISTENERS.sum(|listener| count(listener.kernel_id == kernel_id)) as u32,
    }
}

/// Closes every transport object of a kernel (on kernel close): links end
/// with "going away", listeners and endpoints close, JS waiters wake.
pub fn release_owned(kernel_id: u64) {
    for link in LINKS.drain_where(|link| link.kernel_id == kernel_id) {
        link.abort(CLOSE_GOING_AWAY, "the kernel is closing");
    }
    let mut endpoints = Vec::new();
    for listener in LISTENERS.drain_where(|listener| listener.kernel_id == kernel_id) {
        listener.close();
        endpoints.push(listener.endpoint.clone());
    }
    let mut runtime = None;
    for transport in TRANSPORTS.drain_where(|transport| transport.kernel_id == kernel_id) {
        endpoints.extend(
            transport
                .clients
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned(),
        );
        transport.events.close();
        runtime = Some(transport.runtime.clone());
    }
    for endpoint in &endpoints {
        endpoint.close(
            quinn::VarInt::from_u32(CLOSE_GOING_AWAY),
            b"the kernel is closing",
        );
    }
    // Let the endpoints send their close frames before the runtime stops:
    // otherwise peers only notice at their idle timeout (30 s).
    // (Never from inside a runtime, where blocking is not allowed.)
    let outside_runtime = tokio::runtime::Handle::try_current().is_err();
    if let Some(runtime) = runtime.filter(|_| !endpoints.is_empty() && outside_runtime) {
        runtime.block_on(async {
            let idle = wait_all(endpoints.iter().map(|endpoint| endpoint.wait_idle()));
            let _ = tokio::time::timeout(SHUTDOWN_FLUSH, idle).await;
        });
    }
}

/// How long kernel close waits for links' close frames to go out.
const SHUTDOWN_FLUSH: Duration = Duration::from_millis(250);

/// Awaits each future in turn (they all progress on the runtime meanwhile).
async fn wait_all<F: std::future::Future>(futures: impl Iterator<Item = F>) {
    for future in futures {
        future.await;
    }
}

/// Creates the kernel's transport (its event queue); writes the handle to `out`.
///
/// # Safety
/// `out` must point to a writable, aligned `u32`.
#[no_mangle]
pub unsafe extern "C" fn krepis_transport_open(kernel_handle: u32, out: *mut u32) -> i32 {
    call("krepis_transport_open", || {
        if out.is_null() || !out.is_aligned() {
            return Err(KernelError::invalid_argument(
                "out must point to an aligned u32",
            ));
        }
        let owner = kernel(kernel_handle)?;
        let transport = Transport {
            kernel_id: owner.id(),
            runtime: owner.runtime_handle()?,
            events: Arc::new(EventQueue::default()),
            clients: Mutex::new(HashMap::new()),
            connects: Mutex::new(HashMap::new()),
            next_connect: AtomicU32::new(1),
        };
        let handle = TRANSPORTS.insert(Arc::new(transport))?;
        // SAFETY: checked non-null and aligned; the caller guarantees a u32.
        unsafe { out.write(handle) };
        Ok(0)
    })
}

/// [nonblocking] Waits up to `timeout_ms` for transport events and writes up
/// to `cap / 8` of them (`[kind u32][handle u32]`) into `out`. Returns how
/// many (0 on timeout or wake). Runs on a Deno worker thread: errors are
/// reported by status only.
///
/// # Safety
/// `out` must be null or point to `cap` writable bytes that JS leaves alone
/// until the call returns.
#[no_mangle]
pub unsafe extern "C" fn krepis_transport_wait(
    transport: u32,
    out: *mut u8,
    cap: u32,
    timeout_ms: u32,
) -> i32 {
    call("krepis_transport_wait", || {
        let transport = TRANSPORTS.get(transport)?;
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { out_bytes(out, cap, "out")? };
        if transport.events.is_closed() {
            return Err(KernelError::new(
                ErrorCode::Closed,
                "the transport is closed",
            ));
        }
        transport
            .events
            .wait(out, Duration::from_millis(u64::from(timeout_ms)))
    })
}

/// Makes a pending `krepis_transport_wait` return now.
#[no_mangle]
pub extern "C" fn krepis_transport_wake(transport: u32) -> i32 {
    call("krepis_transport_wake", || {
        TRANSPORTS.get(transport)?.events.wake();
        Ok(0)
    })
}

/// Binds a listener (`krepis.v1.ListenRequest`); writes its
/// `krepis.v1.ListenerInfo` (handle and bound address) into `out`.
///
/// # Safety
/// `request` must point to `len` readable bytes; `out` to `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_transport_listen(
    transport: u32,
    request: *const u8,
    len: u32,
    out: *mut u8,
    cap: u32,
) -> i32 {
    call("krepis_transport_listen", || {
        let transport = TRANSPORTS.get(transport)?;
        // SAFETY: forwarded from this function's contract.
        let request = unsafe { in_bytes(request, len, "request")? };
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { out_bytes(out, cap, "out")? };
        let request = ListenRequest::decode(request).map_err(|error| {
            KernelError::invalid_argument(format!("bad ListenRequest: {error}"))
        })?;
        let max_packet = check_max_packet(request.max_packet_bytes)?;
        let address = resolve(&request.hostname, request.port)?;
        let config = tls::server_config(&request.cert_pem, &request.key_pem)?;
        let endpoint = endpoint(&transport.runtime, address, Some(config)).map_err(|error| {
            KernelError::io(&format!("listening on {address}"), &error)
                .with_detail("address", address.to_string())
        })?;
        let bound = endpoint
            .local_addr()
            .map_err(|error| KernelError::io("reading the bound address", &error))?;
        let tenants = (!request.tenants.is_empty()).then(|| {
            Arc::new(
                request
                    .tenants
                    .iter()
                    .map(|tenant| tenant_hash(tenant))
                    .collect(),
            )
        });
        let listener = Arc::new(Listener {
            kernel_id: transport.kernel_id,
            transport: Arc::clone(&transport),
            endpoint,
            handle: OnceLock::new(),
            max_packet,
            tenants,
            backlog: match request.backlog {
                0 => DEFAULT_BACKLOG,
                backlog => backlog as usize,
            },
            queue: Mutex::new(ListenerQueue::default()),
            closed: AtomicBool::new(false),
            stop: tokio::sync::Notify::new(),
            handshakes: Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES)),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            last_refusal: Mutex::new(String::new()),
        });
        let handle = LISTENERS.insert(Arc::clone(&listener))?;
        let _ = listener.handle.set(handle);
        transport.runtime.spawn(accept_loop(listener));
        let info = ListenerInfo {
            handle,
            hostname: bound.ip().to_string(),
            port: u32::from(bound.port()),
        };
        write_out(&info.encode_to_vec(), out)
    })
}

/// Takes the next established link of a listener and starts it with the
/// given rings; writes its `krepis.v1.LinkInfo`. Returns 0 when none is
/// waiting: the listener then posts an event when one arrives.
///
/// # Safety
/// `out` must point to `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_listener_accept(
    listener: u32,
    recv_ring: u32,
    send_ring: u32,
    out: *mut u8,
    cap: u32,
) -> i32 {
    call("krepis_listener_accept", || {
        let listener = LISTENERS.get(listener)?;
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { out_bytes(out, cap, "out")? };
        if out.len() < LINK_INFO_MAX_BYTES {
            // Checked first: a started link must reach JS, never be dropped
            // because its description did not fit.
            return Err(KernelError::invalid_argument(format!(
                "out must hold at least {LINK_INFO_MAX_BYTES} bytes"
            )));
        }
        if listener.closed.load(Ordering::SeqCst) {
            return Err(KernelError::new(
                ErrorCode::Closed,
                "the listener is closed",
            ));
        }
        let established = {
            let mut queue = listener.queue.lock().unwrap_or_else(|p| p.into_inner());
            match queue.ready.pop_front() {
                Some(established) => established,
                None => {
                    queue.armed = true;
                    return Ok(0);
                }
            }
        };
        let (recv, send) = match link_rings(
            &listener.transport,
            recv_ring,
            send_ring,
            listener.max_packet,
        ) {
            Ok(rings) => rings,
            Err(error) => {
                // Keep the link for a correct accept.
                listener
                    .queue
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .ready
                    .push_front(established);
                return Err(error);
            }
        };
        let info = start_link(
            &listener.transport,
            established,
            recv,
            send,
            listener.max_packet,
            listener.tenants.clone(),
        )?;
        listener.accepted.fetch_add(1, Ordering::Relaxed);
        write_out(&info.encode_to_vec(), out)
    })
}

/// Writes the listener's `krepis.v1.ListenerStats` into `out`.
///
/// # Safety
/// `out` must point to `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_listener_stats(listener: u32, out: *mut u8, cap: u32) -> i32 {
    call("krepis_listener_stats", || {
        let listener = LISTENERS.get(listener)?;
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { out_bytes(out, cap, "out")? };
        let stats = ListenerStats {
            accepted: listener.accepted.load(Ordering::Relaxed),
            refused: listener.refused.load(Ordering::Relaxed),
            last_refusal: listener
                .last_refusal
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        };
        write_out(&stats.encode_to_vec(), out)
    })
}

/// Stops listening: links not yet accepted are closed ("going away");
/// accepted links stay open.
#[no_mangle]
pub extern "C" fn krepis_listener_close(listener: u32) -> i32 {
    call("krepis_listener_close", || {
        LISTENERS.remove(listener)?.close();
        Ok(0)
    })
}

/// Starts connecting (`krepis.v1.ConnectRequest`) with the given rings.
/// Returns an operation id; an `EVENT_CONNECT` with that id is posted when
/// it finished, and `krepis_transport_connect_result` returns the outcome.
///
/// # Safety
/// `request` must point to `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_transport_connect(
    transport: u32,
    request: *const u8,
    len: u32,
    recv_ring: u32,
    send_ring: u32,
) -> i32 {
    call("krepis_transport_connect", || {
        let transport = TRANSPORTS.get(transport)?;
        // SAFETY: forwarded from this function's contract.
        let request = unsafe { in_bytes(request, len, "request")? };
        let request = ConnectRequest::decode(request).map_err(|error| {
            KernelError::invalid_argument(format!("bad ConnectRequest: {error}"))
        })?;
        let max_packet = check_max_packet(request.max_packet_bytes)?;
        let port = check_port(request.port)?;
        let config = tls::client_config(&request.ca_pems)?;
        let hostname = request.hostname;
        let server_name = if request.server_name.is_empty() {
            hostname.clone()
        } else {
            request.server_name
        };
        let (recv, send) = link_rings(&transport, recv_ring, send_ring, max_packet)?;
        let operation = transport.next_connect.fetch_add(1, Ordering::Relaxed) & 0x7fff_ffff;
        let operation = operation.max(1);
        let task_transport = Arc::clone(&transport);
        transport.runtime.spawn(async move {
            let outcome = async {
                // Name resolution may block on DNS: here, not on the JS thread.
                let address = tokio::net::lookup_host((hostname.as_str(), port))
                    .await
                    .ok()
                    .and_then(|mut addresses| addresses.next())
                    .ok_or_else(|| {
                        KernelError::new(
                            ErrorCode::Connection,
                            format!("cannot resolve {hostname:?}"),
                        )
                        .with_detail("field", "hostname")
                    })?;
                let endpoint = task_transport.client_endpoint(address.is_ipv6())?;
                let connecting = endpoint
                    .connect_with(config, address, &server_name)
                    .map_err(|error| {
                        KernelError::invalid_argument(format!(
                            "cannot connect to {address}: {error}"
                        ))
                    })?;
                let conn = connecting.await.map_err(|error| {
                    let mut error = connection_error(&error);
                    error.message =
                        format!("connecting to {address} ({server_name}): {}", error.message);
                    error
                })?;
                let established =
                    tokio::time::timeout(HELLO_TIMEOUT, client_hello(conn, max_packet))
                        .await
                        .map_err(|_| {
                            KernelError::new(
                                ErrorCode::Connection,
                                "the server sent no hello within 10 s",
                            )
                        })??;
                start_link(
                    &task_transport,
                    established,
                    Arc::clone(&recv),
                    Arc::clone(&send),
                    max_packet,
                    None,
                )
            }
            .await;
            if outcome.is_err() {
                recv.close();
                send.close();
            }
            task_transport.finish_connect(operation, outcome);
        });
        Ok(operation as i32)
    })
}

/// The outcome of a finished connect: writes its `krepis.v1.LinkInfo`, or
/// fails with the connect's error. Each outcome is returned once.
///
/// # Safety
/// `out` must point to `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_transport_connect_result(
    transport: u32,
    operation: u32,
    out: *mut u8,
    cap: u32,
) -> i32 {
    call("krepis_transport_connect_result", || {
        let transport = TRANSPORTS.get(transport)?;
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { out_bytes(out, cap, "out")? };
        let mut connects = transport.connects.lock().unwrap_or_else(|p| p.into_inner());
        let encoded = match connects.get(&operation) {
            None => {
                return Err(KernelError::invalid_argument(format!(
                    "no finished connect with id {operation}"
                )))
            }
            Some(Ok(info)) => info.encode_to_vec(),
            Some(Err(error)) => {
                let error = error.clone();
                connects.remove(&operation);
                return Err(error);
            }
        };
        // A caller with a short buffer learns the length and asks again: the
        // outcome is removed only once it was delivered.
        if encoded.len() <= out.len() {
            connects.remove(&operation);
        }
        write_out(&encoded, out)
    })
}

/// Starts closing a link gracefully with a KNUL close code and UTF-8 reason:
/// everything already published to its send ring is delivered first. An
/// `EVENT_LINK_CLOSED` follows when it has closed.
///
/// # Safety
/// `reason` must point to `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_link_close(
    link: u32,
    code: u32,
    reason: *const u8,
    len: u32,
) -> i32 {
    call("krepis_link_close", || {
        let link = LINKS.get(link)?;
        // SAFETY: forwarded from this function's contract.
        let reason = unsafe { in_bytes(reason, len, "reason")? };
        let reason = String::from_utf8_lossy(reason).into_owned();
        let runtime = kernel_runtime(link.kernel_id)?;
        link.close(code, reason, &runtime);
        Ok(0)
    })
}

fn kernel_runtime(kernel_id: u64) -> KernelResult<tokio::runtime::Handle> {
    crate::kernel::kernel_by_id(kernel_id)?.runtime_handle()
}

/// Writes the link's `krepis.v1.LinkStatus` (open/closed, close code and
/// reason, error, statistics) into `out`.
///
/// # Safety
/// `out` must point to `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_link_status(link: u32, out: *mut u8, cap: u32) -> i32 {
    call("krepis_link_status", || {
        let link = LINKS.get(link)?;
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { out_bytes(out, cap, "out")? };
        write_out(&link.status().encode_to_vec(), out)
    })
}

/// Forgets a link JS is done with (closing it at once if still open).
#[no_mangle]
pub extern "C" fn krepis_link_free(link: u32) -> i32 {
    call("krepis_link_free", || {
        LINKS
            .remove(link)?
            .abort(CLOSE_GOING_AWAY, "the link was released");
        Ok(0)
    })
}

/// Creates a self-signed development certificate
/// (`krepis.v1.DevCertificateRequest` → `krepis.v1.DevCertificate`).
///
/// # Safety
/// `request` must point to `len` readable bytes; `out` to `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_transport_dev_certificate(
    request: *const u8,
    len: u32,
    out: *mut u8,
    cap: u32,
) -> i32 {
    call("krepis_transport_dev_certificate", || {
        // SAFETY: forwarded from this function's contract.
        let request = unsafe { in_bytes(request, len, "request")? };
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { out_bytes(out, cap, "out")? };
        let request = DevCertificateRequest::decode(request).map_err(|error| {
            KernelError::invalid_argument(format!("bad DevCertificateRequest: {error}"))
        })?;
        write_out(&tls::dev_certificate(&request.names)?.encode_to_vec(), out)
    })
}
