//! The connection type handed to Pingora: a TCP stream whose small writes
//! are gathered until Pingora flushes.
//!
//! Pingora is written for buffered writes (its own listener wraps streams in
//! a `BufWriter` and flushes at the end of a response head without body, of
//! a content-length body, of every chunk), but the call that sets that
//! buffer up is crate-private. Unbuffered, a response costs two `send`s
//! (head, then body); gathered, one, which on loopback is most of the cost
//! of a small response.

use super::chunked::ChunkedScanner;
use async_trait::async_trait;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Writes larger than this go straight to the socket.
const GATHER_BYTES: usize = 16 * 1024;

#[derive(Debug)]
pub struct GatheredStream {
    inner: L4Stream,
    pending: Vec<u8>,
    /// Bytes of `pending` already written.
    written: usize,
    /// A chunked request body on its way to Pingora: bytes to let pass
    /// first (the head, already checked), then the scanner that follows the
    /// body's framing.
    body_check: Option<(usize, ChunkedScanner)>,
}

impl GatheredStream {
    pub fn new(inner: L4Stream) -> GatheredStream {
        GatheredStream {
            inner,
            pending: Vec::new(),
            written: 0,
            body_check: None,
        }
    }

    /// Follows the chunked request body that starts `skip` bytes into what
    /// is read next: a read that brings broken framing, or chunk sizes over
    /// the scanner's limit, fails with `InvalidData` carrying the
    /// `chunked::ChunkError` (the engine answers 400 or 413), at once.
    pub fn check_chunked_body(&mut self, skip: usize, scanner: ChunkedScanner) {
        self.body_check = Some((skip, scanner));
    }

    /// The TCP stream (nothing may be gathered: called before any write).
    pub fn into_inner(self) -> L4Stream {
        debug_assert!(self.pending.is_empty());
        self.inner
    }

    /// Makes `bytes` the next bytes read (bytes read ahead, handed back).
    pub fn rewind(&mut self, bytes: &[u8]) {
        self.inner.rewind(bytes);
    }

    /// Writes out everything gathered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for GatheredStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Never wait for the peer while it waits for bytes still held here.
        if !self.pending.is_empty() {
            ready!(self.poll_drain(cx))?;
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if let Some((skip, scanner)) = &mut self.body_check {
            let read = &buf.filled()[before..];
            let passed = read.len().min(*skip);
            *skip -= passed;
            if read.len() > passed {
                let (_, ended) = scanner.scan(&read[passed..]);
                if ended {
                    let error = scanner.error();
                    self.body_check = None;
                    if let Some(error) = error {
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, error)));
                    }
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for GatheredStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.pending.len() + buf.len() > GATHER_BYTES {
            ready!(self.poll_drain(cx))?;
            if buf.len() >= GATHER_BYTES {
                return Pin::new(&mut self.inner).poll_write(cx, buf);
            }
        }
        self.pending.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for GatheredStream {
    async fn shutdown(&mut self) {
        let _ = self.flush().await;
        Shutdown::shutdown(&mut self.inner).await;
    }
}

impl UniqueID for GatheredStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GatheredStream {}

#[async_trait]
impl Peek for GatheredStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

impl GetTimingDigest for GatheredStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
}

impl GetProxyDigest for GatheredStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for GatheredStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn small_writes_leave_together_on_flush_or_read() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut client = tokio::net::TcpStream::connect(address).await.unwrap();
            let mut got = vec![0u8; 10];
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"head;body;");
            client.write_all(b"next").await.unwrap();
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.unwrap();
            rest
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let mut stream = GatheredStream::new(tcp.into());
        stream.write_all(b"head;").await.unwrap();
        stream.write_all(b"body;").await.unwrap();
        assert_eq!(stream.pending.len(), 10, "gathered, not sent");
        stream.flush().await.unwrap();
        let mut next = [0u8; 4];
        stream.write_all(b"unflushed").await.unwrap();
        // Reading first sends what is gathered (the peer may be waiting for it).
        stream.read_exact(&mut next).await.unwrap();
        assert_eq!(&next, b"next");
        let big = vec![7u8; GATHER_BYTES * 2];
        stream.write_all(&big).await.unwrap();
        Shutdown::shutdown(&mut stream).await;
        drop(stream);
        let rest = client.await.unwrap();
        assert_eq!(&rest[..9], b"unflushed");
        assert_eq!(rest.len(), 9 + big.len());
    }
}
