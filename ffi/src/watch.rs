//! Watching a key prefix: a kernel task forwards sled's change events for the
//! prefix into a kernel → JS ring, one record per change (tag 1 = put,
//! 2 = delete; payload `[key_len u32][key][value]`, key without the tree
//! prefix). A slow JS reader fills the ring and the task waits (back-pressure).

use crate::boundary::{call, in_bytes};
use crate::error::KernelError;
use crate::ring::{ring, Producer, RING_RECORD_HEADER_BYTES};
use crate::store::tree;

pub const WATCH_PUT: u32 = 1;
pub const WATCH_DELETE: u32 = 2;

/// Starts forwarding changes of `tree` under `prefix` into `ring` (a
/// kernel → JS ring). Stops when the ring or the kernel closes. A change too
/// large for the ring is delivered without its value (tag | 0x100).
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
        let mut full = tree.prefix.clone();
        full.extend_from_slice(prefix);
        let mut subscriber = tree.store.db.watch_prefix(&full);
        let prefix_len = tree.prefix.len();
        let max_payload = ring.capacity() - RING_RECORD_HEADER_BYTES;
        ring.claim()?;
        kernel.spawn(async move {
            let mut producer = Producer::new(ring);
            while let Some(event) = (&mut subscriber).await {
                let (tag, key, value) = match &event {
                    sled::Event::Insert { key, value } => (WATCH_PUT, key, Some(value)),
                    sled::Event::Remove { key } => (WATCH_DELETE, key, None),
                };
                let key = &key[prefix_len..];
                let mut size = 4 + key.len() + value.map_or(0, |value| value.len());
                let mut tag = tag;
                let mut value = value;
                if size > max_payload as usize {
                    tag |= 0x100;
                    value = None;
                    size = 4 + key.len();
                    if size > max_payload as usize {
                        continue;
                    }
                }
                let payload = match producer.reserve(size as u32, tag).await {
                    Ok(Some(payload)) => payload,
                    _ => return,
                };
                // SAFETY: `size` bytes were reserved at `payload` for this producer.
                unsafe {
                    (payload as *mut u32).write_unaligned((key.len() as u32).to_le());
                    std::ptr::copy_nonoverlapping(key.as_ptr(), payload.add(4), key.len());
                    if let Some(value) = value {
                        std::ptr::copy_nonoverlapping(
                            value.as_ptr(),
                            payload.add(4 + key.len()),
                            value.len(),
                        );
                    }
                }
                producer.publish();
            }
        })?;
        Ok::<i32, KernelError>(0)
    })
}
