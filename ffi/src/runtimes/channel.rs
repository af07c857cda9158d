//! The child → parent half of a runtime's channel: reads the child's stdout
//! (through a buffer, so small frames cost no syscall each), checks every
//! frame header ([`check_from_child`]) and writes each frame as one record of
//! the kernel → JS ring, its payload read straight into the ring. A full
//! ring stops the reading, the pipe fills and the child's writes wait:
//! back-pressure. A refused frame (or a stream that ends inside one) ends
//! the channel with a `RUNTIME_RECORD_PROTOCOL_ERROR` record and a
//! `protocol` violation, which kills the child's tree; the parent lives on.
//!
//! The parent → child half is the guard's stdin ring writer.

use super::frame::{
    check_from_child, RUNTIME_FRAME_HEADER_BYTES, RUNTIME_RECORD_FRAME,
    RUNTIME_RECORD_PROTOCOL_ERROR,
};
use crate::proto::GuardViolation;
use crate::ring::{Producer, Ring};
use std::io::{BufReader, Read};
use std::sync::Arc;

const HEADER: usize = RUNTIME_FRAME_HEADER_BYTES as usize;
/// stdout is read through a buffer this large (larger payloads bypass it).
const READ_BUFFER_BYTES: usize = 64 << 10;

/// Reads frames from `source` into `ring` until the stream ends (the child
/// exited) or a frame is refused (the violation to report).
pub fn read_frames(
    source: Box<dyn Read + Send>,
    ring: Arc<Ring>,
    max_message_bytes: u32,
    runtime: tokio::runtime::Handle,
) -> Option<GuardViolation> {
    let mut producer = Producer::new(Arc::clone(&ring));
    let mut source = BufReader::with_capacity(READ_BUFFER_BYTES, source);
    let outcome = frames(&mut source, &mut producer, max_message_bytes, &runtime);
    let violation = outcome.err().map(|reason| {
        let bytes = reason.as_bytes();
        if let Ok(Some(slot)) =
            runtime.block_on(producer.reserve(bytes.len() as u32, RUNTIME_RECORD_PROTOCOL_ERROR))
        {
            // SAFETY: `bytes.len()` bytes were reserved at `slot`.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), slot, bytes.len()) };
            producer.publish();
        }
        GuardViolation {
            kind: "protocol".into(),
            detail: reason,
        }
    });
    ring.close();
    violation
}

/// Fills `buffer` from `source`; the bytes read (less only at end of stream).
fn read_full(source: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match source.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

fn frames(
    source: &mut impl Read,
    producer: &mut Producer,
    max_message_bytes: u32,
    runtime: &tokio::runtime::Handle,
) -> Result<(), String> {
    let mut header = [0u8; HEADER];
    loop {
        match read_full(source, &mut header) {
            Ok(0) | Err(_) => return Ok(()),
            Ok(HEADER) => {}
            Ok(read) => {
                return Err(format!(
                    "the runtime's output ended inside a frame header ({read} of {HEADER} bytes)"
                ))
            }
        }
        let length = check_from_child(&header, max_message_bytes)
            .map_err(|error| format!("refused frame ({}): {}", error.field, error.message))?;
        let size = HEADER as u32 + length;
        // Addresses are kept as usize: a raw pointer would make this !Send.
        let record = match producer.try_reserve(size, RUNTIME_RECORD_FRAME) {
            Ok(Some(record)) => record as usize,
            Ok(None) => match runtime.block_on(producer.reserve(size, RUNTIME_RECORD_FRAME)) {
                Ok(Some(record)) => record as usize,
                // JS closed the ring (the instance is being stopped).
                _ => return Ok(()),
            },
            Err(error) => return Err(error.message),
        };
        // SAFETY: the record holds `size` bytes at `record`, unread by JS
        // until published; nothing else writes them.
        let slot = unsafe { std::slice::from_raw_parts_mut(record as *mut u8, size as usize) };
        slot[..HEADER].copy_from_slice(&header);
        match read_full(source, &mut slot[HEADER..]) {
            Ok(read) if read == length as usize => {}
            _ => {
                return Err(format!(
                    "the runtime's output ended inside a frame of {length} payload bytes"
                ))
            }
        }
        producer.publish();
    }
}
