//! Following a chunked body (RFC 9112 §7.1) byte by byte to find where it
//! ends, without changing the bytes: upstream responses on the proxy fast
//! path (lenient, as clients are), and request bodies on their way to
//! Pingora (strict, as nginx: a bare LF, a missing size, a size beyond 64
//! bits or beyond `maxBodyBytes` is refused as soon as it is seen, not after
//! waiting for data that will never come).

/// What was wrong with a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// Broken framing (the client gets 400).
    Malformed,
    /// The chunk sizes add up to more than the limit (the client gets 413).
    TooLarge,
}

impl ChunkError {
    /// The status the client gets.
    pub fn status(self) -> u16 {
        match self {
            ChunkError::Malformed => 400,
            ChunkError::TooLarge => 413,
        }
    }
}

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChunkError::Malformed => "malformed chunked request body",
            ChunkError::TooLarge => "chunked request body over maxBodyBytes",
        })
    }
}

impl std::error::Error for ChunkError {}

#[derive(Default, Debug)]
pub struct ChunkedScanner {
    state: Chunk,
    /// Size of the chunk being read (hex digits so far, then bytes left).
    size: u64,
    /// Hex digits of the current size line.
    digits: u32,
    /// Refuse what RFC 9112 does not allow (bare LF, an empty size).
    strict: bool,
    /// Most body bytes the chunk sizes may add up to (strict only).
    limit: u64,
    /// Chunk sizes so far.
    total: u64,
    error: Option<ChunkError>,
}

#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
enum Chunk {
    /// Hex digits of a chunk size.
    #[default]
    Size,
    /// A chunk extension, up to the end of the line.
    Extension,
    /// The LF of the size line.
    SizeLf,
    Data,
    /// CR then LF after the data.
    DataCr,
    DataLf,
    /// Trailer lines after the last chunk; `LineStart` = at a line's start.
    TrailerLineStart,
    Trailer,
    /// The LF of a trailer line.
    TrailerLf,
    /// The LF ending the body.
    EndLf,
    Done,
    Broken,
}

impl ChunkedScanner {
    /// A scanner for request bodies: strict, and refusing chunk sizes that
    /// add up to more than `limit` bytes.
    pub fn strict(limit: u64) -> ChunkedScanner {
        ChunkedScanner {
            strict: true,
            limit,
            ..ChunkedScanner::default()
        }
    }

    /// The body ended cleanly.
    pub fn done(&self) -> bool {
        self.state == Chunk::Done
    }

    /// Why the body is broken, once it is.
    pub fn error(&self) -> Option<ChunkError> {
        (self.state == Chunk::Broken).then(|| self.error.unwrap_or(ChunkError::Malformed))
    }

    fn broken(&mut self, error: ChunkError) {
        self.state = Chunk::Broken;
        self.error = Some(error);
    }

    /// Returns how many of `bytes` belong to the body and whether it ended
    /// (cleanly or broken: see `done`, `error`).
    pub fn scan(&mut self, bytes: &[u8]) -> (usize, bool) {
        let strict = self.strict;
        let mut at = 0;
        while at < bytes.len() {
            let byte = bytes[at];
            match self.state {
                Chunk::Size => match byte {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let digit = (byte as char).to_digit(16).unwrap_or(0);
                        if self.size > u64::MAX >> 4 {
                            // Not a size at all (nginx: 400 too).
                            self.broken(ChunkError::Malformed);
                            continue;
                        }
                        self.size = self.size * 16 + u64::from(digit);
                        self.digits += 1;
                    }
                    _ if strict && self.digits == 0 => self.broken(ChunkError::Malformed),
                    b';' | b' ' | b'\t' => self.state = Chunk::Extension,
                    b'\r' => self.state = Chunk::SizeLf,
                    b'\n' if !strict => self.end_size_line(),
                    _ => self.broken(ChunkError::Malformed),
                },
                Chunk::Extension => match byte {
                    b'\r' => self.state = Chunk::SizeLf,
                    b'\n' if !strict => self.end_size_line(),
                    b'\n' | 0 => self.broken(ChunkError::Malformed),
                    _ => {}
                },
                Chunk::SizeLf => {
                    if byte == b'\n' {
                        self.end_size_line();
                        if strict && self.total > self.limit {
                            // Refused now, not after waiting for its bytes.
                            self.broken(ChunkError::TooLarge);
                            continue;
                        }
                    } else {
                        self.broken(ChunkError::Malformed);
                    }
                }
                Chunk::Data => {
                    let take = self.size.min((bytes.len() - at) as u64);
                    self.size -= take;
                    at += take as usize;
                    if self.size == 0 {
                        self.state = Chunk::DataCr;
                    }
                    continue;
                }
                Chunk::DataCr => match byte {
                    b'\r' => self.state = Chunk::DataLf,
                    b'\n' if !strict => self.state = Chunk::Size,
                    _ => self.broken(ChunkError::Malformed),
                },
                Chunk::DataLf => {
                    if byte == b'\n' {
                        self.state = Chunk::Size;
                    } else {
                        self.broken(ChunkError::Malformed);
                    }
                }
                Chunk::TrailerLineStart => match byte {
                    b'\r' => self.state = Chunk::EndLf,
                    b'\n' if !strict => self.state = Chunk::Done,
                    b'\n' => self.broken(ChunkError::Malformed),
                    _ => self.state = Chunk::Trailer,
                },
                Chunk::Trailer => match byte {
                    b'\r' if strict => self.state = Chunk::TrailerLf,
                    b'\n' if !strict => self.state = Chunk::TrailerLineStart,
                    b'\n' | 0 if strict => self.broken(ChunkError::Malformed),
                    _ => {}
                },
                Chunk::TrailerLf => {
                    if byte == b'\n' {
                        self.state = Chunk::TrailerLineStart;
                    } else {
                        self.broken(ChunkError::Malformed);
                    }
                }
                Chunk::EndLf => {
                    if byte == b'\n' {
                        self.state = Chunk::Done;
                    } else {
                        self.broken(ChunkError::Malformed);
                    }
                }
                Chunk::Done | Chunk::Broken => break,
            }
            at += 1;
            if self.state == Chunk::Done {
                break;
            }
        }
        match self.state {
            // Broken framing: what came is the caller's to deal with.
            Chunk::Done | Chunk::Broken => (at, true),
            _ => (at, false),
        }
    }

    fn end_size_line(&mut self) {
        self.total = self.total.saturating_add(self.size);
        self.digits = 0;
        self.state = if self.size == 0 {
            Chunk::TrailerLineStart
        } else {
            Chunk::Data
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(mut scanner: ChunkedScanner, pieces: &[&[u8]]) -> (usize, bool) {
        let mut total = 0;
        for piece in pieces {
            let (taken, done) = scanner.scan(piece);
            total += taken;
            if done {
                return (total, scanner.done());
            }
        }
        (total, false)
    }

    fn lenient(pieces: &[&[u8]]) -> (usize, bool) {
        scan_all(ChunkedScanner::default(), pieces)
    }

    fn strict_error(body: &[u8], limit: u64) -> Option<ChunkError> {
        let mut scanner = ChunkedScanner::strict(limit);
        scanner.scan(body);
        scanner.error()
    }

    #[test]
    fn chunked_bodies_end_where_they_end_however_they_are_split() {
        let body =
            b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: 1\r\n\r\n";
        for split in 0..body.len() {
            for scanner in [ChunkedScanner::default(), ChunkedScanner::strict(1000)] {
                let (taken, clean) = scan_all(scanner, &[&body[..split], &body[split..]]);
                assert_eq!(taken, body.len(), "split at {split}");
                assert!(clean);
            }
        }
        let mut with_next = body.to_vec();
        with_next.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(lenient(&[&with_next]), (body.len(), true));
        assert_eq!(lenient(&[b"0\r\n\r\n"]), (5, true));
        assert_eq!(lenient(&[b"3\r\nab"]), (5, false));
        // Upstreams get the leniency clients have: bare LF.
        assert_eq!(lenient(&[b"3\nabc\n0\n\n"]), (9, true));
    }

    #[test]
    fn broken_chunked_bodies_end_unclean() {
        assert!(!lenient(&[b"zz\r\n"]).1);
        assert!(!lenient(&[b"3\r\nabcX"]).1);
        assert!(!lenient(&[b"ffffffffffffffffffff\r\n"]).1);
    }

    #[test]
    fn strict_request_bodies_refuse_bare_lf_and_sizes_over_the_limit_at_once() {
        use ChunkError::*;
        assert_eq!(strict_error(b"3\nabc\r\n0\r\n\r\n", 100), Some(Malformed));
        assert_eq!(strict_error(b"3\r\nabc\n0\r\n\r\n", 100), Some(Malformed));
        assert_eq!(strict_error(b"3\r\nabc\r\n0\r\n\n", 100), Some(Malformed));
        assert_eq!(strict_error(b"0\r\nX: 1\n\r\n", 100), Some(Malformed));
        assert_eq!(strict_error(b"\r\n", 100), Some(Malformed));
        assert_eq!(strict_error(b";x\r\n", 100), Some(Malformed));
        assert_eq!(strict_error(b"8000000000000000\r\n", 100), Some(TooLarge));
        assert_eq!(
            strict_error(b"10000000000000000\r\n", u64::MAX),
            Some(Malformed)
        );
        assert_eq!(strict_error(b"65\r\n", 100), Some(TooLarge));
        assert_eq!(strict_error(b"32\r\n", 100), None);
        assert_eq!(
            strict_error(b"65;ext", 100),
            None,
            "judged once the line is complete"
        );
        assert_eq!(
            strict_error(
                &[b"32\r\n".to_vec(), vec![b'x'; 50], b"\r\n33\r\n".to_vec()].concat(),
                100
            ),
            Some(TooLarge)
        );
        assert_eq!(strict_error(b"3\r\nabc\r\n0\r\n\r\n", 100), None);
    }
}
