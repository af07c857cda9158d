//! The HTTP/1 fast path of the connection driver: recognizing, from the raw
//! bytes of a request head, a request a static route answers, so it is
//! answered without Pingora's per-request pipeline. Anything unusual (a
//! body, `Expect`, `Upgrade`, HTTP/1.0, a malformed or oversized head) is
//! left to Pingora, which knows every corner of the protocol.

use super::engine::{Engine, StaticResponse};
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
    /// More bytes are needed.
    Partial,
    /// Pingora's job.
    Other,
}

pub fn parse<'a>(bytes: &[u8], engine: &'a Engine) -> Parsed<'a> {
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
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Parsed::Other,
    };
    let mut host = None;
    let mut close = false;
    for header in request.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("host") {
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
        Action::Respond(index) => Parsed::Static {
            response: &engine.responses[index],
            head,
            close,
            length,
        },
        _ => Parsed::Other,
    }
}
