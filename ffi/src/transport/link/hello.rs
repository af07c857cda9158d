//! The hello exchange (docs/knul.md, "Handshake"), both sides: after TLS
//! the client opens the control stream and offers its versions and packet
//! limit, the server answers with the version it picked and its own limit
//! (or closes the connection with the code and reason of its refusal).
//! Nothing else may be sent before it.

use super::codes::{CLOSE_PROTOCOL, CLOSE_VERSION, FLAG_RELIABLE};
use super::control::{control_packet, read_control};
use super::errors::{connection_error, protocol_error, write_error};
use crate::error::KernelResult;
use crate::transport::knul::{Header, Kind, KNUL_VERSION};
use std::time::Duration;

/// How long the hello exchange may take after TLS (a listener under
/// pressure gives newcomers less: `listener.rs`).
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection that finished TLS and the hello exchange.
pub struct Established {
    pub conn: quinn::Connection,
    pub control_send: quinn::SendStream,
    pub control_recv: quinn::RecvStream,
    /// The largest payload the peer accepts.
    pub peer_max: u32,
}

/// Sends this side's `hello`: `[max_packet_bytes u32][versions]` (the
/// client offers the versions it speaks, the server names the one it picked;
/// both are version 1 here).
async fn write_hello(send: &mut quinn::SendStream, max_packet: u32) -> KernelResult<()> {
    let mut payload = max_packet.to_le_bytes().to_vec();
    payload.push(KNUL_VERSION);
    send.write_all(&control_packet(Kind::Hello, FLAG_RELIABLE, &payload))
        .await
        .map_err(write_error)
}

/// Client side of the hello exchange: offers our version and limit, learns the peer's.
pub async fn client_hello(conn: quinn::Connection, max_packet: u32) -> KernelResult<Established> {
    let (mut control_send, mut control_recv) =
        conn.open_bi().await.map_err(|e| connection_error(&e))?;
    write_hello(&mut control_send, max_packet).await?;
    let (header, payload) = match read_control(&mut control_recv).await {
        Ok(packet) => packet,
        Err(error) => {
            // A malformed answer: the server learns why, with its code.
            if let Some(code) = error.details.get("closeCode").and_then(|c| c.parse().ok()) {
                conn.close(quinn::VarInt::from_u32(code), error.message.as_bytes());
            }
            return Err(error);
        }
    };
    // The server's hello: on its half of the control stream, flags exactly
    // `reliable`, `[max_packet_bytes u32][the chosen version]`.
    if header.kind != Kind::Hello
        || header.flags != FLAG_RELIABLE
        || payload.len() != 5
        || payload[4] != KNUL_VERSION
    {
        let error = protocol_error(
            CLOSE_PROTOCOL,
            "the server answered the hello with something else than a KNUL v1 hello".into(),
        );
        conn.close(
            quinn::VarInt::from_u32(CLOSE_PROTOCOL),
            error.message.as_bytes(),
        );
        return Err(error);
    }
    let peer_max = u32::from_le_bytes(payload[..4].try_into().expect("4 bytes"));
    Ok(Established {
        conn,
        control_send,
        control_recv,
        peer_max,
    })
}

/// Checks the client's hello: kind `hello`, flags exactly `reliable`,
/// `[max_packet_bytes u32]` then at least one version. Returns the peer's
/// limit. A hello too short for its limit is malformed (code 2); one that
/// offers no version this side speaks, none at all included, is a version
/// mismatch (code 3).
pub fn check_client_hello(header: &Header, payload: &[u8]) -> KernelResult<u32> {
    if header.kind != Kind::Hello {
        return Err(protocol_error(
            CLOSE_PROTOCOL,
            format!(
                "the peer's first packet was a {:?}, not a hello",
                header.kind
            ),
        ));
    }
    if header.flags != FLAG_RELIABLE {
        return Err(protocol_error(
            CLOSE_PROTOCOL,
            format!(
                "the peer's hello has flags {:#x} (a hello carries exactly the reliable flag)",
                header.flags
            ),
        )
        .with_detail("field", "flags"));
    }
    if payload.len() < 4 {
        return Err(protocol_error(
            CLOSE_PROTOCOL,
            format!(
                "the peer's hello has {} payload bytes (at least 4: its maxPacketBytes)",
                payload.len()
            ),
        ));
    }
    if !payload[4..].contains(&KNUL_VERSION) {
        return Err(protocol_error(
            CLOSE_VERSION,
            format!(
                "knul: this peer speaks version {KNUL_VERSION} only (offered: {:?})",
                &payload[4..]
            ),
        ));
    }
    Ok(u32::from_le_bytes(
        payload[..4].try_into().expect("4 bytes"),
    ))
}

/// Server side of the hello exchange, within `deadline`. Nothing but the
/// hello may come before it: a stream or datagram that arrives first is a
/// protocol error (the client cannot know this side's limit yet). `admit`
/// runs between the client's hello and the answer (the listener's budget):
/// its error refuses the link with its `closeCode`. A refusal closes the
/// connection with the close code and reason (the peer sees both) and
/// returns the error.
pub async fn server_hello<R>(
    conn: quinn::Connection,
    max_packet: u32,
    deadline: Duration,
    admit: impl FnOnce() -> KernelResult<R>,
) -> KernelResult<(Established, R)> {
    let outcome = async {
        let early = || {
            protocol_error(
                CLOSE_PROTOCOL,
                "the peer sent data before the hello exchange".into(),
            )
        };
        let (mut control_send, mut control_recv) = tokio::select! {
            biased;
            control = conn.accept_bi() => control.map_err(|e| connection_error(&e))?,
            Ok(_) = conn.accept_uni() => return Err(early()),
            Ok(_) = conn.read_datagram() => return Err(early()),
        };
        let (header, payload) = tokio::select! {
            biased;
            hello = read_control(&mut control_recv) => hello?,
            Ok(_) = conn.accept_uni() => return Err(early()),
            Ok(_) = conn.read_datagram() => return Err(early()),
        };
        let peer_max = check_client_hello(&header, &payload)?;
        let admitted = admit()?;
        write_hello(&mut control_send, max_packet).await?;
        let established = Established {
            conn: conn.clone(),
            control_send,
            control_recv,
            peer_max,
        };
        Ok((established, admitted))
    };
    match tokio::time::timeout(deadline, outcome).await {
        Ok(Ok(established)) => Ok(established),
        Ok(Err(error)) => {
            let code = error
                .details
                .get("closeCode")
                .and_then(|code| code.parse().ok())
                .unwrap_or(CLOSE_PROTOCOL);
            conn.close(quinn::VarInt::from_u32(code), error.message.as_bytes());
            Err(error)
        }
        Err(_) => {
            let error = protocol_error(
                CLOSE_PROTOCOL,
                format!("the peer sent no hello within {} ms", deadline.as_millis()),
            );
            conn.close(
                quinn::VarInt::from_u32(CLOSE_PROTOCOL),
                error.message.as_bytes(),
            );
            Err(error)
        }
    }
}
