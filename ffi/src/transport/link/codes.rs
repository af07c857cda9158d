//! The numbers a link shares with JS and with its peer: the receive ring's
//! record tag, the header flags and the close codes (docs/knul.md).
//!
//! They are ABI: cbindgen writes them into `ffi/include/krepis.h` in the
//! order they appear here, so keep that order (and their doc comments, which
//! the header repeats) unless the ABI is meant to change.

/// Tag of a packet record in the receive ring: `[header 40 B][payload]`.
pub const LINK_RECORD_PACKET: u32 = 1;
/// Header flag: sent on the reliable stream.
pub const FLAG_RELIABLE: u16 = 1;

/// Close codes (docs/knul.md).
pub const CLOSE_NORMAL: u32 = 0;
pub const CLOSE_GOING_AWAY: u32 = 1;
pub const CLOSE_PROTOCOL: u32 = 2;
pub const CLOSE_VERSION: u32 = 3;
pub const CLOSE_TOO_LARGE: u32 = 4;
pub const CLOSE_POLICY: u32 = 5;
/// Refused because the listener is busy: over its link or window-memory
/// budget, its backlog is full, or its handshake slots went to newer peers.
pub const CLOSE_BUSY: u32 = 6;

/// Header flag of a `close` that confirms the peer's close: "I have read
/// everything you sent, up to the end of your stream".
pub const FLAG_FINAL: u16 = 2;
