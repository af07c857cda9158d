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

/// `date: <IMF-fixdate>\r\n` for now (RFC 9110 §6.6.1: an origin server with
/// a clock sends one), from Pingora's per-thread cache, renewed once a
/// second: the fast paths and Pingora's path send the same date.
pub fn date_line() -> [u8; 37] {
    let date = pingora_core::protocols::http::date::get_cached_date();
    let mut line = *b"date: Thu, 01 Jan 1970 00:00:00 GMT\r\n";
    if date.len() == 29 {
        line[6..35].copy_from_slice(date.as_bytes());
    }
    line
}

/// Appends [`date_line`] to a response head being built.
pub fn push_date(head: &mut Vec<u8>) {
    head.extend_from_slice(&date_line());
}

/// A response the server itself gives (400, 502, 503, 504 on the fast
/// paths) before closing the connection; `reason`, when not empty, is its
/// plain-text body (what was wrong with the request).
pub fn error_response(status: u16, reason: &str) -> Vec<u8> {
    let status = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_REQUEST);
    let mut head = Vec::with_capacity(160 + reason.len());
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    push_date(&mut head);
    if !reason.is_empty() {
        head.extend_from_slice(b"content-type: text/plain; charset=utf-8\r\n");
    }
    head.extend_from_slice(b"content-length: ");
    head.extend_from_slice(itoa::Buffer::new().format(reason.len()).as_bytes());
    head.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
    head.extend_from_slice(reason.as_bytes());
    head
}

/// Whether a `connection` header value holds the `close` option.
pub fn has_close(value: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_date_is_an_imf_fixdate() {
        let line = date_line();
        let text = std::str::from_utf8(&line).unwrap();
        assert!(
            text.starts_with("date: ") && text.ends_with(" GMT\r\n"),
            "{text}"
        );
        assert_ne!(&line, b"date: Thu, 01 Jan 1970 00:00:00 GMT\r\n");
        assert!(has_close(b"keep-alive, Close"));
        assert!(!has_close(b"closed"));
    }
}
