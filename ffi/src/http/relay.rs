//! The HTTP/1 fast path of proxy routes: a request without a body, relayed
//! to an upstream over a kept-alive connection of our own pool, the response
//! relayed back as it arrives. Four system calls per request (read, send,
//! read, send), as nginx does; Pingora's proxy pipeline costs about twice
//! nginx's CPU per request. Requests with bodies, upgrades or anything
//! unusual take Pingora's path (`fast::parse` decides).
//!
//! The upstream's response framing is honoured exactly: `content-length`,
//! chunked (scanned so the end is known and the connection reused), or
//! until close (the client connection then closes too).

use super::chunked::ChunkedScanner;
use super::engine::Counters;
use super::headers::{error_response, push_date};
use super::stream::GatheredStream;
use super::upstream::{Pool, Upstream};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest upstream response head accepted.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
const MAX_RESPONSE_HEADERS: usize = 96;

/// A bodyless request for an upstream, prepared by `fast::parse`.
pub struct ProxyRequest {
    /// The request head for the upstream (hop-by-hop headers removed).
    pub head: Vec<u8>,
    /// A `HEAD` request: the response has no body whatever it says.
    pub head_only: bool,
    /// The client asked to close its connection after this response.
    pub close: bool,
    /// Safe to send again on a fresh connection when a kept-alive one turns
    /// out closed before answering (GET, HEAD, OPTIONS, PUT, DELETE, TRACE).
    pub idempotent: bool,
}

/// What the client connection does next.
pub enum Next {
    KeepAlive,
    Close,
}

/// Counts a request on its upstream while it lives.
struct InFlight<'a>(&'a Upstream);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why an exchange with one upstream failed.
enum Failure {
    /// Nothing was sent to the client; `sent`: the request reached the
    /// upstream (so it is not sent elsewhere unless idempotent).
    BeforeResponse { sent: bool, timeout: bool },
    /// The response was under way: the client connection must close.
    DuringResponse,
}

/// Relays `request` through `pool`; answers 502/504 itself when no
/// upstream answers.
pub async fn relay(
    client: &mut GatheredStream,
    pool: &Pool,
    client_key: u64,
    request: &ProxyRequest,
    client_timeout: Duration,
    counters: &Counters,
) -> Next {
    counters.requests_proxied.fetch_add(1, Ordering::Relaxed);
    let mut tried = Vec::new();
    let mut timed_out = false;
    while let Some(index) = pool.select(client_key, &tried) {
        tried.push(index);
        let upstream = &pool.upstreams[index];
        upstream.in_flight.fetch_add(1, Ordering::Relaxed);
        upstream.requests.fetch_add(1, Ordering::Relaxed);
        let _in_flight = InFlight(upstream);
        // A kept-alive connection may have been closed by the upstream
        // meanwhile: then one fresh connection is tried.
        let mut attempt = upstream.take_idle();
        loop {
            let reused = attempt.is_some();
            let connection = match attempt.take() {
                Some(connection) => connection,
                None => match connect(upstream, pool.timeout).await {
                    Some(connection) => connection,
                    None => {
                        pool.mark_failed(index);
                        break;
                    }
                },
            };
            match exchange(
                client,
                connection,
                upstream,
                request,
                pool.timeout,
                client_timeout,
            )
            .await
            {
                Ok(next) => return next,
                Err(Failure::DuringResponse) => return Next::Close,
                Err(Failure::BeforeResponse { sent, timeout }) => {
                    timed_out |= timeout;
                    // A kept-alive connection the upstream had closed.
                    if reused && !timeout && (!sent || request.idempotent) {
                        continue;
                    }
                    pool.mark_failed(index);
                    if sent && !request.idempotent {
                        // Never sent twice: the upstream may have acted on it.
                        tried = (0..pool.upstreams.len()).collect();
                    }
                    break;
                }
            }
        }
        let attempts = tried.len() as u32;
        if attempts > pool.retries || tried.len() >= pool.upstreams.len() {
            break;
        }
    }
    let status = error_response(if timed_out { 504 } else { 502 }, "");
    let _ = tokio::time::timeout(client_timeout, async {
        client.write_all(&status).await?;
        client.flush().await
    })
    .await;
    Next::Close
}

async fn connect(upstream: &Upstream, timeout: Duration) -> Option<TcpStream> {
    let connection = tokio::time::timeout(timeout, TcpStream::connect(upstream.address()))
        .await
        .ok()?
        .ok()?;
    let _ = connection.set_nodelay(true);
    Some(connection)
}

/// One request/response exchange on `connection`.
async fn exchange(
    client: &mut GatheredStream,
    mut connection: TcpStream,
    upstream: &Upstream,
    request: &ProxyRequest,
    timeout: Duration,
    client_timeout: Duration,
) -> Result<Next, Failure> {
    match tokio::time::timeout(timeout, connection.write_all(&request.head)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => {
            return Err(Failure::BeforeResponse {
                sent: false,
                timeout: false,
            })
        }
        Err(_) => {
            return Err(Failure::BeforeResponse {
                sent: false,
                timeout: true,
            })
        }
    }
    let before = |timeout: bool| Failure::BeforeResponse {
        sent: true,
        timeout,
    };
    let mut buffer = Vec::with_capacity(8192);
    // The response head (informational 1xx heads are passed on first).
    let (response, body_start) = loop {
        match ResponseHead::parse(&buffer) {
            Ok(Some((head, length))) if (100..200).contains(&head.status) => {
                if head.status == 101 {
                    return Err(before(false));
                }
                // Passed on at once (early hints are worth something only early).
                write_client(client, &buffer[..length], client_timeout).await?;
                tokio::time::timeout(client_timeout, client.flush())
                    .await
                    .map_err(|_| Failure::DuringResponse)?
                    .map_err(|_| Failure::DuringResponse)?;
                buffer.drain(..length);
                // The final head may have come in the same read.
                continue;
            }
            Ok(Some((head, length))) if length <= MAX_RESPONSE_HEAD => break (head, length),
            Ok(None) if buffer.len() <= MAX_RESPONSE_HEAD => {}
            _ => return Err(before(false)),
        }
        let read = tokio::time::timeout(timeout, connection.read_buf(&mut buffer)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => return Err(before(false)),
            Err(_) => return Err(before(true)),
            Ok(Ok(_)) => {}
        }
    };
    let framing = if request.head_only || matches!(response.status, 204 | 304) {
        Framing::Empty
    } else if response.chunked {
        Framing::Chunked(ChunkedScanner::default())
    } else if let Some(length) = response.content_length {
        Framing::Length(length)
    } else {
        Framing::UntilClose
    };
    let close_client = request.close || matches!(framing, Framing::UntilClose);
    // The head for the client: the upstream's, minus its connection headers.
    let mut head = Vec::with_capacity(body_start + 80);
    let mut dated = false;
    head.extend_from_slice(b"HTTP/1.1");
    let line_end = buffer.iter().position(|&b| b == b'\n').unwrap_or(0);
    let status_line = &buffer[..line_end + 1];
    head.extend_from_slice(
        &status_line[status_line.iter().position(|&b| b == b' ').unwrap_or(0)..],
    );
    let mut line_start = line_end + 1;
    while line_start < body_start {
        let end = buffer[line_start..body_start]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(body_start, |at| line_start + at + 1);
        let line = &buffer[line_start..end];
        let name_end = line.iter().position(|&b| b == b':').unwrap_or(0);
        let name = &line[..name_end];
        // Hop-by-hop headers are this connection's; a content-length next
        // to chunked framing must go (RFC 9112 §6.1).
        let hop_by_hop = [
            &b"connection"[..],
            b"keep-alive",
            b"proxy-connection",
            b"upgrade",
        ]
        .iter()
        .any(|hop| name.eq_ignore_ascii_case(hop));
        let stale_length = response.chunked && name.eq_ignore_ascii_case(b"content-length");
        if name_end > 0 && !hop_by_hop && !stale_length {
            head.extend_from_slice(line);
            dated |= name.eq_ignore_ascii_case(b"date");
        }
        line_start = end;
    }
    // RFC 9110 §6.6.1: a response forwarded without a Date gets one.
    if !dated {
        push_date(&mut head);
    }
    if close_client {
        head.extend_from_slice(b"connection: close\r\n");
    }
    head.extend_from_slice(b"\r\n");
    write_client(client, &head, client_timeout)
        .await
        .map_err(|_| Failure::DuringResponse)?;
    // The body, as it arrives.
    let mut framing = framing;
    let mut pending = buffer.split_off(body_start);
    let mut first = true;
    let clean = loop {
        let (take, end) = framing.consume(&pending);
        if take > 0 {
            write_client(client, &pending[..take], client_timeout)
                .await
                .map_err(|_| Failure::DuringResponse)?;
            // The first piece leaves with the head; later ones at once
            // (a streamed response must not wait in the gather buffer).
            if !first {
                tokio::time::timeout(client_timeout, client.flush())
                    .await
                    .map_err(|_| Failure::DuringResponse)?
                    .map_err(|_| Failure::DuringResponse)?;
            }
        }
        first = false;
        if let Some(clean) = end {
            if !clean {
                // Broken chunked framing: the client cannot tell where the
                // response ends, so its connection closes.
                return Err(Failure::DuringResponse);
            }
            // Bytes beyond the response: the upstream broke framing.
            break take == pending.len();
        }
        pending.clear();
        match tokio::time::timeout(timeout, connection.read_buf(&mut pending)).await {
            Ok(Ok(0)) => {
                if matches!(framing, Framing::UntilClose) {
                    break false;
                }
                return Err(Failure::DuringResponse);
            }
            Ok(Ok(_)) => {}
            _ => return Err(Failure::DuringResponse),
        }
    };
    if clean && !response.close && !matches!(framing, Framing::UntilClose) {
        upstream.put_idle(connection);
    }
    if close_client {
        let _ = tokio::time::timeout(client_timeout, client.flush()).await;
        return Ok(Next::Close);
    }
    Ok(Next::KeepAlive)
}

async fn write_client(
    client: &mut GatheredStream,
    bytes: &[u8],
    timeout: Duration,
) -> Result<(), Failure> {
    match tokio::time::timeout(timeout, client.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(Failure::DuringResponse),
    }
}

/// What the fast path needs from an upstream's response head.
struct ResponseHead {
    status: u16,
    content_length: Option<u64>,
    chunked: bool,
    /// The upstream will close the connection after this response.
    close: bool,
}

impl ResponseHead {
    /// `Ok(None)`: incomplete; `Err`: malformed. Else the head and its length.
    fn parse(bytes: &[u8]) -> Result<Option<(ResponseHead, usize)>, ()> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        let length = match response.parse(bytes) {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(()),
        };
        let mut head = ResponseHead {
            status: response.code.ok_or(())?,
            content_length: None,
            // HTTP/1.0 responses close unless they say keep-alive.
            close: response.version == Some(0),
            chunked: false,
        };
        for header in response.headers.iter() {
            if header.name.eq_ignore_ascii_case("content-length") {
                let value = std::str::from_utf8(header.value).map_err(|_| ())?;
                let length = value.trim().parse::<u64>().map_err(|_| ())?;
                // Two different lengths: refuse rather than guess.
                if head.content_length.is_some_and(|known| known != length) {
                    return Err(());
                }
                head.content_length = Some(length);
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                head.chunked = header
                    .value
                    .split(|&b| b == b',')
                    .next_back()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                if !head.chunked {
                    // Another coding, unframed: relayed until close.
                    head.content_length = None;
                }
            } else if header.name.eq_ignore_ascii_case("connection") {
                for token in header.value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        head.close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        head.close = false;
                    }
                }
            }
        }
        if head.chunked {
            head.content_length = None;
        }
        Ok(Some((head, length)))
    }
}

/// How the end of a response body is found.
enum Framing {
    Empty,
    /// Bytes still to come.
    Length(u64),
    Chunked(ChunkedScanner),
    UntilClose,
}

impl Framing {
    /// How many of `bytes` belong to the body, and, when the body ends
    /// there, whether it ended cleanly.
    fn consume(&mut self, bytes: &[u8]) -> (usize, Option<bool>) {
        match self {
            Framing::Empty => (0, Some(true)),
            Framing::Length(left) => {
                let take = (*left).min(bytes.len() as u64);
                *left -= take;
                (take as usize, (*left == 0).then_some(true))
            }
            Framing::Chunked(scanner) => {
                let (take, ended) = scanner.scan(bytes);
                (take, ended.then_some(scanner.done()))
            }
            Framing::UntilClose => (bytes.len(), None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_heads() {
        let (head, length) = ResponseHead::parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (head.status, head.content_length, head.close, length),
            (200, Some(5), true, 57)
        );
        let (head, _) =
            ResponseHead::parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
                .unwrap()
                .unwrap();
        assert!(head.chunked && head.content_length.is_none() && !head.close);
        let (head, _) = ResponseHead::parse(b"HTTP/1.0 200 OK\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(head.close && head.content_length.is_none());
        assert!(ResponseHead::parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
        )
        .is_err());
        assert!(ResponseHead::parse(b"HTTP/1.1 200 OK\r\n")
            .unwrap()
            .is_none());
    }
}
