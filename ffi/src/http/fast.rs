//! The HTTP/1 fast path of the connection driver: recognizing, from the raw
//! bytes of a request head, a request a static route answers or a bodyless
//! request for a proxy route (`relay`), so it is served without Pingora's
//! per-request pipeline. Anything unusual (a
//! body, `Expect`, `Upgrade`, HTTP/1.0, a malformed or oversized head) is
//! left to Pingora, which knows every corner of the protocol.

use super::engine::{Engine, StaticResponse};
use super::headers::is_hop_by_hop;
use super::js_http1::JsRequestHead;
use super::relay::ProxyRequest;
use super::routes::{host_without_port, Action};

/// Most headers the fast path parses; a request with more goes to Pingora.
const MAX_HEADERS: usize = 48;

pub enum Parsed<'a> {
    /// A complete head, answered by `response`; the head is `length` bytes.
    Static {
        response: &'a StaticResponse,
        /// A `HEAD` request: the head of the response only.
        head: bool,
        /// The client asked to close the connection.
        close: bool,
        length: usize,
    },
    /// A complete bodyless head for proxy route `pool`; `length` bytes.
    Proxy {
        pool: usize,
        request: ProxyRequest,
        length: usize,
    },
    /// A complete bodyless head for the JS handler; `length` bytes.
    Js {
        request: JsRequestHead,
        length: usize,
    },
    /// More bytes are needed.
    Partial,
    /// Pingora's job.
    Other,
}

pub fn parse<'a>(bytes: &[u8], engine: &'a Engine, peer: std::net::SocketAddr) -> Parsed<'a> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let length = match request.parse(bytes) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    if length > engine.limits.max_header_bytes || request.version != Some(1) {
        return Parsed::Other;
    }
    let (Some(method), Some(target)) = (request.method, request.path) else {
        return Parsed::Other;
    };
    if method == "CONNECT" {
        return Parsed::Other;
    }
    let head = method == "HEAD";
    let mut host = None;
    let mut close = false;
    for header in request.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("host") {
            // Two Host headers, or userinfo in one: Pingora answers 400.
            if host.is_some() || header.value.contains(&b'@') {
                return Parsed::Other;
            }
            host = std::str::from_utf8(header.value).ok();
        } else if name.eq_ignore_ascii_case("connection") {
            close = header
                .value
                .split(|&b| b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"));
        } else if name.eq_ignore_ascii_case("content-length") {
            if header.value != b"0" {
                return Parsed::Other;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
        {
            return Parsed::Other;
        }
    }
    // HTTP/1.1 requires Host; without one Pingora answers 400.
    let Some(host) = host else {
        return Parsed::Other;
    };
    if !target.starts_with('/') {
        return Parsed::Other;
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    match engine.routes.route(method, host_without_port(host), path) {
        Action::Respond(index) if matches!(method, "GET" | "HEAD") => Parsed::Static {
            response: &engine.responses[index],
            head,
            close,
            length,
        },
        Action::Proxy(pool) => Parsed::Proxy {
            pool,
            request: ProxyRequest {
                head: upstream_head(method, target, request.headers),
                head_only: head,
                close,
                idempotent: matches!(
                    method,
                    "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
                ),
            },
            length,
        },
        Action::Js if engine.bridge.is_some() => Parsed::Js {
            request: JsRequestHead {
                text: engine.js_request_head(
                    method,
                    target,
                    host,
                    Some(peer),
                    &request
                        .headers
                        .iter()
                        .map(|header| (header.name, header.value))
                        .collect::<Vec<_>>(),
                ),
                head_only: head,
                close,
            },
            length,
        },
        _ => Parsed::Other,
    }
}

/// The request head as the upstream gets it: the client's, minus the
/// hop-by-hop headers (the upstream connection is ours, kept alive).
fn upstream_head(method: &str, target: &str, headers: &[httparse::Header<'_>]) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(method.as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for header in headers {
        if is_hop_by_hop(header.name.as_bytes()) {
            continue;
        }
        head.extend_from_slice(header.name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(header.value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}
