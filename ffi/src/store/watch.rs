//! Watching a key prefix: kernel tasks forward sled's change events for the
//! prefix into a kernel → JS ring, one record per change (tag 1 = put,
//! 2 = delete; payload `[key_len u32][key][value]`, key without the tree
//! prefix).
//!
//! sled delivers events through a bounded channel and blocks *writers* when
//! a subscriber falls behind, so the subscriber is drained at once into a
//! backlog (task A) and the backlog is written into the ring as the JS reader
//! makes room (task B). A reader that falls more than [`MAX_BACKLOG_BYTES`]
//! behind gets one overflow record (tag 3) and the feed ends: a typed error,
//! never a stalled store.

use super::keys::data_key;
use super::tree::tree;
use crate::boundary::{call, in_bytes};
use crate::error::KernelError;
use crate::ring::{ring, Producer, Ring, RING_RECORD_HEADER_BYTES};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

pub const WATCH_PUT: u32 = 1;
pub const WATCH_DELETE: u32 = 2;
/// The feed fell too far behind; it ends after this record.
pub const WATCH_OVERFLOW: u32 = 3;
/// A change whose value did not fit the ring carries only its key.
pub const WATCH_VALUE_OMITTED: u32 = 0x100;
/// Most bytes of changes buffered for a slow reader.
pub const MAX_BACKLOG_BYTES: usize = 64 << 20;

/// Changes waiting for ring space (tag, payload) and their total payload bytes.
type Pending = (VecDeque<(u32, Vec<u8>)>, usize);

#[derive(Default)]
struct Backlog {
    queue: Mutex<Pending>,
    ready: Notify,
    overflowed: AtomicBool,
    ended: AtomicBool,
}

fn encode(key: &[u8], value: Option<&[u8]>) -> Vec<u8> {
    let mut payload = Vec::with_capacity(4 + key.len() + value.map_or(0, <[u8]>::len));
    payload.extend_from_slice(&(key.len() as u32).to_le_bytes());
    payload.extend_from_slice(key);
    if let Some(value) = value {
        payload.extend_from_slice(value);
    }
    payload
}

async fn forward(ring: Arc<Ring>, backlog: Arc<Backlog>) {
    let mut producer = Producer::new(Arc::clone(&ring));
    loop {
        let next = {
            let mut queue = backlog.queue.lock().unwrap_or_else(|p| p.into_inner());
            let next = queue.0.pop_front();
            if let Some((_, payload)) = &next {
                queue.1 -= payload.len();
            }
            next
        };
        let (tag, payload) = match next {
            Some(item) => item,
            None if backlog.overflowed.load(Ordering::SeqCst) => (WATCH_OVERFLOW, Vec::new()),
            None if backlog.ended.load(Ordering::SeqCst) => return ring.close(),
            None => {
                let notified = backlog.ready.notified();
                if backlog
                    .queue
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .0
                    .is_empty()
                    && !backlog.overflowed.load(Ordering::SeqCst)
                {
                    notified.await;
                }
                continue;
            }
        };
        let Ok(Some(slot)) = producer.reserve(payload.len() as u32, tag).await else {
            return;
        };
        // SAFETY: `payload.len()` bytes were reserved at `slot` for this producer.
        unsafe { std::ptr::copy_nonoverlapping(payload.as_ptr(), slot, payload.len()) };
        producer.publish();
        if tag == WATCH_OVERFLOW {
            return ring.close();
        }
    }
}

/// Starts forwarding changes of `tree` under `prefix` into `ring` (a
/// kernel → JS ring). Stops when the ring or the kernel closes. A change too
/// large for the ring is delivered without its value (tag | 0x100); a reader
/// more than 64 MiB behind gets an overflow record (tag 3) and the feed ends.
///
/// # Safety
/// `prefix` must point to `prefix_len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_store_watch(
    tree_handle: u32,
    prefix: *const u8,
    prefix_len: u32,
    ring_handle: u32,
) -> i32 {
    call("krepis_store_watch", || {
        // SAFETY: forwarded from this function's contract.
        let prefix = unsafe { in_bytes(prefix, prefix_len, "prefix")? };
        let tree = tree(tree_handle)?;
        let ring = ring(ring_handle)?;
        let kernel = crate::kernel::kernel_by_id(tree.kernel_id)?;
        let mut subscriber = tree.store.db.watch_prefix(data_key(&tree.prefix, prefix));
        let prefix_len = tree.prefix.len();
        let max_payload = (ring.capacity() - RING_RECORD_HEADER_BYTES) as usize;
        ring.claim()?;
        let backlog = Arc::new(Backlog::default());
        kernel.spawn(forward(Arc::clone(&ring), Arc::clone(&backlog)))?;
        kernel.spawn(async move {
            // Task A: never lets sled's channel fill (that would block writers).
            while let Some(event) = (&mut subscriber).await {
                if ring.is_closed() {
                    break;
                }
                let (tag, key, value) = match &event {
                    sled::Event::Insert { key, value } => (WATCH_PUT, key, Some(value.as_ref())),
                    sled::Event::Remove { key } => (WATCH_DELETE, key, None),
                };
                let key = &key[prefix_len..];
                let (tag, payload) = if 4 + key.len() + value.map_or(0, <[u8]>::len) > max_payload {
                    if 4 + key.len() > max_payload {
                        continue;
                    }
                    (tag | WATCH_VALUE_OMITTED, encode(key, None))
                } else {
                    (tag, encode(key, value))
                };
                let mut queue = backlog.queue.lock().unwrap_or_else(|p| p.into_inner());
                if queue.1 + payload.len() > MAX_BACKLOG_BYTES {
                    backlog.overflowed.store(true, Ordering::SeqCst);
                    drop(queue);
                    backlog.ready.notify_one();
                    return;
                }
                queue.1 += payload.len();
                queue.0.push_back((tag, payload));
                drop(queue);
                backlog.ready.notify_one();
            }
            backlog.ended.store(true, Ordering::SeqCst);
            backlog.ready.notify_one();
        })?;
        Ok::<i32, KernelError>(0)
    })
}
