//! Control packets (docs/knul.md, "Mapping onto QUIC"): `hello`, `ping`,
//! `pong` and `close` travel on the one bidirectional stream the client
//! opens, each a header plus at most `CONTROL_MAX_PAYLOAD` bytes. The hello
//! exchange and the close handshake both speak through these two functions.

use super::codes::{CLOSE_PROTOCOL, FLAG_FINAL, FLAG_RELIABLE};
use super::errors::{header_refused, protocol_error, read_exact_error};
use crate::error::KernelResult;
use crate::transport::knul::{Header, Kind, KNUL_HEADER_BYTES, KNUL_VERSION};

/// Largest control packet payload (hello, close reason).
const CONTROL_MAX_PAYLOAD: u32 = 4096;

/// Encodes one control packet: header (highest priority, no context) and
/// payload.
pub fn control_packet(kind: Kind, flags: u16, payload: &[u8]) -> Vec<u8> {
    let header = Header {
        version: KNUL_VERSION,
        kind,
        flags,
        priority: 255,
        payload_length: payload.len() as u32,
        tenant: 0,
        trace_id: [0; 16],
    };
    let mut packet = header.encode().to_vec();
    packet.extend_from_slice(payload);
    packet
}

/// Reads one control packet (header + payload). A stream that ends cleanly
/// between packets is an error with the `endOfStream` detail, so the
/// control reader can tell "the peer is done" from "the peer broke off".
pub async fn read_control(recv: &mut quinn::RecvStream) -> KernelResult<(Header, Vec<u8>)> {
    let mut header = [0u8; KNUL_HEADER_BYTES];
    recv.read_exact(&mut header)
        .await
        .map_err(|error| match error {
            // Finished between packets: the peer sends no more control packets.
            quinn::ReadExactError::FinishedEarly(0) => {
                protocol_error(CLOSE_PROTOCOL, "the peer's control stream ended".into())
                    .with_detail("endOfStream", "true")
            }
            error => read_exact_error(error, "control packet"),
        })?;
    let header = Header::decode(&header, CONTROL_MAX_PAYLOAD)
        .map_err(|e| header_refused(&e, "control packet"))?;
    // Control packets carry the reliable flag; `final` only on a `close`.
    let allowed = if header.kind == Kind::Close {
        FLAG_RELIABLE | FLAG_FINAL
    } else {
        FLAG_RELIABLE
    };
    if header.flags & FLAG_RELIABLE == 0 || header.flags & !allowed != 0 {
        return Err(protocol_error(
            CLOSE_PROTOCOL,
            format!(
                "the peer sent a {:?} control packet with flags {:#x}",
                header.kind, header.flags
            ),
        )
        .with_detail("field", "flags"));
    }
    let mut payload = vec![0u8; header.payload_length as usize];
    recv.read_exact(&mut payload)
        .await
        .map_err(|error| read_exact_error(error, "control packet"))?;
    Ok((header, payload))
}
