//! The runtime channel's frame (docs/runtimes.md): a KNUL v1 header (40
//! bytes, docs/knul.md: magic, version, kind, flags, priority, reserved,
//! payload length, tenant hash, trace id) followed by 8 bytes of channel
//! header (the correlation id and the length of the context that starts the
//! payload), then the payload. Runtime frames use their own kinds (16 and
//! up) besides KNUL's ping and pong. These constants are ABI (`KREPIS_*` in
//! the header): the TypeScript halves (the pool and the child module) read
//! them from the generated symbols.
//!
//! The kernel checks every frame a runtime writes before JS sees it; what
//! the parent writes is checked by the child module.

/// Bytes of a frame header: the KNUL header plus the channel header.
pub const RUNTIME_FRAME_HEADER_BYTES: u32 = 48;
/// Largest `maxMessageBytes` a pool may ask for.
pub const RUNTIME_MAX_MESSAGE_BYTES: u32 = 256 << 20;

/// Parent → child: a request (payload: context JSON, then the body).
pub const RUNTIME_KIND_REQUEST: u32 = 16;
/// Child → parent: the answer to the request with the same id.
pub const RUNTIME_KIND_REPLY: u32 = 17;
/// Child → parent: the request with the same id failed (payload: UTF-8 message).
pub const RUNTIME_KIND_FAIL: u32 = 18;
/// Child → parent: a message of the child's own (id 0).
pub const RUNTIME_KIND_MESSAGE: u32 = 19;
/// Child → parent: the module is loaded and serving (id 0).
pub const RUNTIME_KIND_READY: u32 = 20;
/// Parent → child: a health check (KNUL's ping); answered with a pong, same id.
pub const RUNTIME_KIND_PING: u32 = 3;
/// Child → parent: the answer to a ping (KNUL's pong).
pub const RUNTIME_KIND_PONG: u32 = 4;
/// Flag: the payload is an HTTP request or response (docs/runtimes.md).
pub const RUNTIME_FLAG_HTTP: u32 = 0x100;

/// Ring record tag: one frame (header and payload) from the child.
pub const RUNTIME_RECORD_FRAME: u32 = 1;
/// Ring record tag: the child broke the protocol (payload: UTF-8 reason);
/// the last record before the ring closes.
pub const RUNTIME_RECORD_PROTOCOL_ERROR: u32 = 2;

const MAGIC: [u8; 4] = *b"KNUL";
const VERSION: u8 = 1;

/// Why a frame from a runtime was refused: the field and what was wrong.
#[derive(Debug, PartialEq, Eq)]
pub struct FrameError {
    pub field: &'static str,
    pub message: String,
}

fn refuse(field: &'static str, message: String) -> FrameError {
    FrameError { field, message }
}

/// Checks the header of a frame written by a runtime and returns its
/// payload length (at most `max_message_bytes`).
pub fn check_from_child(
    header: &[u8; RUNTIME_FRAME_HEADER_BYTES as usize],
    max_message_bytes: u32,
) -> Result<u32, FrameError> {
    let u32_at = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    if header[0..4] != MAGIC {
        return Err(refuse(
            "magic",
            format!("a frame must start with KNUL, got {:02x?}", &header[0..4]),
        ));
    }
    if header[4] != VERSION {
        return Err(refuse(
            "version",
            format!("frame version {} (this kernel speaks 1)", header[4]),
        ));
    }
    let kind = u32::from(header[5]);
    if ![
        RUNTIME_KIND_REPLY,
        RUNTIME_KIND_FAIL,
        RUNTIME_KIND_MESSAGE,
        RUNTIME_KIND_READY,
        RUNTIME_KIND_PONG,
    ]
    .contains(&kind)
    {
        return Err(refuse(
            "kind",
            format!("frame kind {kind} may not come from a runtime"),
        ));
    }
    let flags = u32::from(u16::from_le_bytes([header[6], header[7]]));
    if flags & !RUNTIME_FLAG_HTTP != 0 {
        return Err(refuse("flags", format!("unknown frame flags {flags:#x}")));
    }
    if header[9..12] != [0, 0, 0] {
        return Err(refuse("reserved", "reserved header bytes must be 0".into()));
    }
    let length = u32_at(12);
    if length > max_message_bytes {
        return Err(refuse(
            "too_large",
            format!(
                "a frame of {length} payload bytes exceeds maxMessageBytes ({max_message_bytes})"
            ),
        ));
    }
    if u32_at(44) != 0 {
        return Err(refuse(
            "context_length",
            "frames from a runtime carry no context".into(),
        ));
    }
    Ok(length)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, length: u32) -> [u8; 48] {
        let mut header = [0u8; 48];
        header[0..4].copy_from_slice(b"KNUL");
        header[4] = 1;
        header[5] = kind;
        header[8] = 128;
        header[12..16].copy_from_slice(&length.to_le_bytes());
        header
    }

    #[test]
    fn a_reply_passes_and_each_bad_field_is_named() {
        assert_eq!(check_from_child(&frame(17, 10), 10), Ok(10));
        let field = |header: [u8; 48]| check_from_child(&header, 10).unwrap_err().field;
        let mut bad = frame(17, 0);
        bad[0] = b'X';
        assert_eq!(field(bad), "magic");
        let mut bad = frame(17, 0);
        bad[4] = 2;
        assert_eq!(field(bad), "version");
        assert_eq!(field(frame(16, 0)), "kind");
        let mut bad = frame(17, 0);
        bad[6] = 1;
        assert_eq!(field(bad), "flags");
        let mut http = frame(17, 0);
        http[7] = 1;
        assert!(check_from_child(&http, 10).is_ok());
        let mut bad = frame(17, 0);
        bad[10] = 1;
        assert_eq!(field(bad), "reserved");
        assert_eq!(field(frame(17, 11)), "too_large");
        let mut bad = frame(17, 0);
        bad[44] = 1;
        assert_eq!(field(bad), "context_length");
    }
}
