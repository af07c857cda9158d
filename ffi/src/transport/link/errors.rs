//! How a link's failures become typed errors: refused headers carry the
//! close code the link ends with (docs/knul.md, "Close codes"), and QUIC's
//! connection, read and write errors say what happened in words JS can show.

use super::codes::{CLOSE_PROTOCOL, CLOSE_TOO_LARGE, CLOSE_VERSION};
use crate::error::KernelError;
use crate::proto::ErrorCode;
use crate::transport::knul::{HeaderError, KNUL_VERSION};

/// A violation of the protocol by the peer; `code` is the close code the
/// link ends with (the `closeCode` detail carries it to the close paths).
pub fn protocol_error(code: u32, message: String) -> KernelError {
    KernelError::new(ErrorCode::Protocol, message).with_detail("closeCode", code.to_string())
}

/// The close code and message for a refused header.
pub fn header_refused(error: &HeaderError, what: &str) -> KernelError {
    match error {
        HeaderError::TooLarge { length, max } => protocol_error(
            CLOSE_TOO_LARGE,
            format!("the peer sent a {what} of {length} bytes, over maxPacketBytes ({max})"),
        ),
        HeaderError::Version(version) => protocol_error(
            CLOSE_VERSION,
            format!("the peer sent a {what} of KNUL version {version} (this side speaks {KNUL_VERSION})"),
        ),
        other => protocol_error(
            CLOSE_PROTOCOL,
            format!("the peer sent a malformed {what} header (bad {}: {other:?})", other.field()),
        ),
    }
    .with_detail("field", error.field())
}

/// Maps a QUIC connection error to a typed error naming what happened.
pub fn connection_error(error: &quinn::ConnectionError) -> KernelError {
    use quinn::ConnectionError as E;
    match error {
        E::ApplicationClosed(close) => {
            let code = close.error_code.into_inner();
            let reason = String::from_utf8_lossy(&close.reason).into_owned();
            KernelError::new(
                ErrorCode::Connection,
                format!("the peer closed the link (code {code}: {reason})"),
            )
            .with_detail("closeCode", code.to_string())
            .with_detail("reason", reason)
        }
        E::LocallyClosed => KernelError::new(ErrorCode::Closed, "the link was closed"),
        E::TimedOut => KernelError::new(
            ErrorCode::Connection,
            "the peer stopped answering (QUIC idle timeout)",
        ),
        E::Reset => KernelError::new(
            ErrorCode::Connection,
            "the peer reset the connection (it restarted or lost the link)",
        ),
        other => KernelError::new(ErrorCode::Connection, format!("connection failed: {other}")),
    }
}

pub fn read_error(error: quinn::ReadError) -> KernelError {
    match error {
        quinn::ReadError::ConnectionLost(error) => connection_error(&error),
        other => protocol_error(
            CLOSE_PROTOCOL,
            format!("reading the peer's stream: {other}"),
        ),
    }
}

pub fn read_exact_error(error: quinn::ReadExactError, what: &str) -> KernelError {
    match error {
        quinn::ReadExactError::ReadError(error) => read_error(error),
        quinn::ReadExactError::FinishedEarly(got) => protocol_error(
            CLOSE_PROTOCOL,
            format!("the peer's control stream ended in the middle of a {what} ({got} bytes)"),
        ),
    }
}

pub fn write_error(error: quinn::WriteError) -> KernelError {
    match error {
        quinn::WriteError::ConnectionLost(error) => connection_error(&error),
        other => KernelError::new(ErrorCode::Connection, format!("sending: {other}")),
    }
}
