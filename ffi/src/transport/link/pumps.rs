//! The two pumps that move a link's packets between QUIC and its rings.
//!
//! - The receive pump reads the peer's reliable stream (through the
//!   [`Framer`]) and its datagrams, checks every header before JS sees it,
//!   and copies each packet once, from QUIC's buffer into the kernel → JS
//!   ring. When that ring is full it stops reading, so QUIC flow control
//!   slows the sender: back-pressure.
//! - The send pump drains the JS → kernel ring in batches: reliable packets
//!   are written back to back on this side's stream (one write per batch;
//!   large ones leased out of the ring instead of copied, see `lease.rs`),
//!   unreliable ones become datagrams.

use super::codes::{CLOSE_POLICY, CLOSE_PROTOCOL, FLAG_FINAL, FLAG_RELIABLE, LINK_RECORD_PACKET};
use super::errors::{connection_error, header_refused, protocol_error, read_error, write_error};
use super::framer::{Framer, PacketSink, Payload};
use super::state::Link;
use crate::error::{KernelError, KernelResult};
use crate::proto::ErrorCode;
use crate::ring::Producer;
use crate::transport::knul::{Header, Kind, KNUL_HEADER_BYTES};
use crate::transport::lease::LeasingConsumer;
use bytes::{Bytes, BytesMut};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Reliable packets at least this large go from the send ring to quinn
/// without a copy (smaller ones are cheaper to copy into one batch).
const ZERO_COPY_BYTES: usize = 64 << 10;
/// Stream chunks taken from quinn per read.
const CHUNKS_PER_READ: usize = 32;

/// Checks a data packet's kind, channel and tenant.
fn check_data(link: &Link, header: &Header, reliable: bool) -> KernelResult<()> {
    if header.kind != Kind::Data {
        return Err(protocol_error(
            CLOSE_PROTOCOL,
            format!(
                "the peer sent a {:?} packet where data was expected",
                header.kind
            ),
        ));
    }
    if header.flags & FLAG_FINAL != 0 {
        return Err(protocol_error(
            CLOSE_PROTOCOL,
            "the peer sent a data packet with the final flag (only a close confirmation carries it)"
                .into(),
        )
        .with_detail("field", "flags"));
    }
    if (header.flags & FLAG_RELIABLE != 0) != reliable {
        return Err(protocol_error(
            CLOSE_PROTOCOL,
            "the peer's packet flags do not match the channel it came on (reliable flag)".into(),
        ));
    }
    if let Some(tenants) = &link.tenants {
        if !tenants.contains(&header.tenant) {
            return Err(protocol_error(
                CLOSE_POLICY,
                format!("the peer sent a packet for a tenant this listener does not serve (tenant hash {:#x})", header.tenant),
            ));
        }
    }
    Ok(())
}

/// The receive ring as the framer's sink: each packet becomes one record
/// (header, then payload), written in place and published by the pump.
struct RingSink<'a> {
    link: &'a Link,
    producer: Producer,
    /// The payload of the record being filled: its address (a `usize`: a raw
    /// pointer would make the task !Send) and its length.
    record: (usize, usize),
}

impl PacketSink for RingSink<'_> {
    async fn packet(
        &mut self,
        header: &Header,
        raw: &[u8; KNUL_HEADER_BYTES],
    ) -> KernelResult<Payload> {
        let link = self.link;
        check_data(link, header, true)?;
        let length = header.payload_length as usize;
        if link.discarding.load(Ordering::SeqCst) {
            link.counters.discarded.fetch_add(1, Ordering::Relaxed);
            return Ok(Payload::Skip);
        }
        let payload = match write_record(&mut self.producer, raw, length).await {
            Ok(payload) => payload,
            // This side closed while the ring was full: drop the rest.
            Err(error)
                if error.code == ErrorCode::Closed && link.discarding.load(Ordering::SeqCst) =>
            {
                link.counters.discarded.fetch_add(1, Ordering::Relaxed);
                return Ok(Payload::Skip);
            }
            Err(error) => return Err(error),
        };
        link.counters
            .packets_received
            .fetch_add(1, Ordering::Relaxed);
        link.counters
            .bytes_received
            .fetch_add(length as u64, Ordering::Relaxed);
        self.record = (payload, length);
        Ok(Payload::Keep)
    }

    fn payload(&mut self, offset: usize, bytes: &[u8]) {
        let (address, length) = self.record;
        // The framer's contract; checked because the copy below trusts it.
        assert!(
            offset + bytes.len() <= length,
            "the framer wrote past a packet's payload"
        );
        // SAFETY: the record was reserved with `length` payload bytes at
        // `address` (checked to hold `offset + bytes.len()` above); JS does
        // not read it before it is published.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                (address as *mut u8).add(offset),
                bytes.len(),
            )
        };
    }

    fn flush(&mut self) {
        self.producer.publish();
    }
}

/// Reserves a packet record (waiting for space: back-pressure), writes its
/// header and returns the payload's address.
async fn write_record(
    producer: &mut Producer,
    header: &[u8; KNUL_HEADER_BYTES],
    length: usize,
) -> KernelResult<usize> {
    let size = (KNUL_HEADER_BYTES + length) as u32;
    // Addresses are kept as usize: a raw pointer would make the task !Send.
    let reserved = producer
        .try_reserve(size, LINK_RECORD_PACKET)?
        .map(|record| record as usize);
    let record = match reserved {
        Some(record) => record,
        None => producer
            .reserve(size, LINK_RECORD_PACKET)
            .await?
            .map(|record| record as usize)
            .ok_or_else(|| KernelError::new(ErrorCode::Closed, "the link closed"))?,
    };
    // SAFETY: the reservation holds header + payload bytes at `record`.
    unsafe { std::ptr::copy_nonoverlapping(header.as_ptr(), record as *mut u8, KNUL_HEADER_BYTES) };
    Ok(record + KNUL_HEADER_BYTES)
}

/// One datagram: checked like a stream packet, dropped when JS is behind.
fn receive_datagram(link: &Link, datagram: &[u8], producer: &mut Producer) -> KernelResult<()> {
    let header = Header::decode(datagram, link.max_packet)
        .map_err(|error| header_refused(&error, "datagram"))?;
    if datagram.len() != KNUL_HEADER_BYTES + header.payload_length as usize {
        return Err(protocol_error(
            CLOSE_PROTOCOL,
            format!(
                "the peer sent a datagram of {} bytes whose header announces {} payload bytes",
                datagram.len(),
                header.payload_length
            ),
        ));
    }
    check_data(link, &header, false)?;
    if link.discarding.load(Ordering::SeqCst) {
        return Ok(());
    }
    match producer.try_reserve(datagram.len() as u32, LINK_RECORD_PACKET)? {
        Some(record) => {
            // SAFETY: the reservation holds `datagram.len()` bytes.
            unsafe { std::ptr::copy_nonoverlapping(datagram.as_ptr(), record, datagram.len()) };
            link.counters
                .packets_received
                .fetch_add(1, Ordering::Relaxed);
            link.counters
                .bytes_received
                .fetch_add(u64::from(header.payload_length), Ordering::Relaxed);
        }
        None => {
            link.counters
                .datagrams_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Runs the receive side until the peer's stream ends or the link fails;
/// leaves the outcome for the close paths.
pub async fn receive_pump(link: Arc<Link>) {
    let outcome = receive(&link).await;
    if let Err(error) = &outcome {
        link.fail(error.clone());
    }
    *link
        .receive_outcome
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(outcome);
    link.receive_exited.set();
}

async fn receive(link: &Link) -> KernelResult<()> {
    let mut sink = RingSink {
        link,
        producer: Producer::new(Arc::clone(&link.recv_ring)),
        record: (0, 0),
    };
    let mut framer = Framer::new(link.max_packet);
    let mut stream: Option<quinn::RecvStream> = None;
    let mut stream_done = false;
    let mut chunks: [Bytes; CHUNKS_PER_READ] = Default::default();
    loop {
        tokio::select! {
            // Stream first: when the connection drops, its error says how
            // much of a packet had arrived.
            biased;
            accepted = link.conn.accept_uni(), if stream.is_none() && !stream_done => {
                let accepted = accepted.map_err(|error| connection_error(&error));
                stream = Some(accepted.map_err(|error| framer.cut_short(error))?);
            }
            read = async { stream.as_mut().expect("guarded").read_chunks(&mut chunks).await },
                if stream.is_some() => {
                match read {
                    // Several chunks per call: one lock of the connection
                    // state for up to CHUNKS_PER_READ QUIC frames.
                    Ok(Some(count)) => {
                        for chunk in &chunks[..count] {
                            framer.feed(chunk, &mut sink).await?;
                        }
                    }
                    Ok(None) => {
                        framer.end_of_stream()?;
                        stream = None;
                        stream_done = true;
                    }
                    Err(error) => return Err(framer.cut_short(read_error(error))),
                }
            }
            datagram = link.conn.read_datagram() => {
                let datagram = datagram.map_err(|error| framer.cut_short(connection_error(&error)))?;
                receive_datagram(link, &datagram, &mut sink.producer)?;
            }
        }
        if framer.idle() {
            sink.producer.publish();
        }
        if stream_done {
            // Every reliable packet has arrived; datagrams after the peer's
            // close are not worth waiting for.
            sink.producer.publish();
            return Ok(());
        }
    }
}

/// Runs the send side until the send ring closes and the peer acknowledged
/// every byte, or the link fails; leaves the outcome for the close paths.
pub async fn send_pump(link: Arc<Link>) {
    let outcome = send(&link).await;
    if let Err(error) = &outcome {
        link.fail(error.clone());
    }
    *link.send_outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
    link.send_exited.set();
}

async fn send(link: &Link) -> KernelResult<()> {
    let mut stream = link
        .conn
        .open_uni()
        .await
        .map_err(|error| connection_error(&error))?;
    let mut consumer = LeasingConsumer::new(Arc::clone(&link.send_ring));
    let mut batch = BytesMut::new();
    let mut datagrams: Vec<Bytes> = Vec::new();
    loop {
        let more = consumer.readable().await;
        let mut refused: Option<KernelError> = None;
        let (mut packets, mut bytes) = (0u64, 0u64);
        // The stream's next bytes, in order: copied runs of small packets,
        // and `None` where a large packet goes out of the ring as is.
        let mut chunks: Vec<Option<Bytes>> = Vec::new();
        let leases = consumer.drain(|_tag, record| {
            if refused.is_some() {
                return false;
            }
            match Header::decode(record, link.peer_max) {
                Ok(header)
                    if header.kind == Kind::Data
                        && record.len() == KNUL_HEADER_BYTES + header.payload_length as usize =>
                {
                    packets += 1;
                    bytes += u64::from(header.payload_length);
                    if header.flags & FLAG_RELIABLE == 0 {
                        datagrams.push(Bytes::copy_from_slice(record));
                        false
                    } else if record.len() >= ZERO_COPY_BYTES {
                        if !batch.is_empty() {
                            chunks.push(Some(batch.split().freeze()));
                        }
                        chunks.push(None);
                        true
                    } else {
                        batch.extend_from_slice(record);
                        false
                    }
                }
                _ => {
                    refused = Some(KernelError::invalid_argument(
                        "the link's send ring holds a record that is not a valid KNUL data packet",
                    ));
                    false
                }
            }
        })?;
        if let Some(error) = refused {
            return Err(error);
        }
        if !batch.is_empty() {
            chunks.push(Some(batch.split().freeze()));
        }
        for datagram in datagrams.drain(..) {
            match link.conn.send_datagram(datagram) {
                Ok(()) => {}
                Err(quinn::SendDatagramError::ConnectionLost(error)) => {
                    return Err(connection_error(&error))
                }
                // Too large for the path now, or the peer disabled datagrams:
                // unreliable packets may be lost; count it.
                Err(_) => {
                    link.counters
                        .datagrams_dropped
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if !chunks.is_empty() {
            // A leased packet's ring space comes back when quinn drops its
            // bytes (acknowledged): the ring bounds what is in flight.
            let mut leases = leases.into_iter();
            let mut chunks: Vec<Bytes> = chunks
                .into_iter()
                .map(|chunk| {
                    chunk.unwrap_or_else(|| {
                        Bytes::from_owner(leases.next().expect("one lease per large packet"))
                    })
                })
                .collect();
            stream
                .write_all_chunks(&mut chunks)
                .await
                .map_err(write_error)?;
        }
        link.counters
            .packets_sent
            .fetch_add(packets, Ordering::Relaxed);
        link.counters.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
        if !more {
            break;
        }
    }
    // The ring closed (graceful close): finish the stream and wait until
    // the peer's QUIC stack acknowledged every byte of it.
    let _ = stream.finish();
    match stream.stopped().await {
        Ok(None) => Ok(()),
        Ok(Some(code)) => Err(KernelError::new(
            ErrorCode::Connection,
            format!("the peer stopped reading this link's packets (code {code})"),
        )),
        Err(quinn::StoppedError::ConnectionLost(error)) => Err(connection_error(&error)),
        Err(error) => Err(KernelError::new(
            ErrorCode::Connection,
            format!("sending: {error}"),
        )),
    }
}
