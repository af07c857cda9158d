//! The HTTP/1 fast path of the connection driver: recognizing, from the raw
//! bytes of a request head, a request a static route answers or a bodyless
//! request for a proxy route (`relay`), so it is served without Pingora's
//! per-request pipeline. Anything unusual (a
//! body, `Expect`, `Upgrade`, HTTP/1.0, an oversized head) is left to
//! Pingora, which knows every corner of the protocol; a head that breaks the
//! rules (`check`) is refused here, whatever route it would take.

use super::engine::{Engine, StaticResponse};
use super::headers::{has_close, is_hop_by_hop};
use super::js_http1::JsRequestHead;
use super::relay::ProxyRequest;
use super::routes::{host_without_port, Action};
use super::target::normalize;

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
    /// Pingora's job. `chunked_body`: the head is valid and its chunked
    /// body starts at this offset (the connection driver checks its framing
    /// as it passes).
    Other { chunked_body: Option<usize> },
    /// A client error (the connection closes after the answer): `status`
    /// and why.
    Refused { status: u16, reason: &'static str },
}

/// Most headers Pingora parses (more: it answers 400 itself).
const PINGORA_MAX_HEADERS: usize = 256;

/// What the connection driver does with the bytes of a request head. Every
/// HTTP/1 request passes here first, so the strict rules are applied once
/// for every route kind (RFC 9112: one Host, no Content-Length next to
/// Transfer-Encoding, chunked last, a valid target, normalized before
/// routing: `target`), before Pingora sees a request it would answer
/// differently (Pingora repairs an invalid target by escaping it).
pub fn parse<'a>(bytes: &[u8], engine: &'a Engine, peer: std::net::SocketAddr) -> Parsed<'a> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(bytes) {
        Ok(httparse::Status::Complete(length)) => recognize(request, length, engine, peer),
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            // Rare: checked with Pingora's own limit, then Pingora's job.
            let mut headers = vec![httparse::EMPTY_HEADER; PINGORA_MAX_HEADERS];
            let mut request = httparse::Request::new(&mut headers);
            match request.parse(bytes) {
                Ok(httparse::Status::Complete(length)) => match check(&request) {
                    Ok(checked) => Parsed::Other {
                        chunked_body: checked.chunked.then_some(length),
                    },
                    Err(refused) => refused,
                },
                Ok(httparse::Status::Partial) => Parsed::Partial,
                Err(_) => Parsed::Other { chunked_body: None },
            }
        }
        Err(_) => Parsed::Refused {
            status: 400,
            reason: "malformed request head",
        },
    }
}

/// What `check` learned from a valid head.
struct Checked<'b> {
    host: Option<&'b str>,
    close: bool,
    /// The body is chunked.
    chunked: bool,
    /// A body, `Expect`, `Upgrade`: not a fast-path request.
    unusual: bool,
}

/// The strict rules every HTTP/1 request head must pass.
fn check<'b>(request: &httparse::Request<'_, 'b>) -> Result<Checked<'b>, Parsed<'static>> {
    let refuse = |reason| {
        Err(Parsed::Refused {
            status: 400,
            reason,
        })
    };
    let mut checked = Checked {
        host: None,
        close: false,
        chunked: false,
        unusual: false,
    };
    let (mut hosts, mut length_header, mut encoding) = (0, false, false);
    for header in request.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            if header.value.contains(&b'@') {
                return refuse("userinfo in Host");
            }
            checked.host = std::str::from_utf8(header.value).ok();
        } else if name.eq_ignore_ascii_case("connection") {
            checked.close |= has_close(header.value);
        } else if name.eq_ignore_ascii_case("content-length") {
            length_header = true;
            // A body: Pingora's job (which answers 413 over maxBodyBytes).
            checked.unusual |= header.value != b"0";
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            encoding = true;
            checked.unusual = true;
            // Only the last coding counts (several headers are one list).
            checked.chunked = header
                .value
                .split(|&b| b == b',')
                .next_back()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case("expect") || name.eq_ignore_ascii_case("upgrade") {
            checked.unusual = true;
        }
    }
    if hosts > 1 {
        return refuse("more than one Host");
    }
    if request.version == Some(1) && hosts == 0 {
        return refuse("an HTTP/1.1 request without Host (RFC 9112 §3.2)");
    }
    if length_header && encoding {
        // The request smuggling vector (RFC 9112 §6.1): refused, as nginx does.
        return refuse("Content-Length together with Transfer-Encoding");
    }
    if encoding && !checked.chunked {
        return refuse("a Transfer-Encoding whose last coding is not chunked");
    }
    let target = request.path.unwrap_or("");
    if target.starts_with('/') {
        if let Err(reason) = normalize(target) {
            return refuse(reason);
        }
    } else if !(target == "*" || request.method == Some("CONNECT") || target.contains("://")) {
        return refuse("invalid request target");
    }
    Ok(checked)
}

/// A valid head: a fast-path request, or Pingora's.
fn recognize<'a>(
    request: httparse::Request<'_, '_>,
    length: usize,
    engine: &'a Engine,
    peer: std::net::SocketAddr,
) -> Parsed<'a> {
    let checked = match check(&request) {
        Ok(checked) => checked,
        Err(refused) => return refused,
    };
    let other = Parsed::Other {
        chunked_body: checked.chunked.then_some(length),
    };
    if checked.unusual || length > engine.limits.max_header_bytes || request.version != Some(1) {
        return other;
    }
    let (Some(method), Some(target), Some(host)) = (request.method, request.path, checked.host)
    else {
        return other;
    };
    if method == "CONNECT" || !target.starts_with('/') {
        return other;
    }
    // Checked above: normal or normalizable.
    let Ok(target) = normalize(target) else {
        return other;
    };
    let head = method == "HEAD";
    let close = checked.close;
    let path = target.split_once('?').map_or(&*target, |(path, _)| path);
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
                head: upstream_head(method, &target, request.headers),
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
                    &target,
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
        _ => other,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::engine::{Counters, Limits};
    use crate::http::routes::RouteTable;
    use crate::http::upstream::Pool;
    use crate::proto::{http_route, HttpMatch, HttpProxy, HttpRespond, HttpRoute};
    use bytes::Bytes;
    use pingora_http::ResponseHeader;
    use std::sync::Arc;
    use std::time::Duration;

    /// An engine with a static route `/health` and a proxy route under
    /// `/api/` (upstream never contacted), and no JS handler.
    fn engine() -> Engine {
        let routes = [
            HttpRoute {
                r#match: Some(HttpMatch {
                    path: "/health".into(),
                    ..Default::default()
                }),
                action: Some(http_route::Action::Respond(HttpRespond {
                    status: 200,
                    body: b"ok".to_vec(),
                    ..Default::default()
                })),
            },
            HttpRoute {
                r#match: Some(HttpMatch {
                    path_prefix: "/api/".into(),
                    ..Default::default()
                }),
                action: Some(http_route::Action::Proxy(HttpProxy {
                    upstreams: vec!["127.0.0.1:9".into()],
                    ..Default::default()
                })),
            },
        ];
        Engine {
            routes: RouteTable::new(&routes, false).unwrap(),
            responses: vec![StaticResponse::new(
                ResponseHeader::build(200, None).unwrap(),
                Bytes::from_static(b"ok"),
            )],
            pools: vec![Arc::new(
                Pool::from_proto(
                    match &routes[1].action {
                        Some(http_route::Action::Proxy(proxy)) => proxy,
                        _ => unreachable!(),
                    },
                    1,
                )
                .unwrap(),
            )],
            bridge: None,
            limits: Limits {
                max_header_bytes: 1024,
                max_body_bytes: 1 << 20,
                header_timeout: Duration::from_secs(1),
                body_timeout: Duration::from_secs(1),
            },
            tenant_header: "x-tenant-id".into(),
            counters: Counters::default(),
            id_nonce: 1,
            id_sequence: Default::default(),
        }
    }

    fn peer() -> std::net::SocketAddr {
        "127.0.0.1:5555".parse().unwrap()
    }

    /// What `parse` made of `bytes`, in a form tests can compare.
    fn kind(bytes: &[u8]) -> String {
        match parse(bytes, &engine(), peer()) {
            Parsed::Static {
                head,
                close,
                length,
                ..
            } => format!("static head={head} close={close} length={length}"),
            Parsed::Proxy {
                request, length, ..
            } => format!(
                "proxy head_only={} close={} idempotent={} length={length}",
                request.head_only, request.close, request.idempotent
            ),
            Parsed::Js { .. } => "js".into(),
            Parsed::Partial => "partial".into(),
            Parsed::Other { chunked_body: None } => "other".into(),
            Parsed::Other {
                chunked_body: Some(at),
            } => format!("other chunked at {at}"),
            Parsed::Refused { status, .. } => format!("refused {status}"),
        }
    }

    #[test]
    fn static_routes_are_answered_from_the_head() {
        let get = b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(
            kind(get),
            format!("static head=false close=false length={}", get.len())
        );
        let head =
            b"HEAD /health?x=1 HTTP/1.1\r\nHost: a:80\r\nConnection: keep-alive, Close\r\n\r\n";
        assert_eq!(
            kind(head),
            format!("static head=true close=true length={}", head.len())
        );
        // A static route answers GET and HEAD only; POST goes to Pingora.
        assert_eq!(kind(b"POST /health HTTP/1.1\r\nHost: a\r\n\r\n"), "other");
        // An empty body is no body.
        let empty = b"GET /health HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n";
        assert!(kind(empty).starts_with("static"));
    }

    #[test]
    fn a_head_cut_short_waits_and_pipelined_requests_are_taken_one_at_a_time() {
        let full = b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n";
        for end in 0..full.len() {
            assert_eq!(kind(&full[..end]), "partial", "{end} bytes");
        }
        let mut two = full.to_vec();
        two.extend_from_slice(b"GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(
            kind(&two),
            format!("static head=false close=false length={}", full.len())
        );
    }

    #[test]
    fn anything_unusual_is_left_to_pingora() {
        for request in [
            &b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"[..],
            b"GET /api/x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            b"GET /api/x HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n",
            b"GET /health HTTP/1.0\r\nHost: a\r\n\r\n",
            b"GET /health HTTP/1.0\r\n\r\n",
            b"GET http://a/health HTTP/1.1\r\nHost: a\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            b"GET /nothing HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(
                kind(request),
                "other",
                "{}",
                String::from_utf8_lossy(request)
            );
        }
        let chunked = b"POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n";
        assert_eq!(
            kind(chunked),
            format!("other chunked at {}", chunked.len() - 3)
        );
        let long = format!(
            "GET /health HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "y".repeat(1100)
        );
        assert_eq!(kind(long.as_bytes()), "other", "over maxHeaderBytes");
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        let many = format!("GET /health HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        assert_eq!(kind(many.as_bytes()), "other", "over MAX_HEADERS");
    }

    #[test]
    fn heads_that_break_the_rules_are_refused_whatever_the_route() {
        for request in [
            &b"GET /health HTTP/1.1\r\n\r\n"[..],
            b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET /health HTTP/1.1\r\nHost: user@a\r\n\r\n",
            b"GET /health HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n",
            b"GET /a\0b HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /api/../../x HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /api/a%2fb HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /api\\x HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET api/x HTTP/1.1\r\nHost: a\r\n\r\n",
            b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        ] {
            assert_eq!(
                kind(request),
                "refused 400",
                "{}",
                String::from_utf8_lossy(request)
            );
        }
        // Beyond the fast path's header count, the same rules.
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        let many = format!("GET /health HTTP/1.1\r\n{many}\r\n");
        assert_eq!(kind(many.as_bytes()), "refused 400");
    }

    #[test]
    fn routes_see_the_normalized_target() {
        assert!(kind(b"GET /x/../health HTTP/1.1\r\nHost: a\r\n\r\n").starts_with("static"));
        assert!(kind(b"GET //health HTTP/1.1\r\nHost: a\r\n\r\n").starts_with("static"));
        let request = b"GET /api/%2E%2E/api/./x//y?q=/../ HTTP/1.1\r\nHost: a\r\n\r\n";
        let Parsed::Proxy { request, .. } = parse(request, &engine(), peer()) else {
            unreachable!()
        };
        assert_eq!(
            String::from_utf8(request.head).unwrap(),
            "GET /api/x/y?q=/../ HTTP/1.1\r\nHost: a\r\n\r\n"
        );
        // `..` that leaves the prefix leaves the route.
        assert_eq!(
            kind(b"GET /api/../nothing HTTP/1.1\r\nHost: a\r\n\r\n"),
            "other"
        );
    }

    #[test]
    fn proxied_heads_lose_their_hop_by_hop_headers() {
        let request = b"GET /api/x?q=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\nKeep-Alive: 5\r\nTE: trailers\r\nX-Id: 7\r\n\r\n";
        assert_eq!(
            kind(request),
            format!(
                "proxy head_only=false close=true idempotent=true length={}",
                request.len()
            )
        );
        let Parsed::Proxy { request, .. } = parse(request, &engine(), peer()) else {
            unreachable!()
        };
        assert_eq!(
            String::from_utf8(request.head).unwrap(),
            "GET /api/x?q=1 HTTP/1.1\r\nHost: a\r\nX-Id: 7\r\n\r\n"
        );
        assert!(kind(b"PATCH /api/x HTTP/1.1\r\nHost: a\r\n\r\n").contains("idempotent=false"));
    }
}
