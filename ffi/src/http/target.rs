//! The request target, normalized once before routing (docs/http.md,
//! "Request targets"). Every route kind and the JS handler see the same
//! path, and proxies forward it: a route cannot be escaped with dot segments
//! (`/public/../admin`, `%2e%2e`), doubled slashes or escapes that mean the
//! same character, and what cannot be normalized safely is refused with 400
//! (RFC 9112 §3.2: a server does not repair an invalid target).
//!
//! Rules, applied to the path (the query is only checked for invalid bytes):
//! - bytes outside a URI (controls, space, non-ASCII), a fragment (`#`) and a
//!   raw `\` (URL parsers read it as `/`) are refused;
//! - `%XX` of an unreserved character (RFC 3986 §2.3) is decoded, other
//!   escapes are kept (hex in upper case); a bad escape, an encoded `/` or
//!   `\` (they would split or join segments differently downstream) and
//!   `%00` are refused;
//! - empty segments are merged (`//a` is `/a`, as nginx's `merge_slashes`);
//! - `.` and `..` segments are resolved (RFC 3986 §5.2.4); `..` above the
//!   root is refused.

use std::borrow::Cow;

/// Why a target was refused (the client gets 400).
pub type Refusal = &'static str;

/// Bytes allowed anywhere in an origin-form target: printable ASCII except
/// space, `#` and `\` (checked apart: `\` is allowed in the query).
fn allowed(byte: u8) -> bool {
    (0x21..0x7f).contains(&byte) && byte != b'#'
}

fn unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

fn hex(byte: u8) -> Option<u8> {
    (byte as char).to_digit(16).map(|digit| digit as u8)
}

/// Normalizes an origin-form target (`/path?query`); borrowed when it was
/// already normal (the common case costs one scan and no allocation).
pub fn normalize(target: &str) -> Result<Cow<'_, str>, Refusal> {
    let bytes = target.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err("the request target must be an absolute path");
    }
    let path_end = bytes.iter().position(|&b| b == b'?').unwrap_or(bytes.len());
    let (path, query) = bytes.split_at(path_end);
    if !query.iter().all(|&b| allowed(b)) {
        return Err("invalid character in the request target");
    }
    let mut clean = true;
    let mut previous = 0u8;
    for &byte in path {
        if !allowed(byte) || byte == b'\\' {
            return Err("invalid character in the request target");
        }
        // An escape, an empty segment or one starting with a dot.
        if byte == b'%' || (previous == b'/' && (byte == b'/' || byte == b'.')) {
            clean = false;
        }
        previous = byte;
    }
    if clean {
        return Ok(Cow::Borrowed(target));
    }
    // Escapes first: `%2e%2e` is a dot segment like `..`.
    let mut decoded = Vec::with_capacity(path.len());
    let mut at = 0;
    while at < path.len() {
        let byte = path[at];
        if byte != b'%' {
            decoded.push(byte);
            at += 1;
            continue;
        }
        let (Some(high), Some(low)) = (
            path.get(at + 1).copied().and_then(hex),
            path.get(at + 2).copied().and_then(hex),
        ) else {
            return Err("invalid percent-escape in the request path");
        };
        let value = high << 4 | low;
        match value {
            b'/' | b'\\' => return Err("encoded '/' or '\\' in a path segment"),
            0 => return Err("NUL in the request path"),
            value if unreserved(value) => decoded.push(value),
            value => {
                decoded.push(b'%');
                decoded.push(b"0123456789ABCDEF"[usize::from(value >> 4)]);
                decoded.push(b"0123456789ABCDEF"[usize::from(value & 15)]);
            }
        }
        at += 3;
    }
    let mut segments: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    for segment in decoded[1..].split(|&b| b == b'/') {
        trailing_slash = true;
        match segment {
            b"" => {}
            b"." => {}
            b".." => {
                if segments.pop().is_none() {
                    return Err("'..' above the root of the request path");
                }
            }
            segment => {
                segments.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(target.len());
    for segment in &segments {
        out.push('/');
        // Only ASCII got here.
        out.push_str(std::str::from_utf8(segment).unwrap_or_default());
    }
    if segments.is_empty() || trailing_slash {
        out.push('/');
    }
    out.push_str(&target[path_end..]);
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::normalize;

    fn ok(target: &str) -> String {
        normalize(target).unwrap().into_owned()
    }

    #[test]
    fn normal_targets_are_borrowed() {
        for target in [
            "/",
            "/a/b.c",
            "/a.b/c?x=/../y",
            "/api/v1/?q=a%20b",
            "/a|b{c}",
        ] {
            assert!(
                matches!(normalize(target), Ok(std::borrow::Cow::Borrowed(_))),
                "{target}"
            );
        }
    }

    #[test]
    fn dot_segments_slashes_and_escapes_are_resolved() {
        assert_eq!(ok("/public/../admin"), "/admin");
        assert_eq!(ok("/public/%2e%2e/admin"), "/admin");
        assert_eq!(ok("/public/%2E%2E/admin?x=1"), "/admin?x=1");
        assert_eq!(ok("/public/.%2E/admin"), "/admin");
        assert_eq!(ok("/a/./b/../c/"), "/a/c/");
        assert_eq!(ok("/a/b/.."), "/a/");
        assert_eq!(ok("/a/b/."), "/a/b/");
        assert_eq!(ok("//admin"), "/admin");
        assert_eq!(ok("/a//b///c"), "/a/b/c");
        assert_eq!(ok("/a//"), "/a/");
        assert_eq!(ok("/%61%7E%2d"), "/a~-");
        assert_eq!(ok("/a%20b"), "/a%20b");
        assert_eq!(ok("/a%c3%a9"), "/a%C3%A9");
        assert_eq!(ok("/a/..."), "/a/...");
    }

    #[test]
    fn what_cannot_be_normalized_safely_is_refused() {
        for target in [
            "/..",
            "/a/../..",
            "/%2e%2e/x",
            "/a%2Fb",
            "/a%2fb",
            "/a%5cb",
            "/a%00b",
            "/a%zz",
            "/a%2",
            "/a\\b",
            "/a#b",
            "/a b",
            "/a\0b",
            "/a\tb",
            "/é",
            "/a?b\x7f",
            "x/y",
            "",
        ] {
            assert!(normalize(target).is_err(), "{target:?}");
        }
    }
}
