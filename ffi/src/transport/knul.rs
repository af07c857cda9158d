//! The KNUL packet header (docs/knul.md): a fixed 40-byte, little-endian
//! header carrying the explicit request context. This codec is the Rust half;
//! `bindings/transport/_knul.ts` is the TypeScript half, and both are tested
//! against the same vectors (`tests/vectors/knul_header.json`).

/// Header size in bytes.
pub const KNUL_HEADER_BYTES: usize = 40;
/// The protocol version this codec speaks.
pub const KNUL_VERSION: u8 = 1;
const MAGIC: [u8; 4] = *b"KNUL";
const KNOWN_FLAGS: u16 = 0b11;

/// What a packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Data = 1,
    Hello = 2,
    Ping = 3,
    Pong = 4,
    Close = 5,
}

/// A decoded header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    pub kind: Kind,
    /// Bit 0 reliable, bit 1 final.
    pub flags: u16,
    pub priority: u8,
    pub payload_length: u32,
    /// FNV-1a 64 of the tenant id (0 = none).
    pub tenant: u64,
    pub trace_id: [u8; 16],
}

/// Why a header was refused (each names the field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    Truncated(usize),
    Magic([u8; 4]),
    Version(u8),
    Kind(u8),
    Flags(u16),
    Reserved,
    TooLarge { length: u32, max: u32 },
}

impl HeaderError {
    /// Stable name of the refused field (matches the shared vectors).
    pub fn field(&self) -> &'static str {
        match self {
            HeaderError::Truncated(_) => "truncated",
            HeaderError::Magic(_) => "magic",
            HeaderError::Version(_) => "version",
            HeaderError::Kind(_) => "kind",
            HeaderError::Flags(_) => "flags",
            HeaderError::Reserved => "reserved",
            HeaderError::TooLarge { .. } => "too_large",
        }
    }
}

/// FNV-1a 64 of a tenant id, as the header carries it (0 for none).
pub fn tenant_hash(tenant: &str) -> u64 {
    if tenant.is_empty() {
        return 0;
    }
    tenant.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Header {
    /// Writes the header's 40 bytes.
    pub fn encode(&self) -> [u8; KNUL_HEADER_BYTES] {
        let mut out = [0u8; KNUL_HEADER_BYTES];
        out[0..4].copy_from_slice(&MAGIC);
        out[4] = self.version;
        out[5] = self.kind as u8;
        out[6..8].copy_from_slice(&self.flags.to_le_bytes());
        out[8] = self.priority;
        out[12..16].copy_from_slice(&self.payload_length.to_le_bytes());
        out[16..24].copy_from_slice(&self.tenant.to_le_bytes());
        out[24..40].copy_from_slice(&self.trace_id);
        out
    }

    /// Decodes and validates a header; `max_payload` is the link's limit.
    pub fn decode(bytes: &[u8], max_payload: u32) -> Result<Header, HeaderError> {
        let Some(bytes) = bytes.get(..KNUL_HEADER_BYTES) else {
            return Err(HeaderError::Truncated(bytes.len()));
        };
        let magic: [u8; 4] = bytes[0..4].try_into().expect("4 bytes");
        if magic != MAGIC {
            return Err(HeaderError::Magic(magic));
        }
        if bytes[4] != KNUL_VERSION {
            return Err(HeaderError::Version(bytes[4]));
        }
        let kind = match bytes[5] {
            1 => Kind::Data,
            2 => Kind::Hello,
            3 => Kind::Ping,
            4 => Kind::Pong,
            5 => Kind::Close,
            other => return Err(HeaderError::Kind(other)),
        };
        let flags = u16::from_le_bytes([bytes[6], bytes[7]]);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(HeaderError::Flags(flags));
        }
        if bytes[9..12] != [0, 0, 0] {
            return Err(HeaderError::Reserved);
        }
        let payload_length = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
        if payload_length > max_payload {
            return Err(HeaderError::TooLarge {
                length: payload_length,
                max: max_payload,
            });
        }
        Ok(Header {
            version: bytes[4],
            kind,
            flags,
            priority: bytes[8],
            payload_length,
            tenant: u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes")),
            trace_id: bytes[24..40].try_into().expect("16 bytes"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn shared_vectors_decode_and_encode_identically() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/vectors/knul_header.json"
        );
        let vectors: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let max = vectors["maxPacketBytes"].as_u64().unwrap() as u32;
        let valid = vectors["valid"].as_array().unwrap();
        for vector in valid {
            let bytes = hex(vector["hex"].as_str().unwrap());
            let header = Header::decode(&bytes, max).unwrap();
            let expected = &vector["header"];
            let number = |key: &str| expected[key].as_u64().unwrap();
            assert_eq!(u64::from(header.version), number("version"));
            assert_eq!(header.kind as u64, number("kind"));
            assert_eq!(u64::from(header.flags), number("flags"));
            assert_eq!(u64::from(header.priority), number("priority"));
            assert_eq!(u64::from(header.payload_length), number("payloadLength"));
            assert_eq!(
                header.tenant,
                expected["tenant"].as_str().unwrap().parse::<u64>().unwrap()
            );
            assert_eq!(
                header.trace_id.to_vec(),
                hex(expected["traceId"].as_str().unwrap())
            );
            assert_eq!(
                header.encode().to_vec(),
                bytes,
                "encode is the exact inverse"
            );
        }
        assert_eq!(valid.len(), 3);
        let invalid = vectors["invalid"].as_array().unwrap();
        for vector in invalid {
            let bytes = hex(vector["hex"].as_str().unwrap());
            let error = Header::decode(&bytes, max).unwrap_err();
            assert_eq!(
                error.field(),
                vector["error"].as_str().unwrap(),
                "{}",
                vector["name"]
            );
        }
        assert_eq!(invalid.len(), 7);
    }

    /// A bounded property test of the decoder (CI runs it with every
    /// `cargo test`): arbitrary bytes never panic, and every valid header
    /// round-trips exactly.
    #[test]
    fn decoder_property_random_inputs() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..200_000u32 {
            let length = (next() % 48) as usize;
            let mut bytes: Vec<u8> = (0..length).map(|_| next() as u8).collect();
            if round % 2 == 0 && length >= KNUL_HEADER_BYTES {
                // Bias half the inputs towards nearly valid headers.
                bytes[0..4].copy_from_slice(b"KNUL");
                bytes[4] = 1;
                bytes[5] = (next() % 6) as u8;
                bytes[7] = 0;
                bytes[9..12].fill(0);
            }
            if let Ok(header) = Header::decode(&bytes, u32::MAX) {
                assert_eq!(header.encode()[..], bytes[..KNUL_HEADER_BYTES]);
            }
        }
    }

    #[test]
    fn tenant_hash_is_fnv1a() {
        assert_eq!(tenant_hash(""), 0);
        assert_eq!(tenant_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
