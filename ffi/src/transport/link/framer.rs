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

    /// Delivers every whole packet stored so far. The framer calls it before
    /// it fails on a header, so packets that came before the violation in
    /// the same chunk still reach the application (docs/knul.md).
    fn flush(&mut self);
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
    /// code 4 for a length over the limit, 3 for a version, 2 otherwise,
    /// or the sink's); packets before it in the chunk have gone to the sink
    /// and were flushed.
    pub async fn feed<S: PacketSink>(&mut self, data: &[u8], sink: &mut S) -> KernelResult<()> {
        let fed = self.feed_packets(data, sink).await;
        if fed.is_err() {
            sink.flush();
        }
        fed
    }

    async fn feed_packets<S: PacketSink>(
        &mut self,
        mut data: &[u8],
        sink: &mut S,
    ) -> KernelResult<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ErrorCode;
    use crate::transport::knul::Kind;
    use std::task::{Context, Poll, Waker};

    const MAX: u32 = 64;

    /// A sink that stores every packet in memory (or drops them all).
    #[derive(Default)]
    struct Packets {
        stored: Vec<(Header, Vec<u8>)>,
        /// Skip every packet, as a link that closed does.
        skipping: bool,
        skipped: usize,
        /// Packets delivered by `flush`.
        flushed: usize,
    }

    impl PacketSink for Packets {
        async fn packet(
            &mut self,
            header: &Header,
            raw: &[u8; KNUL_HEADER_BYTES],
        ) -> KernelResult<Payload> {
            assert_eq!(&header.encode(), raw, "the sink sees the header as it came");
            if self.skipping {
                self.skipped += 1;
                return Ok(Payload::Skip);
            }
            self.stored.push((header.clone(), Vec::new()));
            Ok(Payload::Keep)
        }

        fn payload(&mut self, offset: usize, bytes: &[u8]) {
            let (header, payload) = self.stored.last_mut().expect("a kept packet");
            assert_eq!(offset, payload.len(), "payload bytes arrive in order");
            payload.extend_from_slice(bytes);
            assert!(payload.len() <= header.payload_length as usize);
        }

        fn flush(&mut self) {
            self.flushed = self.stored.len();
        }
    }

    /// Runs a feed to completion. The test sink never waits, so neither may
    /// the framer: a pending future here is a bug.
    fn run<T>(future: impl Future<Output = T>) -> T {
        let mut future = std::pin::pin!(future);
        match future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Ready(value) => value,
            Poll::Pending => panic!("the framer waited although its sink never does"),
        }
    }

    fn header(kind: Kind, flags: u16, payload_length: u32) -> Header {
        Header {
            version: 1,
            kind,
            flags,
            priority: 128,
            payload_length,
            tenant: 0xfeed,
            trace_id: [7; 16],
        }
    }

    /// A reliable data packet: header and payload, back to back.
    fn packet(payload: &[u8]) -> Vec<u8> {
        let mut bytes = header(Kind::Data, 1, payload.len() as u32)
            .encode()
            .to_vec();
        bytes.extend_from_slice(payload);
        bytes
    }

    fn payload_of(length: usize, seed: u8) -> Vec<u8> {
        (0..length)
            .map(|index| seed.wrapping_add(index as u8))
            .collect()
    }

    fn feed_chunks(framer: &mut Framer, chunks: &[&[u8]], sink: &mut Packets) -> KernelResult<()> {
        for chunk in chunks {
            run(framer.feed(chunk, sink))?;
        }
        Ok(())
    }

    fn payloads(sink: &Packets) -> Vec<&[u8]> {
        sink.stored
            .iter()
            .map(|(_, payload)| payload.as_slice())
            .collect()
    }

    fn close_code(error: &KernelError) -> &str {
        error.details.get("closeCode").map_or("", String::as_str)
    }

    fn field(error: &KernelError) -> &str {
        error.details.get("field").map_or("", String::as_str)
    }

    #[test]
    fn a_packet_split_at_every_byte_boundary_arrives_whole() {
        let first = payload_of(23, 1);
        let second = payload_of(0, 0);
        let third = payload_of(5, 100);
        let stream = [packet(&first), packet(&second), packet(&third)].concat();
        for split in 0..=stream.len() {
            let mut framer = Framer::new(MAX);
            let mut sink = Packets::default();
            let (head, tail) = stream.split_at(split);
            run(framer.feed(head, &mut sink)).unwrap();
            // Between the two chunks the framer waits for the rest, unless the
            // split fell between packets.
            let between_packets = [0, 63, 103, stream.len()].contains(&split);
            assert_eq!(framer.idle(), between_packets, "split at {split}");
            run(framer.feed(tail, &mut sink)).unwrap();
            assert!(framer.idle());
            framer.end_of_stream().unwrap();
            assert_eq!(
                payloads(&sink),
                [&first[..], &second[..], &third[..]],
                "split at {split}"
            );
            assert_eq!(sink.stored[0].0, header(Kind::Data, 1, 23));
        }
        // And every boundary at once: one byte per chunk.
        let mut framer = Framer::new(MAX);
        let mut sink = Packets::default();
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        feed_chunks(&mut framer, &bytes, &mut sink).unwrap();
        assert_eq!(payloads(&sink), [&first[..], &second[..], &third[..]]);
    }

    #[test]
    fn several_packets_in_one_chunk_arrive_in_order() {
        let sent: Vec<Vec<u8>> = (0..10)
            .map(|index| payload_of(index * 3, index as u8))
            .collect();
        let chunk = sent
            .iter()
            .map(|payload| packet(payload))
            .collect::<Vec<_>>()
            .concat();
        let mut framer = Framer::new(MAX);
        let mut sink = Packets::default();
        run(framer.feed(&chunk, &mut sink)).unwrap();
        assert_eq!(payloads(&sink), sent);
        assert!(framer.idle());
    }

    #[test]
    fn a_zero_length_payload_is_a_whole_packet() {
        let mut framer = Framer::new(MAX);
        let mut sink = Packets::default();
        run(framer.feed(&packet(&[]), &mut sink)).unwrap();
        assert_eq!(sink.stored.len(), 1);
        assert_eq!(sink.stored[0].0.payload_length, 0);
        assert!(sink.stored[0].1.is_empty());
        assert!(framer.idle(), "nothing is pending after an empty payload");
    }

    #[test]
    fn a_packet_of_exactly_max_packet_is_taken_one_byte_more_closes_with_code_4() {
        let mut framer = Framer::new(MAX);
        let mut sink = Packets::default();
        let largest = payload_of(MAX as usize, 9);
        run(framer.feed(&packet(&largest), &mut sink)).unwrap();
        assert_eq!(payloads(&sink), [&largest[..]]);

        let mut framer = Framer::new(MAX);
        let mut sink = Packets::default();
        let error =
            run(framer.feed(&packet(&payload_of(MAX as usize + 1, 0)), &mut sink)).unwrap_err();
        assert_eq!(error.code, ErrorCode::Protocol);
        assert_eq!(close_code(&error), "4");
        assert_eq!(field(&error), "too_large");
        assert!(
            error.message.contains("65 bytes, over maxPacketBytes (64)"),
            "{}",
            error.message
        );
        assert!(
            sink.stored.is_empty(),
            "nothing of a refused packet is stored"
        );
    }

    #[test]
    fn the_limit_is_checked_from_the_header_alone() {
        // A header announcing too much is refused before any payload arrives.
        let mut framer = Framer::new(MAX);
        let mut sink = Packets::default();
        let error =
            run(framer.feed(&header(Kind::Data, 1, u32::MAX).encode(), &mut sink)).unwrap_err();
        assert_eq!(close_code(&error), "4");
    }

    /// A valid packet that arrives in the same read as a later malformed
    /// header is delivered: the framer flushes the packets before the bad
    /// header to its sink (the receive pump publishes them to JS) and only
    /// then fails.
    #[test]
    fn a_malformed_header_after_valid_packets_in_the_same_chunk() {
        let first = payload_of(4, 1);
        let second = payload_of(0, 0);
        let mut garbage = packet(&[1, 2, 3]);
        garbage[0..4].copy_from_slice(b"HTTP");
        let chunk = [packet(&first), packet(&second), garbage].concat();
        let mut framer = Framer::new(MAX);
        let mut sink = Packets::default();
        let error = run(framer.feed(&chunk, &mut sink)).unwrap_err();
        assert_eq!(error.code, ErrorCode::Protocol);
        assert_eq!(close_code(&error), "2");
        assert_eq!(field(&error), "magic");
        assert_eq!(
            payloads(&sink),
            [&first[..], &second[..]],
            "handed over before the error"
        );
        assert_eq!(sink.flushed, 2, "and flushed (delivered) before the error");
    }

    #[test]
    fn unknown_kinds_flags_versions_and_reserved_bytes_are_refused_with_their_code() {
        let valid = header(Kind::Data, 1, 3).encode();
        // (what, header byte, its new value, close code, field named)
        let cases = [
            ("unknown kind", 5, 6, "2", "kind"),
            ("kind 0", 5, 0, "2", "kind"),
            ("unknown flag bit", 6, 0b101, "2", "flags"),
            ("high flag byte", 7, 0x80, "2", "flags"),
            ("another version", 4, 2, "3", "version"),
            ("reserved byte", 10, 1, "2", "reserved"),
        ];
        for (name, at, value, code, expected_field) in cases {
            let mut bytes = [valid.to_vec(), vec![0; 3]].concat();
            bytes[at] = value;
            let mut framer = Framer::new(MAX);
            let mut sink = Packets::default();
            let error = run(framer.feed(&bytes, &mut sink)).unwrap_err();
            assert_eq!(error.code, ErrorCode::Protocol, "{name}");
            assert_eq!(close_code(&error), code, "{name}");
            assert_eq!(field(&error), expected_field, "{name}");
            assert!(sink.stored.is_empty(), "{name}: nothing of it is stored");
        }
    }

    #[test]
    fn known_control_kinds_and_flags_pass_the_framer_for_the_sink_to_judge() {
        // The framer refuses only what the header codec refuses; a control
        // kind or a missing reliable flag on the data stream is the sink's
        // call (the link's sink ends the link with code 2 for them).
        let mut framer = Framer::new(MAX);
        let mut sink = Packets::default();
        let stream = [
            header(Kind::Ping, 0b11, 0).encode().to_vec(),
            header(Kind::Data, 0, 0).encode().to_vec(),
        ]
        .concat();
        run(framer.feed(&stream, &mut sink)).unwrap();
        let kinds: Vec<(Kind, u16)> = sink.stored.iter().map(|(h, _)| (h.kind, h.flags)).collect();
        assert_eq!(kinds, [(Kind::Ping, 0b11), (Kind::Data, 0)]);
    }

    #[test]
    fn skipped_packets_are_read_past_even_across_chunks() {
        let mut framer = Framer::new(MAX);
        let mut sink = Packets {
            skipping: true,
            ..Packets::default()
        };
        let stream = [packet(&payload_of(30, 0)), packet(&payload_of(2, 0))].concat();
        let (head, tail) = stream.split_at(50);
        run(framer.feed(head, &mut sink)).unwrap();
        assert!(!framer.idle());
        assert_eq!(
            framer.end_of_stream().unwrap_err().message,
            "the peer ended its stream after a packet (20 payload bytes missing)"
        );
        run(framer.feed(tail, &mut sink)).unwrap();
        assert!(framer.idle());
        assert_eq!(sink.skipped, 2);
        assert!(sink.stored.is_empty());
    }

    #[test]
    fn a_stream_that_ends_or_drops_mid_packet_says_how_far_it_got() {
        let mut framer = Framer::new(MAX);
        let mut sink = Packets::default();
        run(framer.feed(&packet(&[0; 10])[..17], &mut sink)).unwrap();
        let error = framer.end_of_stream().unwrap_err();
        assert_eq!(close_code(&error), "2");
        assert_eq!(
            error.message,
            "the peer ended its stream after 17 of 40 header bytes"
        );

        let mut framer = Framer::new(MAX);
        run(framer.feed(&packet(&[0; 10])[..45], &mut sink)).unwrap();
        let lost = KernelError::new(ErrorCode::Connection, "the peer reset the connection");
        let error = framer.cut_short(lost);
        assert_eq!(
            error.message,
            "the peer reset the connection (the link dropped after 5 of 10 bytes of a packet's payload)"
        );
        assert_eq!(
            error.details.get("midPacket").map(String::as_str),
            Some("true")
        );
        // Between packets a lost connection's error is left as it is.
        let idle = Framer::new(MAX).cut_short(KernelError::new(ErrorCode::Connection, "gone"));
        assert_eq!(idle.message, "gone");
        assert!(!idle.details.contains_key("midPacket"));
    }
}
