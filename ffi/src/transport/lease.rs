//! Leasing records out of a JS → kernel ring: a record handed to
//! asynchronous I/O (quinn keeps a stream's bytes until the peer
//! acknowledges them) without copying it. The record's ring space is given
//! back to JS only when its lease is dropped, and always in ring order: the
//! tail never passes a record that is still leased.

use crate::error::KernelResult;
use crate::ring::{Ring, Step, RING_HEAD, RING_TAIL};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// The leases of one ring.
struct Leases {
    ring: Arc<Ring>,
    state: Mutex<LeaseState>,
}

struct LeaseState {
    /// Everything before this cursor has been handed to the consumer.
    scanned: u32,
    /// Leased records in ring order: (start cursor, released).
    outstanding: VecDeque<(u32, bool)>,
    /// The tail last published to JS.
    tail: u32,
}

impl Leases {
    /// Publishes the furthest tail no outstanding lease holds back.
    fn advance(&self, state: &mut LeaseState) {
        while matches!(state.outstanding.front(), Some((_, true))) {
            state.outstanding.pop_front();
        }
        let tail = state
            .outstanding
            .front()
            .map_or(state.scanned, |(start, _)| *start);
        if tail != state.tail {
            state.tail = tail;
            self.ring.word(RING_TAIL).store(tail, Ordering::SeqCst);
            self.ring.wake_js(false);
        }
    }

    fn release(&self, start: u32) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = state.outstanding.iter_mut().find(|(at, _)| *at == start) {
            entry.1 = true;
        }
        self.advance(&mut state);
    }
}

/// One leased record's payload. Dropping it gives the space back (in order).
pub struct RecordLease {
    leases: Arc<Leases>,
    start: u32,
    payload: *const u8,
    len: usize,
}

// SAFETY: the payload lies in ring memory kept alive by `leases.ring`; JS
// does not write it until the tail passes it, which waits for this lease.
unsafe impl Send for RecordLease {}
// SAFETY: as above; the lease only hands out shared reads.
unsafe impl Sync for RecordLease {}

impl AsRef<[u8]> for RecordLease {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: see the Send impl: `len` bytes at `payload` stay valid and
        // unchanged while the lease lives.
        unsafe { std::slice::from_raw_parts(self.payload, self.len) }
    }
}

impl Drop for RecordLease {
    fn drop(&mut self) {
        self.leases.release(self.start);
    }
}

/// The kernel as the consumer of a JS → kernel ring whose records may be
/// kept beyond the call that reads them.
pub struct LeasingConsumer {
    ring: Arc<Ring>,
    scan: u32,
    leases: Arc<Leases>,
}

impl LeasingConsumer {
    pub fn new(ring: Arc<Ring>) -> LeasingConsumer {
        let tail = ring.word(RING_TAIL).load(Ordering::Acquire);
        LeasingConsumer {
            leases: Arc::new(Leases {
                ring: Arc::clone(&ring),
                state: Mutex::new(LeaseState {
                    scanned: tail,
                    outstanding: VecDeque::new(),
                    tail,
                }),
            }),
            ring,
            scan: tail,
        }
    }

    /// Waits until records are published past what was read; false when the
    /// ring closed and nothing is left.
    pub async fn readable(&self) -> bool {
        let ring = Arc::clone(&self.ring);
        let scan = self.scan;
        let ready = move || ring.word(RING_HEAD).load(Ordering::SeqCst) != scan;
        self.ring.wait_native(ready).await
            || self.ring.word(RING_HEAD).load(Ordering::SeqCst) != self.scan
    }

    /// Hands every published record to `on_record(tag, payload)`; a record
    /// for which it returns true is leased (in order, in the returned
    /// vector), the others' space is given back when this call returns.
    pub fn drain(
        &mut self,
        mut on_record: impl FnMut(u32, &[u8]) -> bool,
    ) -> KernelResult<Vec<RecordLease>> {
        let head = self.ring.word(RING_HEAD).load(Ordering::Acquire);
        let mut leased = Vec::new();
        let mut state = self.leases.state.lock().unwrap_or_else(|p| p.into_inner());
        while self.scan != head {
            match self.ring.record_at(self.scan, head)? {
                Step::Pad { skip } => self.scan = self.scan.wrapping_add(skip),
                Step::Record { tag, payload, size } => {
                    if on_record(tag, payload) {
                        state.outstanding.push_back((self.scan, false));
                        leased.push(RecordLease {
                            leases: Arc::clone(&self.leases),
                            start: self.scan,
                            payload: payload.as_ptr(),
                            len: payload.len(),
                        });
                    }
                    self.scan = self.scan.wrapping_add(size);
                }
            }
        }
        state.scanned = self.scan;
        self.leases.advance(&mut state);
        Ok(leased)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::{record_size, test_ring};

    /// JS-side writer for tests: one record at the head, published.
    fn write(ring: &Ring, head: &mut u32, payload: &[u8]) {
        let offset = (*head & (ring.capacity() - 1)) as usize;
        // SAFETY: tests keep records inside the data area.
        unsafe {
            let record = ring.data().add(offset);
            (record as *mut u32).write((payload.len() as u32).to_le());
            (record.add(4) as *mut u32).write(0);
            std::ptr::copy_nonoverlapping(payload.as_ptr(), record.add(8), payload.len());
        }
        *head = head.wrapping_add(record_size(payload.len() as u32) as u32);
        ring.word(RING_HEAD).store(*head, Ordering::SeqCst);
    }

    #[test]
    fn space_comes_back_in_order_once_leases_drop() {
        let ring = test_ring(256);
        let mut head = 0;
        let mut consumer = LeasingConsumer::new(Arc::clone(&ring));
        write(&ring, &mut head, &[1; 8]); // 16 bytes, copied
        write(&ring, &mut head, &[2; 24]); // 32 bytes, leased
        write(&ring, &mut head, &[3; 8]); // 16 bytes, copied
        write(&ring, &mut head, &[4; 8]); // 16 bytes, leased
        let mut seen = Vec::new();
        let mut leases = consumer
            .drain(|_, payload| {
                seen.push(payload[0]);
                payload[0] % 2 == 0
            })
            .unwrap();
        assert_eq!(seen, [1, 2, 3, 4]);
        assert_eq!(leases.len(), 2);
        assert_eq!(leases[0].as_ref(), &[2; 24]);
        let tail = || ring.word(RING_TAIL).load(Ordering::SeqCst);
        assert_eq!(
            tail(),
            16,
            "the first record is free, the lease holds the rest"
        );
        let second = leases.pop().unwrap();
        drop(second);
        assert_eq!(
            tail(),
            16,
            "a later lease does not free space before an earlier one"
        );
        drop(leases);
        assert_eq!(tail(), 80, "everything is free once every lease is gone");
    }
}
