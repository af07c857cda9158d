//! JS requests on the HTTP/1 fast path: a bodyless request handed to JS
//! through the bridge, its response written by the connection loop itself
//! (Pingora's per-request pipeline costs more than the rest of the kernel's
//! share of a small JS response). Requests with bodies, and HTTP/2, go
//! through `engine::serve_js` on Pingora.

use super::bridge::{response_header_lines, Bridge, FromJs, FromJsReceiver, FromJsSender};
use super::engine::Engine;
use super::headers::push_date;
use super::protocol::{HTTP_ABORT_CLIENT_GONE, HTTP_ABORT_TIMEOUT};
use super::relay::Next;
use super::stream::GatheredStream;
use std::cell::Cell;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A bodyless request for the JS handler, prepared by `fast::parse`.
pub struct JsRequestHead {
    /// The REQUEST record's text.
    pub text: Vec<u8>,
    /// A `HEAD` request: the response goes out without its body.
    pub head_only: bool,
    /// The client asked to close its connection after this response.
    pub close: bool,
}

/// How the response body is framed on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    /// The handler's `content-length`: bytes still to send.
    Length(u64),
    Chunked,
}

/// The connection's channel for JS's records, made for its first JS request
/// and kept for the next ones (no channel per request).
pub type JsChannel = Option<(FromJsSender, FromJsReceiver)>;

/// Serves one request from JS. `pipelined` holds bytes the client sent
/// after this request (read while JS works, to notice a client that goes
/// away); they stay there for the next request.
pub async fn serve(
    client: &mut GatheredStream,
    pipelined: &mut Vec<u8>,
    channel: &mut JsChannel,
    bridge: &Arc<Bridge>,
    request: JsRequestHead,
    engine: &Engine,
) -> Next {
    engine.counters.requests_js.fetch_add(1, Ordering::Relaxed);
    let timeout = engine.limits.body_timeout;
    let read_ahead_limit = engine.limits.max_header_bytes;
    let JsRequestHead {
        text,
        head_only,
        close,
    } = request;
    let (sender, receiver) = channel.get_or_insert_with(tokio::sync::mpsc::unbounded_channel);
    let Some(mut js) = bridge.open(0, text, sender) else {
        let _ = write(
            client,
            &super::headers::error_response(503, ""),
            timeout,
            true,
        )
        .await;
        return Next::Close;
    };
    let mut next = if close { Next::Close } else { Next::KeepAlive };
    let mut framing = Framing::None;
    // A body longer or shorter than its content-length: the connection
    // cannot carry another response after it.
    let mut broken_length = false;
    loop {
        let message = tokio::select! {
            // JS first: polling the client flushes what is gathered, and a
            // response head must go out in one send with the body record
            // that JS put right behind it (random order: ~1.5 sends per
            // small response).
            biased;
            message = js.next(receiver) => message,
            read = client.read_buf(pipelined), if pipelined.len() < read_ahead_limit => {
                match read {
                    Ok(n) if n > 0 => continue,
                    _ => {
                        js.set_abort_reason(HTTP_ABORT_CLIENT_GONE);
                        return Next::Close;
                    }
                }
            }
        };
        let failed = match message {
            // The bridge stopped: the server is shutting down.
            None => return Next::Close,
            Some(FromJs::Credit(_)) => continue,
            Some(FromJs::Abort) => {
                // The head is out: closing without the final chunk (or
                // short of the length) tells the client it failed.
                js.finish();
                return Next::Close;
            }
            Some(FromJs::Response {
                status,
                end,
                headers,
            }) => {
                let (head, body_framing, handler_close) =
                    response_head(status, &headers, end, head_only, close);
                framing = body_framing;
                if handler_close {
                    next = Next::Close;
                }
                let failed = write(client, &head, timeout, false).await;
                if end && failed.is_none() {
                    js.finish();
                    return next;
                }
                failed
            }
            Some(FromJs::Body { end, data }) => {
                let length = data.len() as u32;
                let mut failed = None;
                if !head_only && framing != Framing::None && !data.is_empty() {
                    let mut bytes = &data[..];
                    if let Framing::Length(left) = &mut framing {
                        // Never more than announced: extra bytes would be
                        // read as the next response.
                        let take = bytes.len().min(*left as usize);
                        broken_length |= take < bytes.len();
                        bytes = &bytes[..take];
                        *left -= take as u64;
                    }
                    if framing == Framing::Chunked {
                        let size = format!("{:x}\r\n", bytes.len());
                        failed = write(client, size.as_bytes(), timeout, false).await;
                    }
                    if failed.is_none() && !bytes.is_empty() {
                        failed = write(client, bytes, timeout, false).await;
                    }
                    if failed.is_none() && framing == Framing::Chunked {
                        failed = write(client, b"\r\n", timeout, false).await;
                    }
                }
                if failed.is_none() && end {
                    if framing == Framing::Chunked && !head_only {
                        failed = write(client, b"0\r\n\r\n", timeout, false).await;
                    }
                    if failed.is_none() {
                        js.finish();
                        if broken_length
                            || matches!(framing, Framing::Length(left) if left > 0 && !head_only)
                        {
                            let _ = tokio::time::timeout(timeout, client.flush()).await;
                            return Next::Close;
                        }
                        return next;
                    }
                }
                if failed.is_none() {
                    // A streamed response: this chunk goes out now.
                    failed = match tokio::time::timeout(timeout, client.flush()).await {
                        Ok(Ok(())) => None,
                        Ok(Err(_)) => Some(HTTP_ABORT_CLIENT_GONE),
                        Err(_) => Some(HTTP_ABORT_TIMEOUT),
                    };
                    js.credit(length);
                }
                failed
            }
        };
        if let Some(reason) = failed {
            js.set_abort_reason(reason);
            return Next::Close;
        }
    }
}

/// Writes (gathers) `bytes`; `Some(reason)` when the client failed.
async fn write(
    client: &mut GatheredStream,
    bytes: &[u8],
    timeout: Duration,
    flush: bool,
) -> Option<u32> {
    let result = tokio::time::timeout(timeout, async {
        client.write_all(bytes).await?;
        if flush {
            client.flush().await?;
        }
        Ok::<(), std::io::Error>(())
    })
    .await;
    match result {
        Ok(Ok(())) => None,
        Ok(Err(_)) => Some(HTTP_ABORT_CLIENT_GONE),
        Err(_) => Some(HTTP_ABORT_TIMEOUT),
    }
}

/// The response head from JS's status and `name: value\r\n` lines, and how
/// its body is framed: JS's `content-length` when it gave one, else chunked
/// (no body when `end`, for `HEAD`, 1xx, 204 and 304). Connection-level
/// headers are the server's business and are dropped; a handler's
/// `connection: close` closes the connection after this response (true in
/// the result).
fn response_head(
    status: u16,
    lines: &[u8],
    end: bool,
    head_only: bool,
    close: bool,
) -> (Vec<u8>, Framing, bool) {
    let status = http::StatusCode::from_u16(status)
        .ok()
        .filter(|status| status.as_u16() >= 200)
        .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let mut head = Vec::with_capacity(112 + lines.len());
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    push_date(&mut head);
    let mut length = None;
    let handler_close = Cell::new(false);
    for (name, value, line) in response_header_lines(lines, &handler_close) {
        if name.eq_ignore_ascii_case(b"content-length") {
            // One valid length or none (then the body goes chunked).
            let value = std::str::from_utf8(value).unwrap_or("").trim();
            match value.parse::<u64>() {
                Ok(value) if length.is_none() => length = Some(value),
                _ => continue,
            }
        }
        head.extend_from_slice(line);
        head.extend_from_slice(b"\r\n");
    }
    let bodyless = matches!(status.as_u16(), 204 | 304);
    let framing = if bodyless {
        Framing::None
    } else if let Some(length) = length {
        Framing::Length(length)
    } else if head_only {
        Framing::None
    } else if end {
        head.extend_from_slice(b"content-length: 0\r\n");
        Framing::None
    } else {
        head.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    let close = close || handler_close.get();
    if close {
        head.extend_from_slice(b"connection: close\r\n");
    }
    head.extend_from_slice(b"\r\n");
    (head, framing, close)
}
