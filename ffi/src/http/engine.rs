//! The Pingora application: for each request, the limits, the route, then a
//! native answer (static response, 404), a proxied one (upstream pools with
//! retries and connection reuse), or one from JS through the bridge.

use super::bridge::{response_header_lines, Bridge, FromJs, JsRequest};
use super::chunked::ChunkError;
use super::protocol::{
    HTTP_ABORT_CLIENT_GONE, HTTP_ABORT_TIMEOUT, HTTP_ABORT_TOO_LARGE, HTTP_BODY_WINDOW,
    HTTP_FLAG_HAS_BODY, HTTP_FLAG_HTTP2,
};
use super::routes::{host_without_port, Action, RouteTable};
use super::target;
use super::upstream::{client_key, Pool};
use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A prepared static response.
pub struct StaticResponse {
    pub header: ResponseHeader,
    pub body: Bytes,
    /// The whole HTTP/1.1 response, for keep-alive and for closing
    /// connections (the fast path writes these bytes as they are).
    pub wire_keep_alive: Bytes,
    pub wire_close: Bytes,
    /// Length of the status line (the `date` line goes after it).
    status_line: usize,
}

impl StaticResponse {
    pub fn new(header: ResponseHeader, body: Bytes) -> StaticResponse {
        let serialize = |close: bool| {
            let mut wire = Vec::with_capacity(128 + body.len());
            let status = header.status;
            wire.extend_from_slice(b"HTTP/1.1 ");
            wire.extend_from_slice(status.as_str().as_bytes());
            wire.push(b' ');
            wire.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
            wire.extend_from_slice(b"\r\n");
            for (name, value) in header.headers.iter() {
                // Sent per response (the server's clock).
                if name == http::header::DATE {
                    continue;
                }
                wire.extend_from_slice(name.as_str().as_bytes());
                wire.extend_from_slice(b": ");
                wire.extend_from_slice(value.as_bytes());
                wire.extend_from_slice(b"\r\n");
            }
            if close {
                wire.extend_from_slice(b"connection: close\r\n");
            }
            wire.extend_from_slice(b"\r\n");
            wire.extend_from_slice(&body);
            Bytes::from(wire)
        };
        let status = header.status;
        StaticResponse {
            status_line: 15 + status.canonical_reason().unwrap_or("").len(),
            wire_keep_alive: serialize(false),
            wire_close: serialize(true),
            header,
            body,
        }
    }

    /// The bytes to send, with `connection: close` or not, head only or
    /// not: the status line, then (after the current `date` line, which the
    /// caller writes) the rest.
    pub fn wire(&self, close: bool, head_only: bool) -> (&[u8], &[u8]) {
        let wire = if close {
            &self.wire_close
        } else {
            &self.wire_keep_alive
        };
        let wire = if head_only {
            &wire[..wire.len() - self.body.len()]
        } else {
            wire
        };
        wire.split_at(self.status_line)
    }
}

pub struct Limits {
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
}

#[derive(Default)]
pub struct Counters {
    pub connections: AtomicU64,
    pub connections_accepted: AtomicU64,
    pub requests_native: AtomicU64,
    pub requests_proxied: AtomicU64,
    pub requests_js: AtomicU64,
    pub refused: AtomicU64,
}

/// Everything a request needs, shared by the connections of one server.
pub struct Engine {
    pub routes: RouteTable,
    pub responses: Vec<StaticResponse>,
    pub pools: Vec<Arc<Pool>>,
    pub bridge: Option<Arc<Bridge>>,
    pub limits: Limits,
    pub tenant_header: String,
    pub counters: Counters,
    /// Request ids are `{nonce}-{sequence}` (unique across servers and runs).
    pub id_nonce: u32,
    pub id_sequence: AtomicU64,
}

tokio::task_local! {
    /// Set by the HTTP/1 connection driver: the request head arrived (the
    /// header deadline stops).
    pub static HEAD_ARRIVED: Arc<std::sync::atomic::AtomicBool>;
}

pub struct RequestCtx {
    action: Action,
    /// Upstreams this request tried (proxy routes), the current one last.
    tried: Vec<usize>,
    /// Whether `tried.last()` counts in its upstream's in-flight number.
    counted: bool,
    /// Request body bytes proxied so far.
    body_bytes: u64,
}

impl Engine {
    fn pool(&self, ctx: &RequestCtx) -> Option<&Arc<Pool>> {
        match ctx.action {
            Action::Proxy(index) => self.pools.get(index),
            _ => None,
        }
    }

    fn release_upstream(&self, ctx: &mut RequestCtx) {
        if ctx.counted {
            ctx.counted = false;
            if let (Some(pool), Some(&index)) = (self.pool(ctx), ctx.tried.last()) {
                pool.upstreams[index]
                    .in_flight
                    .fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    async fn refuse(&self, session: &mut Session, status: u16) -> Result<bool> {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        // The rest of the request is not read: the connection cannot be reused.
        session.set_keepalive(None);
        session.respond_error(status).await?;
        Ok(true)
    }

    /// Request line + header names and values, as counted by `maxHeaderBytes`.
    fn head_bytes(session: &Session) -> usize {
        let request = session.req_header();
        let line = request.method.as_str().len()
            + request.uri.path_and_query().map_or(1, |p| p.as_str().len())
            + 10;
        request.headers.iter().fold(line, |sum, (name, value)| {
            sum + name.as_str().len() + value.len() + 4
        })
    }

    fn request_head(&self, session: &Session) -> Vec<u8> {
        let request = session.req_header();
        self.js_request_head(
            request.method.as_str(),
            request.uri.path_and_query().map_or("/", |p| p.as_str()),
            authority(session),
            session.client_addr().and_then(|a| a.as_inet()).copied(),
            &request
                .headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_bytes()))
                .collect::<Vec<_>>(),
        )
    }

    /// The REQUEST record's text (docs/http.md): request line, host, client
    /// address, request id, tenant, trace id, then every header.
    pub fn js_request_head(
        &self,
        method: &str,
        target: &str,
        authority: &str,
        remote: Option<std::net::SocketAddr>,
        headers: &[(&str, &[u8])],
    ) -> Vec<u8> {
        // One pass over the headers for the three the context comes from.
        let (mut request_id, mut tenant, mut traceparent) = (None, None, None);
        for (name, value) in headers {
            let text = || std::str::from_utf8(value).ok();
            if name.eq_ignore_ascii_case("x-request-id") {
                request_id = request_id.or_else(text);
            } else if name.eq_ignore_ascii_case(&self.tenant_header) {
                tenant = tenant.or_else(text);
            } else if name.eq_ignore_ascii_case("traceparent") {
                traceparent = traceparent.or_else(text);
            }
        }
        let capacity = headers.iter().fold(
            method.len() + target.len() + authority.len() + 128,
            |sum, (name, value)| sum + name.len() + value.len() + 4,
        );
        let mut head = Vec::with_capacity(capacity);
        head.extend_from_slice(method.as_bytes());
        head.push(b' ');
        head.extend_from_slice(target.as_bytes());
        head.extend_from_slice(b"\r\n");
        head.extend_from_slice(authority.as_bytes());
        head.extend_from_slice(b"\r\n");
        match remote {
            Some(address) => {
                // Into the head directly: no String per request.
                let _ = std::io::Write::write_fmt(&mut head, format_args!("{}", address.ip()));
                head.push(b' ');
                head.extend_from_slice(itoa::Buffer::new().format(address.port()).as_bytes());
            }
            None => head.extend_from_slice(b"0.0.0.0 0"),
        }
        head.extend_from_slice(b"\r\n");
        match request_id.filter(|id| !id.is_empty() && id.len() <= 256) {
            Some(id) => head.extend_from_slice(id.as_bytes()),
            None => {
                let sequence = self.id_sequence.fetch_add(1, Ordering::Relaxed);
                push_hex(&mut head, u64::from(self.id_nonce), 8);
                head.push(b'-');
                push_hex(&mut head, sequence, 1);
            }
        }
        head.extend_from_slice(b"\r\n");
        if let Some(tenant) = tenant.filter(|t| t.len() <= 256) {
            head.extend_from_slice(tenant.as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        if let Some(trace) = traceparent.and_then(trace_id) {
            head.extend_from_slice(trace.as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        for (name, value) in headers {
            head.extend_from_slice(name.as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value);
            head.extend_from_slice(b"\r\n");
        }
        head
    }

    /// Answers a request from JS: hands it over, streams the request body
    /// (never more than one window ahead of what JS consumed), writes what
    /// JS sends, and tells JS when the client goes away.
    async fn serve_js(&self, bridge: &Arc<Bridge>, session: &mut Session) -> Result<bool> {
        self.counters.requests_js.fetch_add(1, Ordering::Relaxed);
        let has_body = !session.is_body_empty();
        let http2 = session.is_http2();
        let head_request = session.req_header().method == http::Method::HEAD;
        let flags =
            if has_body { HTTP_FLAG_HAS_BODY } else { 0 } | if http2 { HTTP_FLAG_HTTP2 } else { 0 };
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
        let Some(mut request) = bridge.open(flags, self.request_head(session), &sender) else {
            return self.refuse(session, 503).await;
        };
        let mut body = RequestBody {
            read_all: !has_body,
            end_sent: !has_body,
            pending: Bytes::new(),
            window: u64::from(HTTP_BODY_WINDOW),
            bytes: 0,
        };
        let mut header_sent = false;
        if has_body && expects_continue(session) && !http2 {
            // The client waits for this before it sends the body.
            session.write_continue_response().await?;
        }
        loop {
            // Body bytes already read go to JS as far as its window allows.
            body.deliver(&request);
            let wants_body = !body.read_all && body.pending.is_empty() && body.window > 0;
            let event = if wants_body {
                // JS's records first (a response may go out while the body
                // still comes: duplex streaming, or an early answer).
                tokio::select! {
                    biased;
                    message = request.next(&mut receiver) => Event::Js(message),
                    chunk = session.read_request_body() => Event::Body(chunk),
                }
            } else if body.read_all {
                // Nothing left to read: watch the client while JS works.
                tokio::select! {
                    biased;
                    message = request.next(&mut receiver) => Event::Js(message),
                    gone = session.read_body_or_idle(true) => Event::ClientGone(gone.err()),
                }
            } else {
                Event::Js(request.next(&mut receiver).await)
            };
            let message = match event {
                Event::Body(Ok(Some(chunk))) => {
                    body.bytes += chunk.len() as u64;
                    if body.bytes > self.limits.max_body_bytes {
                        request.set_abort_reason(HTTP_ABORT_TOO_LARGE);
                        if header_sent {
                            return Error::e_explain(
                                ErrorType::ReadError,
                                "request body over maxBodyBytes",
                            );
                        }
                        return self.refuse(session, 413).await;
                    }
                    body.pending = chunk;
                    continue;
                }
                Event::Body(Ok(None)) => {
                    body.read_all = true;
                    continue;
                }
                Event::Body(Err(error)) => {
                    request.set_abort_reason(abort_reason(&error));
                    // A malformed body is the client's error (400, not 500).
                    if let (false, Some(status)) = (header_sent, client_error_status(&error)) {
                        return self.refuse(session, status).await;
                    }
                    return Err(error);
                }
                Event::ClientGone(error) => {
                    request.set_abort_reason(HTTP_ABORT_CLIENT_GONE);
                    return Err(error.unwrap_or_else(|| {
                        Error::explain(ErrorType::ConnectionClosed, "the client went away")
                    }));
                }
                Event::Js(Some(message)) => message,
                // The bridge stopped (the server is shutting down).
                Event::Js(None) if header_sent => {
                    return Error::e_explain(ErrorType::InternalError, "the server stopped")
                }
                Event::Js(None) => return self.refuse(session, 503).await,
            };
            match message {
                FromJs::Credit(bytes) => body.window += u64::from(bytes),
                FromJs::Response {
                    status,
                    end,
                    headers,
                } => {
                    let chunked = !http2 && !end && !head_request;
                    let (header, close) = response_header(status, &headers, chunked);
                    if close && !http2 {
                        // The handler's `connection: close`.
                        session.set_keepalive(None);
                    }
                    if let Err(error) = session.write_response_header(header, end).await {
                        request.set_abort_reason(abort_reason(&error));
                        return Err(error);
                    }
                    header_sent = true;
                    if end {
                        return finish(request);
                    }
                }
                FromJs::Body { end, data } => {
                    let length = data.len() as u32;
                    if let Err(error) = session.write_response_body(Some(data), end).await {
                        request.set_abort_reason(abort_reason(&error));
                        return Err(error);
                    }
                    if end {
                        return finish(request);
                    }
                    request.credit(length);
                }
                FromJs::Abort => {
                    request.finish();
                    return Error::e_explain(
                        ErrorType::InternalError,
                        "the JS response body failed",
                    );
                }
            }
        }
    }
}

/// What `serve_js` waits for.
enum Event {
    Js(Option<FromJs>),
    Body(Result<Option<Bytes>>),
    ClientGone(Option<Box<Error>>),
}

/// The request body of a JS request, on its way to JS.
struct RequestBody {
    /// The client sent it all.
    read_all: bool,
    /// JS got the last chunk.
    end_sent: bool,
    /// Read from the client, not yet sent to JS (beyond its window).
    pending: Bytes,
    /// Bytes JS may still receive before it credits more.
    window: u64,
    /// Read so far (for maxBodyBytes).
    bytes: u64,
}

impl RequestBody {
    fn deliver(&mut self, request: &JsRequest) {
        if !self.pending.is_empty() && self.window > 0 {
            let take = self.pending.len().min(self.window as usize);
            let chunk = self.pending.split_to(take);
            self.window -= take as u64;
            let last = self.read_all && self.pending.is_empty();
            request.send_body(chunk, last);
            self.end_sent |= last;
        }
        if self.read_all && self.pending.is_empty() && !self.end_sent {
            request.send_body(Bytes::new(), true);
            self.end_sent = true;
        }
    }
}

fn finish(request: JsRequest) -> Result<bool> {
    request.finish();
    Ok(true)
}

fn abort_reason(error: &Error) -> u32 {
    match error.etype() {
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => HTTP_ABORT_TIMEOUT,
        _ => HTTP_ABORT_CLIENT_GONE,
    }
}

/// A response head from JS's `name: value\r\n` lines. JS built them from a
/// `Headers` object, so they are valid; a line that is not is skipped. An
/// HTTP/1.1 response with a body and no length is sent chunked (so its end,
/// or its abort, is visible to the client and the connection stays usable).
fn response_header(status: u16, lines: &[u8], chunked: bool) -> (Box<ResponseHeader>, bool) {
    let status = if (100..=999).contains(&status) {
        status
    } else {
        500
    };
    let mut header = ResponseHeader::build(status, Some(8))
        .unwrap_or_else(|_| ResponseHeader::build(500, None).expect("500 is a valid status"));
    let close = std::cell::Cell::new(false);
    for (name, value, _) in response_header_lines(lines, &close) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) {
            let _ = header.append_header(name, value);
        }
    }
    let bodyless = status < 200 || status == 204 || status == 304;
    if chunked
        && !bodyless
        && header.headers.get(http::header::CONTENT_LENGTH).is_none()
        && header
            .headers
            .get(http::header::TRANSFER_ENCODING)
            .is_none()
    {
        let _ = header.insert_header(http::header::TRANSFER_ENCODING, "chunked");
    }
    (Box::new(header), close.get())
}

/// Whether the client waits for `100 Continue` before it sends its body.
fn expects_continue(session: &Session) -> bool {
    session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// The status a failure reading the request deserves when it is the
/// client's fault: a chunked body the connection driver found broken (400)
/// or too large (413, `chunked::ChunkError`), or one Pingora's parser
/// refused (400). `None`: not a client error (timeouts, resets, ours).
fn client_error_status(error: &Error) -> Option<u16> {
    let chunk = error
        .root_cause()
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .and_then(|inner| inner.downcast_ref::<ChunkError>());
    if let Some(chunk) = chunk {
        return Some(chunk.status());
    }
    let protocol = |etype: &ErrorType| match etype {
        ErrorType::InvalidHTTPHeader => true,
        ErrorType::Custom(name) => matches!(*name, "InvalidChunk" | "InvalidTrailerEnd"),
        _ => false,
    };
    (protocol(error.etype()) || protocol(error.root_etype())).then_some(400)
}

/// Normalizes the request's target in place before routing
/// (`target::normalize`; HTTP/1 heads were checked by `fast::check`
/// already, HTTP/2 ones were not). The reason when it cannot be.
fn normalize_target(session: &mut Session) -> std::result::Result<(), &'static str> {
    let request = session.req_header();
    if request.method == http::Method::CONNECT || request.raw_path() == b"*" {
        return Ok(());
    }
    let Ok(raw) = std::str::from_utf8(request.raw_path()) else {
        return Err("invalid character in the request target");
    };
    // Absolute-form (`http://host/path`): its path and query.
    let target = if raw.starts_with('/') {
        raw
    } else {
        request.uri.path_and_query().map_or("/", |p| p.as_str())
    };
    if let Cow::Owned(normalized) = target::normalize(target)? {
        let mut parts = request.uri.clone().into_parts();
        parts.path_and_query = Some(normalized.parse().map_err(|_| "invalid request target")?);
        let uri = http::Uri::from_parts(parts).map_err(|_| "invalid request target")?;
        session.req_header_mut().set_uri(uri);
    }
    Ok(())
}

fn authority(session: &Session) -> &str {
    let request = session.req_header();
    request
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| header_str(session, "host"))
        .unwrap_or("localhost")
}

fn header_str<'a>(session: &'a Session, name: &str) -> Option<&'a str> {
    session.req_header().headers.get(name)?.to_str().ok()
}

/// The trace-id field of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
/// Appends `value` in lower-case hex, zero-padded to at least `digits` digits.
fn push_hex(out: &mut Vec<u8>, value: u64, digits: usize) {
    let used = (64 - value.leading_zeros() as usize)
        .div_ceil(4)
        .max(digits)
        .max(1);
    for shift in (0..used).rev() {
        out.push(b"0123456789abcdef"[((value >> (shift * 4)) & 0xf) as usize]);
    }
}

fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (_version, trace) = (parts.next()?, parts.next()?);
    (trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit())).then_some(trace)
}

/// The engine as Pingora's application (which Pingora keeps private, so
/// the server holds the same `Arc` for its statistics).
pub struct Shared(pub Arc<Engine>);

impl std::ops::Deref for Shared {
    type Target = Engine;

    fn deref(&self) -> &Engine {
        &self.0
    }
}

#[async_trait]
impl ProxyHttp for Shared {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            action: Action::NotFound,
            tried: Vec::new(),
            counted: false,
            body_bytes: 0,
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        let _ = HEAD_ARRIVED.try_with(|arrived| arrived.store(true, Ordering::Relaxed));
        // Slow clients: each wait for body bytes from the client, or for it
        // to take response bytes, is bounded.
        session.set_read_timeout(Some(self.limits.body_timeout));
        session.set_write_timeout(Some(self.limits.body_timeout));
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if Engine::head_bytes(session) > self.limits.max_header_bytes {
            return self.refuse(session, 431).await;
        }
        if let Err(reason) = normalize_target(session) {
            let _ = reason;
            return self.refuse(session, 400).await;
        }
        let declared = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|length| length > self.limits.max_body_bytes) {
            return self.refuse(session, 413).await;
        }
        let action = {
            let request = session.req_header();
            let path = request.uri.path();
            self.routes.route(
                request.method.as_str(),
                host_without_port(authority(session)),
                path,
            )
        };
        ctx.action = action;
        match action {
            Action::Respond(index) => {
                self.counters
                    .requests_native
                    .fetch_add(1, Ordering::Relaxed);
                let response = &self.responses[index];
                let head_only = session.req_header().method == http::Method::HEAD;
                let end = head_only || response.body.is_empty();
                session
                    .write_response_header(Box::new(response.header.clone()), end)
                    .await?;
                if !end {
                    session
                        .write_response_body(Some(response.body.clone()), true)
                        .await?;
                }
                Ok(true)
            }
            Action::NotFound => {
                self.counters
                    .requests_native
                    .fetch_add(1, Ordering::Relaxed);
                session.respond_error(404).await?;
                Ok(true)
            }
            Action::Proxy(_) => {
                self.counters
                    .requests_proxied
                    .fetch_add(1, Ordering::Relaxed);
                // `Expect: 100-continue` is answered here, before the body
                // is read (the upstream gets the request without it: it
                // would answer 100 again, or wait for the body before
                // answering).
                if !session.is_http2() && expects_continue(session) {
                    session
                        .req_header_mut()
                        .remove_header(&http::header::EXPECT);
                    if !session.is_body_empty() {
                        session.write_continue_response().await?;
                    }
                }
                Ok(false)
            }
            Action::Js => match &self.bridge {
                Some(bridge) => self.serve_js(bridge, session).await,
                None => self.refuse(session, 503).await,
            },
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Proxied bodies are counted as they pass (chunked ones have no
        // declared length to check up front).
        ctx.body_bytes += body.as_ref().map_or(0, |chunk| chunk.len() as u64);
        if ctx.body_bytes > self.limits.max_body_bytes {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            return Error::e_explain(ErrorType::HTTPStatus(413), "request body over maxBodyBytes");
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(pool) = self.pool(ctx).cloned() else {
            return Error::e_explain(ErrorType::InternalError, "not a proxy route");
        };
        self.release_upstream(ctx);
        let key = client_key(
            session
                .client_addr()
                .and_then(|address| address.as_inet())
                .map(|address| address.ip()),
        );
        let Some(index) = pool.select(key, &ctx.tried) else {
            return Error::e_explain(ErrorType::ConnectNoRoute, "every upstream was tried");
        };
        let upstream = &pool.upstreams[index];
        upstream.in_flight.fetch_add(1, Ordering::Relaxed);
        upstream.requests.fetch_add(1, Ordering::Relaxed);
        ctx.tried.push(index);
        ctx.counted = true;
        Ok(Box::new(pool.peer(index)))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut error: Box<Error>,
    ) -> Box<Error> {
        if let (Some(pool), Some(&index)) = (self.pool(ctx), ctx.tried.last()) {
            pool.mark_failed(index);
            let attempts = ctx.tried.len() as u32;
            // Each retry goes to an upstream not tried yet.
            error.set_retry(attempts <= pool.retries && (attempts as usize) < pool.upstreams.len());
        }
        error
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        error: &Error,
        _ctx: &mut RequestCtx,
    ) -> FailToProxy {
        // A response already under way cannot become an error page: the
        // connection (HTTP/1) or stream (HTTP/2) is cut instead.
        let code = if session.response_written().is_some() {
            0
        } else {
            match error.etype() {
                ErrorType::HTTPStatus(code) => *code,
                _ if client_error_status(error).is_some() => {
                    client_error_status(error).unwrap_or(400)
                }
                _ => match error.esource() {
                    pingora_error::ErrorSource::Upstream => 502,
                    pingora_error::ErrorSource::Downstream => match error.etype() {
                        ErrorType::WriteError
                        | ErrorType::ReadError
                        | ErrorType::ConnectionClosed => 0,
                        ErrorType::ReadTimedout | ErrorType::WriteTimedout => 0,
                        _ => 400,
                    },
                    _ => match error.etype() {
                        ErrorType::ConnectNoRoute
                        | ErrorType::ConnectTimedout
                        | ErrorType::ConnectRefused
                        | ErrorType::ConnectError => 502,
                        _ => 500,
                    },
                },
            }
        };
        if code > 0 {
            let _ = session.respond_error(code).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, _session: &mut Session, _error: Option<&Error>, ctx: &mut RequestCtx) {
        self.release_upstream(ctx);
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::{push_hex, trace_id};

    #[test]
    fn hex_is_padded_lower_case() {
        let mut out = Vec::new();
        push_hex(&mut out, 0xbeef, 8);
        out.push(b'-');
        push_hex(&mut out, 0, 1);
        out.push(b'-');
        push_hex(&mut out, u64::MAX, 1);
        assert_eq!(out, b"0000beef-0-ffffffffffffffff");
    }

    #[test]
    fn trace_ids_come_from_valid_traceparents_only() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(trace_id(&format!("00-{id}-00f067aa0ba902b7-01")), Some(id));
        assert_eq!(trace_id("00-xyz-00f067aa0ba902b7-01"), None);
        assert_eq!(trace_id("garbage"), None);
    }
}
