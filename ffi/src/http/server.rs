//! A running server: the listening socket and accept loop (ours, so port 0
//! and shutdown work), the per-connection driver (HTTP/1 with a header
//! deadline, HTTP/2 by prior knowledge), graceful shutdown, statistics.

use super::bridge::Bridge;
use super::chunked::ChunkedScanner;
use super::engine::{Counters, Engine, Limits, Shared, StaticResponse, HEAD_ARRIVED};
use super::headers::{date_line, error_response};
use super::routes::RouteTable;
use super::stream::GatheredStream;
use super::upstream::client_key;
use super::upstream::Pool;
use super::{fast, js_http1, relay};
use crate::error::{KernelError, KernelResult};
use crate::proto::{http_route, HttpServeRequest, HttpServerStats, HttpUpstreamStats};
use crate::ring::Ring;
use bytes::Bytes;
use pingora_core::apps::{HttpServerApp, HttpServerOptions, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{GetSocketDigest, SocketDigest};
use pingora_core::server::configuration::ServerConf;
use pingora_http::ResponseHeader;
use pingora_proxy::{http_proxy, HttpProxy};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

const DEFAULT_MAX_HEADER_BYTES: u32 = 32 * 1024;
/// Pingora's own parser refuses larger heads (with 400).
const MAX_HEADER_BYTES: u32 = 1024 * 1024 - 1;
const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
const DEFAULT_TIMEOUT_MS: u32 = 30_000;
const LISTEN_BACKLOG: i32 = 1024;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

type App = HttpProxy<Shared>;

pub struct HttpServer {
    pub kernel_id: u64,
    pub address: SocketAddr,
    engine: Arc<Engine>,
    runtime: tokio::runtime::Handle,
    shutdown: watch::Sender<bool>,
    /// The grace period, set once by `shutdown`.
    grace: watch::Sender<Option<Duration>>,
    finished: Arc<AtomicBool>,
    to_js: Arc<Ring>,
    to_kernel: Arc<Ring>,
    supervisor: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl HttpServer {
    /// Binds and starts serving.
    pub fn start(
        kernel_id: u64,
        runtime: tokio::runtime::Handle,
        request: HttpServeRequest,
        to_js: Arc<Ring>,
        to_kernel: Arc<Ring>,
    ) -> KernelResult<HttpServer> {
        let limits = limits(&request)?;
        let hostname = if request.hostname.is_empty() {
            "0.0.0.0"
        } else {
            &request.hostname
        };
        let port = u16::try_from(request.port).map_err(|_| {
            KernelError::invalid_argument(format!("port must be 0–65535, got {}", request.port))
                .with_detail("field", "port")
        })?;
        let address = (hostname, port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut addresses| addresses.next())
            .ok_or_else(|| {
                KernelError::invalid_argument(format!("cannot resolve hostname {hostname:?}"))
                    .with_detail("field", "hostname")
            })?;
        let routes = RouteTable::new(&request.routes, request.js_handler)?;
        let mut responses = Vec::new();
        let mut pools = Vec::new();
        for (index, route) in request.routes.iter().enumerate() {
            match &route.action {
                Some(http_route::Action::Respond(respond)) => {
                    responses.push(static_response(respond, index)?)
                }
                Some(http_route::Action::Proxy(proxy)) => {
                    pools.push(Arc::new(Pool::from_proto(proxy, index)?))
                }
                None => {}
            }
        }
        let needed = crate::ring::record_size(limits.max_header_bytes as u32 + 64 * 1024);
        if u64::from(to_js.capacity()) < needed || u64::from(to_kernel.capacity()) < needed {
            return Err(KernelError::invalid_argument(format!(
                "the bridge rings must hold at least {needed} bytes"
            )));
        }
        if to_js.direction() != crate::ring::Direction::ToJs
            || to_kernel.direction() != crate::ring::Direction::ToKernel
        {
            return Err(KernelError::invalid_argument(
                "a server needs a kernel → JS ring and a JS → kernel ring",
            ));
        }
        let listener = bind(address)?;
        let address = listener
            .local_addr()
            .map_err(|error| KernelError::io("reading the bound address", &error))?;
        let tenant_header = match request.tenant_header.to_ascii_lowercase() {
            header if header.is_empty() => "x-tenant-id".to_string(),
            header => header,
        };
        let _entered = runtime.enter();
        let (bridge, bridge_done) = Bridge::start(Arc::clone(&to_js), Arc::clone(&to_kernel));
        let engine = Engine {
            routes,
            responses,
            pools,
            bridge: request.js_handler.then(|| Arc::clone(&bridge)),
            limits,
            tenant_header,
            counters: Counters::default(),
            id_nonce: nonce(),
            id_sequence: Default::default(),
        };
        let engine = Arc::new(engine);
        let mut app = http_proxy(
            &Arc::new(ServerConf::default()),
            Shared(Arc::clone(&engine)),
        );
        let mut options = HttpServerOptions::default();
        options.h2c = !request.disable_h2c;
        // An HTTP/2 connection with no stream open is closed after the
        // header timeout, like an idle HTTP/1 keep-alive connection.
        options.h2_idle_timeout = Some(engine.limits.header_timeout);
        app.server_options = Some(options);
        let mut h2 = pingora_core::protocols::http::v2::server::default_h2_options();
        h2.max_header_list_size(
            (engine.limits.max_header_bytes as u32 * 2).clamp(64 * 1024, MAX_HEADER_BYTES),
        );
        app.h2_options = Some(h2);
        let app = Arc::new(app);
        let listener = TcpListener::from_std(listener)
            .map_err(|error| KernelError::io("registering the listener", &error))?;
        let (shutdown, shutdown_watch) = watch::channel(false);
        let (grace, grace_watch) = watch::channel(None);
        let finished = Arc::new(AtomicBool::new(false));
        for pool in &engine.pools {
            tokio::spawn(Arc::clone(pool).check_health(shutdown_watch.clone()));
        }
        let supervisor = tokio::spawn(run(
            listener,
            Running {
                app,
                engine: Arc::clone(&engine),
                bridge,
                bridge_done,
                shutdown: shutdown_watch,
                grace: grace_watch,
                finished: Arc::clone(&finished),
            },
        ));
        Ok(HttpServer {
            kernel_id,
            address,
            engine,
            runtime,
            shutdown,
            grace,
            finished,
            to_js,
            to_kernel,
            supervisor: Mutex::new(Some(supervisor)),
        })
    }

    /// Begins the graceful shutdown (idempotent: the first grace counts).
    pub fn shutdown(&self, grace: Duration) {
        self.grace.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(grace);
                true
            } else {
                false
            }
        });
        self.shutdown.send_replace(true);
    }

    /// Stops everything now (kernel close, or freeing a running server),
    /// cutting short a graceful shutdown under way.
    pub fn abort(&self) {
        self.shutdown.send_replace(true);
        self.grace.send_replace(Some(Duration::ZERO));
        let supervisor = self
            .supervisor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(supervisor) = supervisor {
            // Never block inside the runtime (a kernel task freeing a server).
            if tokio::runtime::Handle::try_current().is_err() {
                let _ = self.runtime.block_on(async {
                    tokio::time::timeout(Duration::from_secs(2), supervisor).await
                });
            }
        }
        self.to_js.close();
        self.to_kernel.close();
    }

    pub fn stats(&self) -> HttpServerStats {
        let engine = &self.engine;
        let counters = &engine.counters;
        let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        HttpServerStats {
            connections: load(&counters.connections),
            connections_accepted: load(&counters.connections_accepted),
            requests_native: load(&counters.requests_native),
            requests_proxied: load(&counters.requests_proxied),
            requests_js: load(&counters.requests_js),
            js_in_flight: engine.bridge.as_ref().map_or(0, |b| load(&b.in_flight)),
            refused: load(&counters.refused),
            upstreams: engine
                .pools
                .iter()
                .flat_map(|pool| {
                    pool.upstreams
                        .iter()
                        .enumerate()
                        .map(|(index, upstream)| HttpUpstreamStats {
                            address: upstream.label.clone(),
                            healthy: pool.is_healthy(index),
                            in_flight: load(&upstream.in_flight),
                            requests: load(&upstream.requests),
                        })
                })
                .collect(),
            shutting_down: *self.shutdown.borrow(),
        }
    }

    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::SeqCst)
    }
}

fn limits(request: &HttpServeRequest) -> KernelResult<Limits> {
    let proto = request.limits.unwrap_or_default();
    let max_header_bytes = match proto.max_header_bytes {
        0 => DEFAULT_MAX_HEADER_BYTES,
        bytes if bytes > MAX_HEADER_BYTES => {
            return Err(KernelError::invalid_argument(format!(
                "limits.maxHeaderBytes must be at most {MAX_HEADER_BYTES}, got {bytes}"
            ))
            .with_detail("field", "limits.maxHeaderBytes"))
        }
        bytes => bytes,
    };
    let timeout =
        |ms: u32| Duration::from_millis(u64::from(if ms == 0 { DEFAULT_TIMEOUT_MS } else { ms }));
    Ok(Limits {
        max_header_bytes: max_header_bytes as usize,
        max_body_bytes: match proto.max_body_bytes {
            0 => DEFAULT_MAX_BODY_BYTES,
            bytes => bytes,
        },
        header_timeout: timeout(proto.header_timeout_ms),
        body_timeout: timeout(proto.body_timeout_ms),
    })
}

fn static_response(
    respond: &crate::proto::HttpRespond,
    index: usize,
) -> KernelResult<StaticResponse> {
    let field = |name: &str| format!("routes[{index}].respond.{name}");
    if !(200..=599).contains(&respond.status) {
        return Err(KernelError::invalid_argument(format!(
            "{} must be 200–599, got {}",
            field("status"),
            respond.status
        ))
        .with_detail("field", field("status")));
    }
    let mut header = ResponseHeader::build(respond.status as u16, Some(respond.headers.len() + 1))
        .map_err(|error| KernelError::invalid_argument(error.to_string()))?;
    for pair in &respond.headers {
        let name = http::HeaderName::from_bytes(pair.name.as_bytes());
        let value = http::HeaderValue::from_str(&pair.value);
        if super::headers::is_hop_by_hop(pair.name.as_bytes()) {
            return Err(KernelError::invalid_argument(format!(
                "{}: {:?} is a connection-level header, which the server sets itself",
                field("headers"),
                pair.name
            ))
            .with_detail("field", field("headers")));
        }
        match (name, value) {
            (Ok(name), Ok(value)) if name != http::header::CONTENT_LENGTH => {
                let _ = header.append_header(name, value);
            }
            (Ok(name), Ok(_)) if name == http::header::CONTENT_LENGTH => {}
            _ => {
                return Err(KernelError::invalid_argument(format!(
                    "{}: {:?} is not a valid header",
                    field("headers"),
                    pair.name
                ))
                .with_detail("field", field("headers")))
            }
        }
    }
    header
        .insert_header(http::header::CONTENT_LENGTH, respond.body.len())
        .map_err(|error| KernelError::invalid_argument(error.to_string()))?;
    Ok(StaticResponse::new(
        header,
        Bytes::from(respond.body.clone()),
    ))
}

fn bind(address: SocketAddr) -> KernelResult<std::net::TcpListener> {
    let io = |error: std::io::Error| {
        KernelError::io(&format!("listening on {address}"), &error)
            .with_detail("address", address.to_string())
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(io)?;
    socket.set_reuse_address(true).map_err(io)?;
    socket.bind(&address.into()).map_err(io)?;
    socket.listen(LISTEN_BACKLOG).map_err(io)?;
    socket.set_nonblocking(true).map_err(io)?;
    Ok(socket.into())
}

fn nonce() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish() as u32
}

/// What the supervisor task owns.
struct Running {
    app: Arc<App>,
    engine: Arc<Engine>,
    bridge: Arc<Bridge>,
    /// Finishes when the bridge stopped and closed the kernel → JS ring.
    bridge_done: tokio::task::JoinHandle<()>,
    shutdown: watch::Receiver<bool>,
    grace: watch::Receiver<Option<Duration>>,
    finished: Arc<AtomicBool>,
}

/// The server's life: accept until shutdown, then let connections finish
/// within the grace period, abort the rest, stop the bridge (JS learns the
/// server finished when its ring closes).
async fn run(listener: TcpListener, running: Running) {
    let Running {
        app,
        engine,
        bridge,
        bridge_done,
        mut shutdown,
        mut grace,
        finished,
    } = running;
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    engine.counters.connections_accepted.fetch_add(1, Ordering::Relaxed);
                    connections.spawn(serve_connection(
                        stream,
                        peer,
                        Arc::clone(&app),
                        Arc::clone(&engine),
                        shutdown.clone(),
                    ));
                }
                // Out of file descriptors and the like: back off, keep serving.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
        }
    }
    drop(listener);
    // Wakes HTTP/1 connections idle between requests (they close).
    app.cleanup().await;
    // Connections get the grace period; a later, shorter one (kernel close
    // during a graceful shutdown) cuts it short.
    let started = tokio::time::Instant::now();
    let mut grace_now = grace
        .wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|grace| *grace)
        .unwrap_or_default();
    let mut grace_open = true;
    loop {
        tokio::select! {
            next = connections.join_next() => if next.is_none() { break },
            () = tokio::time::sleep_until(started + grace_now) => {
                connections.abort_all();
                while connections.join_next().await.is_some() {}
                break;
            }
            changed = grace.changed(), if grace_open => {
                match changed {
                    Ok(()) => grace_now = grace_now.min(grace.borrow().unwrap_or_default()),
                    // The server is gone: stop now.
                    Err(_) => {
                        grace_open = false;
                        grace_now = Duration::ZERO;
                    }
                }
            }
        }
    }
    bridge.stop();
    let _ = bridge_done.await;
    finished.store(true, Ordering::SeqCst);
}

/// Counts a connection while it lives.
struct Open<'a>(&'a Counters);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    app: Arc<App>,
    engine: Arc<Engine>,
    shutdown: watch::Receiver<bool>,
) {
    engine.counters.connections.fetch_add(1, Ordering::Relaxed);
    let _open = Open(&engine.counters);
    let _ = tcp.set_nodelay(true);
    let h2c = app
        .server_options
        .as_ref()
        .is_some_and(|options| options.h2c);
    let digest = SocketDigest::from_raw_fd(tcp.as_raw_fd());
    let _ = digest.peer_addr.set(Some(peer.into()));
    let mut stream: L4Stream = tcp.into();
    stream.set_socket_digest(digest);
    serve_http1(
        GatheredStream::new(stream),
        peer,
        h2c,
        &app,
        &engine,
        shutdown,
    )
    .await;
}

/// The HTTP/1 keep-alive loop (and the h2c sniff of a connection's first
/// bytes). Each request head is read and parsed here first: a plain
/// `GET`/`HEAD` for a static route is answered at once with its
/// pre-serialized bytes, a bodyless request for a proxy route is relayed
/// (`relay`), a bodyless one for the JS handler is answered through
/// `js_http1` (Pingora's per-request pipeline would cost more than any of
/// them); anything else is handed to Pingora with the bytes already read.
async fn serve_http1(
    mut stream: GatheredStream,
    peer: SocketAddr,
    h2c: bool,
    app: &Arc<App>,
    engine: &Engine,
    mut shutdown: watch::Receiver<bool>,
) {
    let header_timeout = engine.limits.header_timeout;
    let mut buffer = Vec::with_capacity(4096);
    let mut js_channel: js_http1::JsChannel = None;
    // Until the first bytes tell HTTP/1 from an HTTP/2 preface.
    let mut first_bytes = h2c;
    let mut settings = None;
    loop {
        // Read until a head is complete (or is not one we answer here).
        let deadline = tokio::time::Instant::now() + header_timeout;
        let parsed = loop {
            if first_bytes && !buffer.is_empty() {
                // HTTP/2 with prior knowledge starts with its preface (read,
                // not peeked: a peek of a partial preface cannot wait).
                let seen = buffer.len().min(H2_PREFACE.len());
                if buffer[..seen] != H2_PREFACE[..seen] {
                    first_bytes = false;
                } else if seen == H2_PREFACE.len() {
                    // Pingora's h2 driver: streams, flow control, GOAWAY on
                    // shutdown; it reads the preface again.
                    let mut stream = stream.into_inner();
                    stream.rewind(&buffer);
                    app.process_new(Box::new(stream), &shutdown).await;
                    return;
                }
            }
            if !first_bytes && !buffer.is_empty() {
                match fast::parse(&buffer, engine, peer) {
                    fast::Parsed::Partial if buffer.len() <= engine.limits.max_header_bytes => {}
                    fast::Parsed::Partial => break fast::Parsed::Other { chunked_body: None },
                    parsed => break parsed,
                }
            }
            // No complete head: a stopping server does not wait for one.
            if *shutdown.borrow() {
                let _ = stream.flush().await;
                return;
            }
            tokio::select! {
                read = stream.read_buf(&mut buffer) => match read {
                    Ok(0) | Err(_) => {
                        let _ = stream.flush().await;
                        return;
                    }
                    Ok(_) => {}
                },
                () = tokio::time::sleep_until(deadline) => {
                    engine.counters.refused.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                changed = shutdown.changed(), if !*shutdown.borrow() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        };
        match parsed {
            fast::Parsed::Static {
                response,
                head,
                close,
                length,
            } => {
                engine
                    .counters
                    .requests_native
                    .fetch_add(1, Ordering::Relaxed);
                buffer.drain(..length);
                // Gathered: sent with the next read, or at once below.
                let (status_line, rest) = response.wire(close, head);
                let date = date_line();
                let write = async {
                    stream.write_all(status_line).await?;
                    stream.write_all(&date).await?;
                    stream.write_all(rest).await
                };
                if !matches!(
                    tokio::time::timeout(engine.limits.body_timeout, write).await,
                    Ok(Ok(()))
                ) {
                    return;
                }
                if close || *shutdown.borrow() {
                    let _ = stream.flush().await;
                    return;
                }
                continue;
            }
            fast::Parsed::Js { request, length } => {
                buffer.drain(..length);
                let Some(bridge) = &engine.bridge else { return };
                let next = js_http1::serve(
                    &mut stream,
                    &mut buffer,
                    &mut js_channel,
                    bridge,
                    request,
                    engine,
                )
                .await;
                if matches!(next, relay::Next::Close) || *shutdown.borrow() {
                    let _ = stream.flush().await;
                    return;
                }
                continue;
            }
            fast::Parsed::Proxy {
                pool,
                request,
                length,
            } => {
                buffer.drain(..length);
                let next = relay::relay(
                    &mut stream,
                    &engine.pools[pool],
                    client_key(Some(peer.ip())),
                    &request,
                    engine.limits.body_timeout,
                    &engine.counters,
                )
                .await;
                if matches!(next, relay::Next::Close) || *shutdown.borrow() {
                    let _ = stream.flush().await;
                    return;
                }
                continue;
            }
            fast::Parsed::Refused { status, reason } => {
                engine.counters.refused.fetch_add(1, Ordering::Relaxed);
                refuse(&mut stream, status, reason, engine.limits.body_timeout).await;
                return;
            }
            fast::Parsed::Other {
                chunked_body: Some(start),
            } => {
                // The body's chunk framing is checked as it passes, strictly
                // (Pingora's parser is lenient and cannot refuse a huge
                // chunk before its bytes arrive): what came with the head
                // now, the rest in `GatheredStream::poll_read`.
                let mut scanner = ChunkedScanner::strict(engine.limits.max_body_bytes);
                scanner.scan(&buffer[start.min(buffer.len())..]);
                if let Some(error) = scanner.error() {
                    engine.counters.refused.fetch_add(1, Ordering::Relaxed);
                    let reason = error.to_string();
                    refuse(
                        &mut stream,
                        error.status(),
                        &reason,
                        engine.limits.body_timeout,
                    )
                    .await;
                    return;
                }
                if !scanner.done() {
                    stream.check_chunked_body(buffer.len(), scanner);
                }
            }
            fast::Parsed::Partial | fast::Parsed::Other { .. } => {}
        }
        // Pingora takes this request, starting with the bytes read so far.
        stream.rewind(&buffer);
        buffer.clear();
        let mut session = ServerSession::new_http1(Box::new(stream));
        let keepalive = if *shutdown.borrow() {
            None
        } else {
            Some(header_timeout.as_secs().max(1))
        };
        session.set_keepalive(keepalive);
        if let Some(settings) = settings.take() {
            pingora_core::apps::HttpPersistentSettings::apply_to_session(settings, &mut session);
        }
        let arrived = Arc::new(AtomicBool::new(false));
        let request = HEAD_ARRIVED.scope(
            Arc::clone(&arrived),
            app.process_new_http(session, &shutdown),
        );
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let reused = tokio::select! {
            reused = request => reused,
            () = head_deadline(&arrived, remaining, shutdown.clone()) => {
                engine.counters.refused.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let Some(reused) = reused else { return };
        if *shutdown.borrow() {
            return;
        }
        let (reused_stream, reused_settings) = reused.consume();
        settings = reused_settings;
        match reused_stream.into_any().downcast::<GatheredStream>() {
            Ok(reused_stream) => stream = *reused_stream,
            Err(_) => return,
        }
    }
}

/// Answers a client error and closes (the rest of the request is not read).
async fn refuse(stream: &mut GatheredStream, status: u16, reason: &str, timeout: Duration) {
    let _ = tokio::time::timeout(timeout, async {
        stream.write_all(&error_response(status, reason)).await?;
        stream.flush().await?;
        stream.shutdown().await
    })
    .await;
    // A lingering close (as nginx): bytes the client is still sending are
    // read and dropped for a moment, so that closing with them unread does
    // not reset the connection before the client read the answer.
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        for _ in 0..256 {
            if matches!(stream.read(&mut sink).await, Ok(0) | Err(_)) {
                break;
            }
        }
    })
    .await;
}

/// Resolves when a connection waited too long for a request head (slow or
/// idle client), or the server is shutting down and no head has arrived;
/// never once the head arrived.
async fn head_deadline(
    arrived: &AtomicBool,
    timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => break,
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    // Give a head already on the wire a moment to be parsed.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    break;
                }
            }
        }
    }
    if arrived.load(Ordering::Relaxed) {
        std::future::pending::<()>().await;
    }
}
