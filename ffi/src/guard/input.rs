//! stdin of a guarded command: either the request's bytes, written once from
//! a thread and then closed (`run()`/`spawn()`), or a JS → kernel ring whose
//! records are written to the pipe in order, each straight from the ring's
//! memory (no copy but the one into the pipe), until JS closes the ring;
//! then stdin is closed. A full pipe stops the writer, which stops draining
//! the ring, so a JS writer waits for room: back-pressure end to end.

use crate::ring::{Consumer, Ring};
use std::io::Write;
use std::sync::Arc;

/// Where a command's stdin comes from.
pub enum Input {
    /// Written once, then stdin is closed.
    Bytes(Vec<u8>),
    /// Every record of this ring, in order, while it is open.
    Ring(Arc<Ring>),
}

/// Starts the writer of `stdin` on `runtime`'s blocking pool.
pub fn start(runtime: &tokio::runtime::Handle, mut stdin: Box<dyn Write + Send>, input: Input) {
    let ring_runtime = runtime.clone();
    runtime.spawn_blocking(move || match input {
        Input::Bytes(bytes) => {
            let _ = stdin.write_all(&bytes);
        }
        Input::Ring(ring) => from_ring(&ring_runtime, stdin, ring),
    });
}

fn from_ring(runtime: &tokio::runtime::Handle, mut stdin: Box<dyn Write + Send>, ring: Arc<Ring>) {
    let mut consumer = Consumer::new(Arc::clone(&ring));
    loop {
        let mut failed = false;
        let drained = consumer.drain(|_, record| {
            if !failed && stdin.write_all(record).is_err() {
                failed = true;
            }
        });
        match drained {
            // The command went away (or the ring was refused): JS sees the
            // ring closed; the waiter reports how the command ended.
            Err(_) => break,
            Ok(_) if failed => break,
            Ok(0) => {
                if !runtime.block_on(consumer.readable()) {
                    break;
                }
            }
            Ok(_) => {}
        }
    }
    ring.close();
    // Dropping stdin closes it: the command reads end of file.
}
