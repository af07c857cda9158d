//! The hello exchange (docs/knul.md, "Handshake"), both sides: after TLS
//! the client opens the control stream and offers its versions and packet
//! limit, the server answers with the version it picked and its own limit
//! (or closes the connection with the code and reason of its refusal).
//! Nothing else may be sent before it.

use super::codes::{CLOSE_PROTOCOL, CLOSE_VERSION, FLAG_RELIABLE};
use super::control::{control_packet, read_control};
use super::errors::{connection_error, protocol_error, write_error};
use crate::error::KernelResult;
use crate::transport::knul::{Kind, KNUL_VERSION};
use std::time::Duration;

/// How long the hello exchange may take after TLS.
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
    let (header, payload) = read_control(&mut control_recv).await?;
    if header.kind != Kind::Hello || payload.len() != 5 || payload[4] != KNUL_VERSION {
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

/// Server side of the hello exchange. A refusal closes the connection with
/// the close code and reason (the peer sees both) and returns the error.
pub async fn server_hello(conn: quinn::Connection, max_packet: u32) -> KernelResult<Established> {
    let outcome = async {
        let (mut control_send, mut control_recv) =
            conn.accept_bi().await.map_err(|e| connection_error(&e))?;
        let (header, payload) = read_control(&mut control_recv).await?;
        if header.kind != Kind::Hello || payload.len() < 5 {
            return Err(protocol_error(
                CLOSE_PROTOCOL,
                format!(
                    "the peer's first packet was a {:?}, not a hello",
                    header.kind
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
        let peer_max = u32::from_le_bytes(payload[..4].try_into().expect("4 bytes"));
        write_hello(&mut control_send, max_packet).await?;
        Ok(Established {
            conn: conn.clone(),
            control_send,
            control_recv,
            peer_max,
        })
    };
    match tokio::time::timeout(HELLO_TIMEOUT, outcome).await {
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
            let error = protocol_error(CLOSE_PROTOCOL, "the peer sent no hello within 10 s".into());
            conn.close(
                quinn::VarInt::from_u32(CLOSE_PROTOCOL),
                error.message.as_bytes(),
            );
            Err(error)
        }
    }
}
