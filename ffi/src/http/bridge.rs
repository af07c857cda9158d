//! The JS half of the engine's requests, kernel side: requests and their
//! bodies go to JS through one kernel → JS ring, responses come back through
//! one JS → kernel ring (protocol in docs/http.md). One writer task owns the
//! outgoing ring (rings are single-producer) and publishes per batch; one
//! reader task drains the incoming ring and hands each record to its
//! request's task.

use super::headers::{has_close, is_hop_by_hop};
use super::protocol::{
    HTTP_ABORT_STOPPING, HTTP_FLAG_ASCII, HTTP_FLAG_END, HTTP_FLAG_INLINE_BODY, HTTP_TO_JS_ABORT,
    HTTP_TO_JS_BODY, HTTP_TO_JS_CREDIT, HTTP_TO_JS_REQUEST, HTTP_TO_KERNEL_ABORT,
    HTTP_TO_KERNEL_BODY, HTTP_TO_KERNEL_CREDIT, HTTP_TO_KERNEL_RESPONSE,
};
use crate::ring::{Consumer, Producer, Ring};
use bytes::Bytes;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Largest body chunk in one record (JS gets bigger chunks split).
const MAX_CHUNK: usize = 64 * 1024;

/// A record for JS.
pub enum ToJs {
    Request { id: u32, flags: u32, head: Vec<u8> },
    Body { id: u32, end: bool, data: Bytes },
    Credit { id: u32, bytes: u32 },
    Abort { id: u32, reason: u32 },
}

/// A record from JS, for one request.
pub enum FromJs {
    Response {
        status: u16,
        end: bool,
        /// `name: value\r\n` lines.
        headers: Bytes,
    },
    Body {
        end: bool,
        data: Bytes,
    },
    Credit(u32),
    Abort,
}

/// Where the records JS sends for a request go: `(request id, record)`.
/// One channel may serve many requests in turn (an HTTP/1 connection keeps
/// its own), so a receiver skips records of ids it is not serving.
pub type FromJsSender = mpsc::UnboundedSender<(u32, FromJs)>;
/// The receiving side of a [`FromJsSender`].
pub type FromJsReceiver = mpsc::UnboundedReceiver<(u32, FromJs)>;

pub struct Bridge {
    outbox: Mutex<Option<mpsc::UnboundedSender<ToJs>>>,
    requests: Mutex<HashMap<u32, FromJsSender>>,
    next_id: AtomicU32,
    pub in_flight: AtomicU64,
}

impl Bridge {
    /// Starts the writer and reader tasks on the current runtime. The
    /// returned handle finishes once the bridge stopped and the kernel → JS
    /// ring was closed (JS then knows the server is done).
    pub fn start(
        to_js: Arc<Ring>,
        to_kernel: Arc<Ring>,
    ) -> (Arc<Bridge>, tokio::task::JoinHandle<()>) {
        let (outbox, inbox) = mpsc::unbounded_channel();
        let bridge = Arc::new(Bridge {
            outbox: Mutex::new(Some(outbox)),
            requests: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(1),
            in_flight: AtomicU64::new(0),
        });
        let reader = tokio::spawn(read_responses(Arc::clone(&bridge), Arc::clone(&to_kernel)));
        let writer = tokio::spawn(async move {
            write_requests(inbox, Arc::clone(&to_js)).await;
            // Everything for JS is out: closing tells JS the server finished.
            to_js.close();
            to_kernel.close();
            let _ = reader.await;
        });
        (bridge, writer)
    }

    fn send(&self, record: ToJs) -> bool {
        match &*self.outbox.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(outbox) => outbox.send(record).is_ok(),
            None => false,
        }
    }

    /// Registers a request whose records from JS go to `sender`; `None` once
    /// the bridge stopped.
    pub fn open(
        self: &Arc<Self>,
        flags: u32,
        head: Vec<u8>,
        sender: &FromJsSender,
    ) -> Option<JsRequest> {
        let flags = if head.is_ascii() {
            flags | HTTP_FLAG_ASCII
        } else {
            flags
        };
        let id = loop {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                break id;
            }
        };
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, sender.clone());
        if !self.send(ToJs::Request { id, flags, head }) {
            self.requests
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            return None;
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(JsRequest {
            bridge: Arc::clone(self),
            id,
            abort_reason: Some(HTTP_ABORT_STOPPING),
        })
    }

    /// Tells JS every open request is over and stops: the writer task ends
    /// once its queue is written, then closes the ring.
    pub fn stop(&self) {
        let open: Vec<u32> = self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(id, _)| id)
            .collect();
        for id in open {
            self.send(ToJs::Abort {
                id,
                reason: HTTP_ABORT_STOPPING,
            });
        }
        self.outbox.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    fn dispatch(&self, tag: u32, payload: &[u8]) {
        if payload.len() < 8 {
            return;
        }
        let word = |at: usize| u32::from_le_bytes(payload[at..at + 4].try_into().unwrap());
        let id = word(0);
        let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        // An unknown id is a request already over (aborted): ignore.
        let Some(sender) = requests.get(&id) else {
            return;
        };
        match tag {
            HTTP_TO_KERNEL_RESPONSE if payload.len() >= 16 => {
                let flags = word(8);
                let lines_end = 16usize.saturating_add(word(12) as usize).min(payload.len());
                // One copy out of the ring; the head and the body share it.
                let record = Bytes::copy_from_slice(&payload[16..]);
                let headers = record.slice(..lines_end - 16);
                let inline = flags & HTTP_FLAG_INLINE_BODY != 0;
                let _ = sender.send((
                    id,
                    FromJs::Response {
                        status: word(4).min(u32::from(u16::MAX)) as u16,
                        end: flags & HTTP_FLAG_END != 0 && !inline,
                        headers,
                    },
                ));
                if inline {
                    let _ = sender.send((
                        id,
                        FromJs::Body {
                            end: true,
                            data: record.slice(lines_end - 16..),
                        },
                    ));
                }
            }
            HTTP_TO_KERNEL_BODY => {
                let _ = sender.send((
                    id,
                    FromJs::Body {
                        end: word(4) & HTTP_FLAG_END != 0,
                        data: Bytes::copy_from_slice(&payload[8..]),
                    },
                ));
            }
            HTTP_TO_KERNEL_CREDIT => {
                let _ = sender.send((id, FromJs::Credit(word(4))));
            }
            HTTP_TO_KERNEL_ABORT => {
                let _ = sender.send((id, FromJs::Abort));
            }
            _ => {}
        }
    }
}

/// The `name: value\r\n` lines of a RESPONSE record as (name, value, line),
/// without the connection-level headers (`headers::is_hop_by_hop`): the
/// server frames the response itself (a handler's `transfer-encoding` next
/// to the length JS computed would let one response smuggle another), and
/// `upgrade`, `te`, `trailer` describe a connection the handler does not
/// own. A `connection: close` sets `close` (the server closes after this
/// response). JS built the lines from a `Headers` object; a line without a
/// colon, or with a stray CR, is skipped.
pub fn response_header_lines<'a>(
    lines: &'a [u8],
    close: &'a Cell<bool>,
) -> impl Iterator<Item = (&'a [u8], &'a [u8], &'a [u8])> {
    lines.split(|&b| b == b'\n').filter_map(move |line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        let name = &line[..colon];
        let value = &line[colon + 1..];
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if is_hop_by_hop(name) {
            if name.eq_ignore_ascii_case(b"connection") && has_close(value) {
                close.set(true);
            }
            return None;
        }
        (!line.contains(&b'\r')).then_some((name, value, line))
    })
}

/// One request handed to JS; dropping it before `finish` tells JS it is over.
pub struct JsRequest {
    bridge: Arc<Bridge>,
    pub id: u32,
    /// What JS is told when this is dropped unfinished.
    abort_reason: Option<u32>,
}

impl JsRequest {
    /// The next record JS sent for this request from `receiver` (records of
    /// requests that are over are skipped); `None` once the bridge stopped.
    pub async fn next(&self, receiver: &mut FromJsReceiver) -> Option<FromJs> {
        loop {
            let (id, message) = receiver.recv().await?;
            if id == self.id {
                return Some(message);
            }
        }
    }

    pub fn send_body(&self, data: Bytes, end: bool) {
        if data.len() <= MAX_CHUNK {
            self.bridge.send(ToJs::Body {
                id: self.id,
                end,
                data,
            });
            return;
        }
        let mut rest = data;
        while !rest.is_empty() {
            let chunk = rest.split_to(rest.len().min(MAX_CHUNK));
            let last = end && rest.is_empty();
            self.bridge.send(ToJs::Body {
                id: self.id,
                end: last,
                data: chunk,
            });
        }
    }

    pub fn credit(&self, bytes: u32) {
        self.bridge.send(ToJs::Credit { id: self.id, bytes });
    }

    /// Ends the request for JS with `reason` (when dropped, or now).
    pub fn set_abort_reason(&mut self, reason: u32) {
        self.abort_reason = Some(reason);
    }

    /// The response is complete: nothing to tell JS.
    pub fn finish(mut self) {
        self.abort_reason = None;
    }
}

impl Drop for JsRequest {
    fn drop(&mut self) {
        let was_open = self
            .bridge
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id)
            .is_some();
        self.bridge.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let (true, Some(reason)) = (was_open, self.abort_reason) {
            self.bridge.send(ToJs::Abort {
                id: self.id,
                reason,
            });
        }
    }
}

async fn write_requests(mut inbox: mpsc::UnboundedReceiver<ToJs>, ring: Arc<Ring>) {
    if ring.claim().is_err() {
        return;
    }
    let mut producer = Producer::new(ring);
    while let Some(record) = inbox.recv().await {
        if !write(&mut producer, record).await {
            return;
        }
        // Everything queued meanwhile goes out in the same batch.
        while let Ok(record) = inbox.try_recv() {
            if !write(&mut producer, record).await {
                return;
            }
        }
        producer.publish();
    }
}

/// Writes one record; false when the ring closed (JS is gone).
async fn write(producer: &mut Producer, record: ToJs) -> bool {
    let (tag, id, word, body): (u32, u32, u32, &[u8]) = match &record {
        ToJs::Request { id, flags, head } => (HTTP_TO_JS_REQUEST, *id, *flags, head),
        ToJs::Body { id, end, data } => {
            (HTTP_TO_JS_BODY, *id, u32::from(*end) * HTTP_FLAG_END, data)
        }
        ToJs::Credit { id, bytes } => (HTTP_TO_JS_CREDIT, *id, *bytes, &[]),
        ToJs::Abort { id, reason } => (HTTP_TO_JS_ABORT, *id, *reason, &[]),
    };
    let len = 8 + body.len() as u32;
    let payload = match producer.reserve(len, tag).await {
        Ok(Some(payload)) => payload,
        // Closed, or a record larger than the ring (refused at serve time).
        _ => return false,
    };
    // SAFETY: `reserve` returned `len` writable bytes that the consumer does
    // not read before `publish`.
    unsafe {
        std::ptr::copy_nonoverlapping(id.to_le_bytes().as_ptr(), payload, 4);
        std::ptr::copy_nonoverlapping(word.to_le_bytes().as_ptr(), payload.add(4), 4);
        std::ptr::copy_nonoverlapping(body.as_ptr(), payload.add(8), body.len());
    }
    true
}

async fn read_responses(bridge: Arc<Bridge>, ring: Arc<Ring>) {
    if ring.claim().is_err() {
        return;
    }
    let mut consumer = Consumer::new(ring);
    while consumer.readable().await {
        if consumer
            .drain(|tag, payload| bridge.dispatch(tag, payload))
            .is_err()
        {
            // A corrupt ring (JS wrote a bad record): stop reading it.
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::response_header_lines;
    use std::cell::Cell;

    #[test]
    fn response_lines_drop_connection_level_headers_and_see_close() {
        let lines = b"content-type: text/plain\r\nTransfer-Encoding: chunked\r\nx-a:1\r\nno colon\r\nUpgrade: h2c\r\nte: trailers\r\nTrailer: x\r\nKeep-Alive: 5\r\nconnection: keep-alive, close\r\nx-b: a\rb\r\n";
        let close = Cell::new(false);
        let kept: Vec<_> = response_header_lines(lines, &close)
            .map(|(n, v, _)| (n, v))
            .collect();
        assert_eq!(
            kept,
            [(&b"content-type"[..], &b"text/plain"[..]), (b"x-a", b"1")]
        );
        assert!(close.get());
        let close = Cell::new(false);
        assert_eq!(
            response_header_lines(b"connection: keep-alive\r\n", &close).count(),
            0
        );
        assert!(!close.get());
    }
}
