//! The framer: cuts the peer's reliable stream into packets (docs/knul.md,
//! "Mapping onto QUIC"). QUIC hands the stream over in chunks of any size,
//! so a header or a payload may be split across any number of chunks and one
//! chunk may hold many packets; the framer keeps what it has of the current
//! header or payload between chunks.
//!
//! Every header is decoded against the link's `maxPacketBytes` before any of
//! its payload is taken, so a refused header ends the stream with its close
//! code and its payload never reaches JS. Where packets go is the
//! [`PacketSink`]'s business (the link's receive ring in the receive pump, a
//! vector in the tests below): the framer itself knows nothing of QUIC or
//! rings, and waits only when its sink does.

use super::codes::CLOSE_PROTOCOL;
use super::errors::{header_refused, protocol_error};
use crate::error::{KernelError, KernelResult};
use crate::transport::knul::{Header, KNUL_HEADER_BYTES};
use std::future::Future;

/// What a sink does with a packet whose header it was shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// Stored: its payload follows through [`PacketSink::payload`].
    Keep,
    /// Dropped (e.g. this side closed): the framer skips its payload.
    Skip,
}

/// Where the framer puts the packets it cuts out of the stream.
pub trait PacketSink {
    /// A header arrived and decoded within the limit; `raw` is its 40 bytes
    /// as they came. The sink checks what the framer cannot (kind, channel,
    /// tenant: an error ends the stream) and keeps or skips the packet. It
    /// may wait, e.g. for ring space: that is the link's back-pressure.
    /// (`Send`: the receive pump runs on a multi-threaded runtime.)
    fn packet(
        &mut self,
        header: &Header,
        raw: &[u8; KNUL_HEADER_BYTES],
    ) -> impl Future<Output = KernelResult<Payload>> + Send;

    /// The next bytes of the payload of the packet kept last, `offset` bytes
    /// into it. Never reaches past the length its header announced.
    fn payload(&mut self, offset: usize, bytes: &[u8]);
}

/// The framing state of one reliable stream.
pub struct Framer {
    /// The largest payload this side accepts (`maxPacketBytes`).
    max_packet: u32,
    header: [u8; KNUL_HEADER_BYTES],
    /// Bytes of the next header received so far.
    header_bytes: usize,
    /// The payload being stored: bytes written so far, total.
    payload: Option<(usize, usize)>,
    /// Payload bytes still to drop (a packet the sink skipped).
    skip: usize,
}

impl Framer {
    pub fn new(max_packet: u32) -> Framer {
        Framer {
            max_packet,
            header: [0; KNUL_HEADER_BYTES],
            header_bytes: 0,
            payload: None,
            skip: 0,
        }
    }

    /// Between packets: nothing of a header or payload is pending.
    pub fn idle(&self) -> bool {
        self.header_bytes == 0 && self.payload.is_none() && self.skip == 0
    }

    /// Adds to a lost connection's error how much of a packet had arrived.
    pub fn cut_short(&self, error: KernelError) -> KernelError {
        if self.idle() {
            return error;
        }
        let message = format!(
            "{} (the link dropped after {})",
            error.message,
            self.describe_partial()
        );
        KernelError { message, ..error }.with_detail("midPacket", "true")
    }

    /// The peer finished its stream: a protocol error if it stopped in the
    /// middle of a packet.
    pub fn end_of_stream(&self) -> KernelResult<()> {
        if self.idle() {
            return Ok(());
        }
        Err(protocol_error(
            CLOSE_PROTOCOL,
            format!(
                "the peer ended its stream after {}",
                self.describe_partial()
            ),
        ))
    }

    /// What is missing of a packet cut off by the end of the stream.
    fn describe_partial(&self) -> String {
        match self.payload {
            Some((written, total)) => {
                format!("{written} of {total} bytes of a packet's payload")
            }
            None if self.skip > 0 => format!("a packet ({} payload bytes missing)", self.skip),
            None => format!("{} of {KNUL_HEADER_BYTES} header bytes", self.header_bytes),
        }
    }

    /// Takes the next chunk of the stream: completes the pending header or
    /// payload, then every packet the chunk holds, and keeps the rest for
    /// the next chunk. A refused header stops at once with its error (close
    /// code 4 for a length over the limit, 3 for a version, 2 otherwise);
    /// packets before it in the chunk have already gone to the sink.
    pub async fn feed<S: PacketSink>(&mut self, mut data: &[u8], sink: &mut S) -> KernelResult<()> {
        while !data.is_empty() {
            if self.skip > 0 {
                let take = self.skip.min(data.len());
                self.skip -= take;
                data = &data[take..];
                continue;
            }
            if let Some((written, total)) = self.payload.as_mut() {
                let take = (*total - *written).min(data.len());
                sink.payload(*written, &data[..take]);
                *written += take;
                data = &data[take..];
                if written == total {
                    self.payload = None;
                }
                continue;
            }
            let take = (KNUL_HEADER_BYTES - self.header_bytes).min(data.len());
            self.header[self.header_bytes..self.header_bytes + take].copy_from_slice(&data[..take]);
            self.header_bytes += take;
            data = &data[take..];
            if self.header_bytes < KNUL_HEADER_BYTES {
                break;
            }
            self.header_bytes = 0;
            let header = Header::decode(&self.header, self.max_packet)
                .map_err(|error| header_refused(&error, "packet"))?;
            let length = header.payload_length as usize;
            match sink.packet(&header, &self.header).await? {
                Payload::Skip => self.skip = length,
                Payload::Keep if length > 0 => self.payload = Some((0, length)),
                Payload::Keep => {}
            }
        }
        Ok(())
    }
}

