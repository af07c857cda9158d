//! Header names with a meaning of their own to the engine.

/// Whether a header is about the connection rather than the message
/// (RFC 9112 §7.6.1, §9.6, and the non-standard `keep-alive` and
/// `proxy-connection`): never configured by a route, never forwarded.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP_BY_HOP: [&[u8]; 7] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    ];
    HOP_BY_HOP.iter().any(|hop| name.eq_ignore_ascii_case(hop))
}
