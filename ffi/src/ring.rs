//! Single-producer/single-consumer rings in kernel-owned memory, mapped into
//! JS once. One side is the kernel, the other JS; records never cross as a
//! copy, and wake-ups happen per batch, not per record.
//!
//! Layout (all integers little-endian u32, cursors on their own cache lines):
//!
//! | offset | field | written by |
//! | --- | --- | --- |
//! | 0 | head: bytes ever produced (wraps at 2^32) | producer |
//! | 64 | tail: bytes ever consumed | consumer |
//! | 128 | native_waiting: 1 = the kernel side sleeps, call `krepis_ring_notify` | kernel |
//! | 132 | closed: 1 = no more records will be produced | either |
//! | 136 | capacity (power of two) | kernel, at creation |
//! | 140 | direction: 1 = kernel → JS, 2 = JS → kernel | kernel, at creation |
//! | 144 | js_armed: 1 = JS waits through an event queue, post an event | JS sets, kernel clears |
//! | 192 | data: `capacity` bytes | producer |
//!
//! A record is `[length u32][tag u32][payload]`, padded to 8 bytes, and is
//! always contiguous: when it does not fit before the end of the data area,
//! the producer writes a pad marker (`length = u32::MAX`) and continues at 0.
//! So a payload is one slice of the mapped memory, and the largest payload is
//! `capacity - 8` (a record exactly the ring's size).
//!
//! Waiting. The kernel side waits on a tokio `Notify`: it sets
//! `native_waiting`, re-checks, sleeps; JS, after moving its cursor, calls
//! `krepis_ring_notify` only if it sees the flag (one fast call per batch at
//! most). The JS side waits through its kernel's event queue
//! (`crate::events`): JS sets `js_armed`, re-checks, and waits for the
//! queue; the kernel, after moving its cursor, clears the flag and posts one
//! event (which wakes JS only if JS is parked).

use crate::boundary::{call, out_bytes, write_out};
use crate::error::{KernelError, KernelResult};
use crate::events::{EventQueue, EVENT_RING};
use crate::handles::{HandleKind, HandleTable};
use crate::kernel::kernel;
use crate::memory::{BufferAccounting, NativeMemory};
use crate::proto::RingStats;
use prost::Message;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::Notify;

pub const RING_HEAD: usize = 0;
pub const RING_TAIL: usize = 64;
pub const RING_NATIVE_WAITING: usize = 128;
pub const RING_CLOSED: usize = 132;
pub const RING_CAPACITY: usize = 136;
pub const RING_DIRECTION: usize = 140;
pub const RING_JS_ARMED: usize = 144;
pub const RING_HEADER_BYTES: usize = 192;
pub const RING_RECORD_HEADER_BYTES: u32 = 8;
pub const RING_PAD: u32 = u32::MAX;
pub const RING_MIN_CAPACITY: u32 = 64;
pub const RING_MAX_CAPACITY: u32 = 1 << 30;

/// Which side produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToJs = 1,
    ToKernel = 2,
}

static RINGS: HandleTable<Ring> = HandleTable::new(HandleKind::Ring);

/// Counters of the kernel side of a ring, reported in its stats. Only the
/// diagnostics producer/consumer (`crate::diagnostics`) counts into them.
#[derive(Default)]
pub(crate) struct NativeCounters {
    pub(crate) records: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) checksum: AtomicU64,
    pub(crate) errors: AtomicU64,
}

pub struct Ring {
    kernel_id: u64,
    memory: NativeMemory,
    capacity: u32,
    direction: Direction,
    accounting: Arc<BufferAccounting>,
    /// Set when a kernel task became this ring's producer or consumer: the
    /// kernel side is single-threaded by construction (SPSC).
    native_claimed: AtomicBool,
    native_wake: Notify,
    pub(crate) counters: NativeCounters,
    /// Where JS waits for this ring: its kernel's event queue, and this
    /// ring's handle (set once the ring has one).
    events: OnceLock<(Arc<EventQueue>, u32)>,
}

/// The total bytes a record with `len` payload bytes occupies.
pub fn record_size(len: u32) -> u64 {
    u64::from(RING_RECORD_HEADER_BYTES) + u64::from(len).div_ceil(8) * 8
}

impl Ring {
    fn new(
        kernel_id: u64,
        capacity: u32,
        direction: Direction,
        accounting: Arc<BufferAccounting>,
    ) -> KernelResult<Ring> {
        if !capacity.is_power_of_two()
            || !(RING_MIN_CAPACITY..=RING_MAX_CAPACITY).contains(&capacity)
        {
            return Err(KernelError::invalid_argument(format!(
                "ring capacity must be a power of two from {RING_MIN_CAPACITY} to {RING_MAX_CAPACITY}, got {capacity}"
            ))
            .with_detail("field", "capacity"));
        }
        let memory = NativeMemory::zeroed(RING_HEADER_BYTES + capacity as usize)?;
        let ring = Ring {
            kernel_id,
            memory,
            capacity,
            direction,
            accounting,
            native_claimed: AtomicBool::new(false),
            native_wake: Notify::new(),
            counters: NativeCounters::default(),
            events: OnceLock::new(),
        };
        ring.word(RING_CAPACITY).store(capacity, Ordering::Relaxed);
        ring.word(RING_DIRECTION)
            .store(direction as u32, Ordering::Relaxed);
        ring.accounting.live_rings.fetch_add(1, Ordering::Relaxed);
        ring.accounting
            .ring_capacity_bytes
            .fetch_add(u64::from(capacity), Ordering::Relaxed);
        Ok(ring)
    }

    /// A shared u32 of the header.
    pub(crate) fn word(&self, offset: usize) -> &AtomicU32 {
        debug_assert!(offset + 4 <= RING_HEADER_BYTES && offset % 4 == 0);
        // SAFETY: the header lies inside the allocation, the offset is 4-byte
        // aligned (the allocation is 64-aligned), and every access to these
        // words, from Rust or JS (Atomics), is atomic.
        unsafe { &*(self.memory.as_ptr().add(offset) as *const AtomicU32) }
    }

    pub(crate) fn data(&self) -> *mut u8 {
        // SAFETY: RING_HEADER_BYTES is within the allocation.
        unsafe { self.memory.as_ptr().add(RING_HEADER_BYTES) }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Process-unique id of the kernel that owns the ring.
    pub fn kernel_id(&self) -> u64 {
        self.kernel_id
    }

    pub fn is_closed(&self) -> bool {
        self.word(RING_CLOSED).load(Ordering::SeqCst) != 0
    }

    /// Bytes queued now.
    /// Bytes queued now, clamped to the capacity (a corrupt cursor written by
    /// a misbehaving JS side must not make arithmetic overflow).
    ///
    /// SeqCst: the wake-up protocol stores a flag or cursor and then reads the
    /// other side's cursor; with weaker loads the two could reorder (e.g. RCpc
    /// acquire loads on aarch64) and a wake-up could be lost.
    pub fn used(&self) -> u32 {
        let head = self.word(RING_HEAD).load(Ordering::SeqCst);
        let tail = self.word(RING_TAIL).load(Ordering::SeqCst);
        head.wrapping_sub(tail).min(self.capacity)
    }

    /// Records published and not yet consumed for which `counts` holds (a
    /// walk over them;
    /// call it only while the consumer is not moving, e.g. from the JS
    /// thread's own call for a kernel → JS ring).
    pub fn queued_records_where(&self, counts: impl Fn(&[u8]) -> bool) -> u64 {
        let (head, mut tail) = self.cursors();
        let mut count = 0;
        while tail != head {
            match self.record_at(tail, head) {
                Ok(Step::Pad { skip }) => tail = tail.wrapping_add(skip),
                Ok(Step::Record { payload, size, .. }) => {
                    count += u64::from(counts(payload));
                    tail = tail.wrapping_add(size);
                }
                Err(_) => break,
            }
        }
        count
    }

    /// What lies at `cursor` of the data area, given the producer's `head`
    /// (`cursor != head`). A consumer walks records with it. A record that
    /// breaks the format (only a misbehaving JS writer can make one) closes
    /// the ring and is an error: the ring is refused, not the process.
    pub(crate) fn record_at(&self, cursor: u32, head: u32) -> KernelResult<Step<'_>> {
        let capacity = self.capacity;
        let queued = head.wrapping_sub(cursor);
        if queued > capacity {
            self.close();
            return Err(KernelError::invalid_argument(format!(
                "corrupt ring: head is {queued} bytes ahead of the consumer (capacity {capacity})"
            )));
        }
        let offset = cursor & (capacity - 1);
        // SAFETY: offset is 8-aligned and inside the data area; the
        // producer published this header before `head`.
        let (len, tag) = unsafe {
            let record = self.data().add(offset as usize);
            (
                u32::from_le((record as *const u32).read()),
                u32::from_le((record.add(4) as *const u32).read()),
            )
        };
        if len == RING_PAD && capacity - offset <= queued {
            return Ok(Step::Pad {
                skip: capacity - offset,
            });
        }
        let size = record_size(len);
        if size > u64::from(capacity - offset) || size > u64::from(queued) {
            self.close();
            return Err(KernelError::invalid_argument(format!(
                "corrupt record in ring at offset {offset}: length {len} does not fit"
            )));
        }
        // SAFETY: the payload lies inside the data area (checked above) and
        // the producer does not touch it until the consumer's cursor passes
        // it. (Only a JS writer breaking the protocol could write it
        // meanwhile; the SDK's writer never does.)
        let payload = unsafe {
            std::slice::from_raw_parts(
                self.data()
                    .add(offset as usize + RING_RECORD_HEADER_BYTES as usize),
                len as usize,
            )
        };
        Ok(Step::Record {
            tag,
            payload,
            size: size as u32,
        })
    }

    /// The (head, tail) cursors: bytes ever produced and consumed.
    pub fn cursors(&self) -> (u32, u32) {
        (
            self.word(RING_HEAD).load(Ordering::SeqCst),
            self.word(RING_TAIL).load(Ordering::SeqCst),
        )
    }

    /// Marks the ring closed and wakes both sides.
    pub fn close(&self) {
        self.word(RING_CLOSED).store(1, Ordering::SeqCst);
        self.native_wake.notify_one();
        self.wake_js(true);
    }

    /// Tells JS the ring moved, if JS armed it (or always with `force`).
    pub(crate) fn wake_js(&self, force: bool) {
        if let Some((events, handle)) = self.events.get() {
            let armed = self.word(RING_JS_ARMED);
            // SeqCst pairs with JS's Atomics.store(armed) + Atomics.load(cursor):
            // either JS sees the new cursor or the kernel sees the flag.
            if force || (armed.load(Ordering::SeqCst) != 0 && armed.swap(0, Ordering::SeqCst) != 0)
            {
                events.push(EVENT_RING, *handle);
            }
        }
    }

    /// Sleeps the kernel side until `ready()` or the ring closes; false when closed.
    pub(crate) async fn wait_native(&self, ready: impl Fn() -> bool) -> bool {
        loop {
            if ready() {
                return true;
            }
            if self.is_closed() {
                return false;
            }
            let notified = self.native_wake.notified();
            self.word(RING_NATIVE_WAITING).store(1, Ordering::SeqCst);
            if ready() || self.is_closed() {
                self.word(RING_NATIVE_WAITING).store(0, Ordering::SeqCst);
                continue;
            }
            notified.await;
            self.word(RING_NATIVE_WAITING).store(0, Ordering::SeqCst);
        }
    }

    /// Makes the caller the ring's only kernel-side producer or consumer.
    pub fn claim(&self) -> KernelResult<()> {
        if self.native_claimed.swap(true, Ordering::SeqCst) {
            return Err(KernelError::invalid_argument(
                "the ring already has a kernel-side producer or consumer (rings are single-producer, single-consumer)",
            ));
        }
        Ok(())
    }

    fn stats(&self) -> RingStats {
        RingStats {
            capacity: self.capacity,
            used: self.used(),
            direction: self.direction as u32,
            closed: self.is_closed(),
            native_records: self.counters.records.load(Ordering::Relaxed),
            native_bytes: self.counters.bytes.load(Ordering::Relaxed),
            native_checksum: self.counters.checksum.load(Ordering::Relaxed),
            native_errors: self.counters.errors.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        self.accounting.live_rings.fetch_sub(1, Ordering::Relaxed);
        self.accounting
            .ring_capacity_bytes
            .fetch_sub(u64::from(self.capacity), Ordering::Relaxed);
    }
}

/// One step of a walk over a ring's published records.
pub(crate) enum Step<'a> {
    /// A pad marker: the next record starts `skip` bytes later, at offset 0.
    Pad { skip: u32 },
    /// A record of `size` bytes in all (header and padding included).
    Record {
        tag: u32,
        payload: &'a [u8],
        size: u32,
    },
}

/// The kernel as producer of a kernel → JS ring.
pub struct Producer {
    ring: Arc<Ring>,
    head: u32,
    unpublished: u32,
}

impl Producer {
    pub fn new(ring: Arc<Ring>) -> Producer {
        let head = ring.word(RING_HEAD).load(Ordering::Acquire);
        Producer {
            ring,
            head,
            unpublished: 0,
        }
    }

    fn free(&self) -> u32 {
        let tail = self.ring.word(RING_TAIL).load(Ordering::SeqCst);
        let used = self.head.wrapping_sub(tail);
        if used > self.ring.capacity {
            // The JS consumer wrote a tail beyond the head: refuse the ring
            // instead of overwriting unread records.
            self.ring.close();
            return 0;
        }
        self.ring.capacity - used
    }

    /// Reserves a record of `len` payload bytes and returns the payload
    /// pointer, or `None` when the ring is full now. A pad record may be
    /// written first when the record would straddle the end.
    pub fn try_reserve(&mut self, len: u32, tag: u32) -> KernelResult<Option<*mut u8>> {
        let size = record_size(len);
        if size > u64::from(self.ring.capacity) {
            return Err(record_too_large(len, self.ring.capacity));
        }
        let size = size as u32;
        let mask = self.ring.capacity - 1;
        let offset = self.head & mask;
        let contiguous = self.ring.capacity - offset;
        if size > contiguous {
            if self.free() < contiguous {
                return Ok(None);
            }
            // SAFETY: offset + 4 <= capacity (offsets are 8-aligned); the
            // consumer does not read past the published head.
            unsafe { (self.ring.data().add(offset as usize) as *mut u32).write(RING_PAD.to_le()) };
            self.head = self.head.wrapping_add(contiguous);
            self.unpublished += contiguous;
            return self.try_reserve(len, tag);
        }
        if self.free() < size {
            return Ok(None);
        }
        // SAFETY: `size` free bytes start at `offset` and lie before the end
        // of the data area; the consumer does not read them until published.
        let payload = unsafe {
            let record = self.ring.data().add(offset as usize);
            (record as *mut u32).write(len.to_le());
            (record.add(4) as *mut u32).write(tag.to_le());
            record.add(RING_RECORD_HEADER_BYTES as usize)
        };
        self.head = self.head.wrapping_add(size);
        self.unpublished += size;
        Ok(Some(payload))
    }

    /// Reserves, waiting for space. `Ok(None)` when the ring closed.
    pub async fn reserve(&mut self, len: u32, tag: u32) -> KernelResult<Option<*mut u8>> {
        loop {
            if let Some(payload) = self.try_reserve(len, tag)? {
                return Ok(Some(payload));
            }
            self.publish();
            let size = record_size(len) as u32;
            let ring = Arc::clone(&self.ring);
            let head = self.head;
            let ready = move || {
                let tail = ring.word(RING_TAIL).load(Ordering::SeqCst);
                let free = ring.capacity.saturating_sub(head.wrapping_sub(tail));
                let contiguous = ring.capacity - (head & (ring.capacity - 1));
                free >= size.min(contiguous)
            };
            if !self.ring.wait_native(ready).await {
                return Ok(None);
            }
        }
    }

    /// Makes every reserved record visible and wakes a waiting JS reader.
    pub fn publish(&mut self) {
        if self.unpublished == 0 {
            return;
        }
        self.unpublished = 0;
        self.ring.word(RING_HEAD).store(self.head, Ordering::SeqCst);
        self.ring.wake_js(false);
    }

    pub fn capacity(&self) -> u32 {
        self.ring.capacity
    }

    pub fn unpublished_bytes(&self) -> u32 {
        self.unpublished
    }
}

/// The kernel as consumer of a JS → kernel ring.
pub struct Consumer {
    ring: Arc<Ring>,
    tail: u32,
}

impl Consumer {
    pub fn new(ring: Arc<Ring>) -> Consumer {
        let tail = ring.word(RING_TAIL).load(Ordering::Acquire);
        Consumer { ring, tail }
    }

    /// Hands every published record to `on_record(tag, payload)`, then frees
    /// their space (one store) and wakes a waiting JS writer. Returns how many.
    pub fn drain(&mut self, mut on_record: impl FnMut(u32, &[u8])) -> KernelResult<usize> {
        let head = self.ring.word(RING_HEAD).load(Ordering::Acquire);
        let mut count = 0;
        while self.tail != head {
            match self.ring.record_at(self.tail, head)? {
                Step::Pad { skip } => self.tail = self.tail.wrapping_add(skip),
                Step::Record { tag, payload, size } => {
                    on_record(tag, payload);
                    self.tail = self.tail.wrapping_add(size);
                    count += 1;
                }
            }
        }
        if count > 0 || self.ring.word(RING_TAIL).load(Ordering::Relaxed) != self.tail {
            self.ring.word(RING_TAIL).store(self.tail, Ordering::SeqCst);
            self.ring.wake_js(false);
        }
        Ok(count)
    }

    /// Waits until records are published; false when the ring closed and is empty.
    pub async fn readable(&self) -> bool {
        let ring = Arc::clone(&self.ring);
        let tail = self.tail;
        let ready = move || ring.word(RING_HEAD).load(Ordering::SeqCst) != tail;
        self.ring.wait_native(ready).await
            || self.ring.word(RING_HEAD).load(Ordering::SeqCst) != self.tail
    }
}

pub(crate) fn record_too_large(len: u32, capacity: u32) -> KernelError {
    KernelError::invalid_argument(format!(
        "a record of {len} bytes does not fit a ring of {capacity} bytes (at most {})",
        capacity - RING_RECORD_HEADER_BYTES
    ))
    .with_detail("reason", "record_too_large")
}

/// Occupancy of every ring of a kernel, for its stats.
pub fn used_bytes_of(kernel_id: u64) -> u64 {
    RINGS.sum(|ring| {
        if ring.kernel_id == kernel_id {
            u64::from(ring.used())
        } else {
            0
        }
    })
}

/// Closes and frees every ring of a kernel (on kernel close).
pub fn release_owned(kernel_id: u64) {
    for ring in RINGS.drain_where(|ring| ring.kernel_id == kernel_id) {
        ring.close();
    }
}

/// Looks up a live ring (for capabilities that produce into / consume from it).
pub fn ring(handle: u32) -> KernelResult<Arc<Ring>> {
    RINGS.get(handle)
}

/// Creates a ring of `capacity` data bytes (a power of two, 64 B – 1 GiB) for
/// `direction` (1 = kernel → JS, 2 = JS → kernel). Writes its handle to
/// `out[0]` and the address of its memory (header + data) to `out[1]`.
///
/// # Safety
/// `out` must point to two writable, aligned `u64`s.
#[no_mangle]
pub unsafe extern "C" fn krepis_ring_create(
    kernel: u32,
    capacity: u32,
    direction: u32,
    out: *mut u64,
) -> i32 {
    call("krepis_ring_create", || {
        if out.is_null() || !out.is_aligned() {
            return Err(KernelError::invalid_argument(
                "out must point to two aligned u64",
            ));
        }
        let owner = self::kernel(kernel)?;
        let direction = match direction {
            1 => Direction::ToJs,
            2 => Direction::ToKernel,
            other => {
                return Err(KernelError::invalid_argument(format!(
                    "ring direction must be 1 (kernel → JS) or 2 (JS → kernel), got {other}"
                )))
            }
        };
        let ring = Ring::new(
            owner.id(),
            capacity,
            direction,
            Arc::clone(owner.accounting()),
        )?;
        let address = ring.memory.address();
        let ring = Arc::new(ring);
        let handle = RINGS.insert(Arc::clone(&ring))?;
        let _ = ring.events.set((Arc::clone(owner.events()), handle));
        // SAFETY: checked non-null and aligned; the caller guarantees two u64.
        unsafe {
            out.write(u64::from(handle));
            out.add(1).write(address);
        }
        Ok(0)
    })
}

/// Closes and frees a ring. The SDK has detached every JS view of it first;
/// a kernel task still using it keeps the memory alive until it stops.
#[no_mangle]
pub extern "C" fn krepis_ring_close(ring: u32) -> i32 {
    call("krepis_ring_close", || {
        RINGS.remove(ring)?.close();
        Ok(0)
    })
}

/// Wakes the kernel side of a ring. JS calls it after moving its cursor, and
/// only when it sees `native_waiting` set: at most once per batch.
#[no_mangle]
pub extern "C" fn krepis_ring_notify(ring: u32) -> i32 {
    call("krepis_ring_notify", || {
        RINGS.get(ring)?.native_wake.notify_one();
        Ok(0)
    })
}

/// Writes the ring's `krepis.v1.RingStats` (protobuf) into `out`; returns its length.
///
/// # Safety
/// `out` must be null or point to `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_ring_stats(ring: u32, out: *mut u8, cap: u32) -> i32 {
    call("krepis_ring_stats", || {
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { out_bytes(out, cap, "out")? };
        write_out(&RINGS.get(ring)?.stats().encode_to_vec(), out)
    })
}

/// A ring outside any handle table, for unit tests.
#[cfg(test)]
pub(crate) fn test_ring(capacity: u32) -> Arc<Ring> {
    Arc::new(
        Ring::new(
            0,
            capacity,
            Direction::ToJs,
            Arc::new(BufferAccounting::default()),
        )
        .expect("a valid test ring"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ErrorCode;

    fn ring(capacity: u32) -> Arc<Ring> {
        test_ring(capacity)
    }

    #[test]
    fn every_length_wraps_at_every_offset() {
        for len in 0..=(256 - RING_RECORD_HEADER_BYTES) {
            let ring = ring(256);
            let mut producer = Producer::new(Arc::clone(&ring));
            let mut consumer = Consumer::new(Arc::clone(&ring));
            let mut received = 0u64;
            for sequence in 0..40u64 {
                let payload = producer
                    .try_reserve(len, sequence as u32)
                    .unwrap()
                    .expect("an empty ring has room for any record that fits");
                for index in 0..len as usize {
                    // SAFETY: `len` bytes were reserved at `payload`.
                    unsafe {
                        payload
                            .add(index)
                            .write(crate::diagnostics::pattern_byte(sequence, index))
                    };
                }
                producer.publish();
                consumer
                    .drain(|tag, bytes| {
                        assert_eq!(u64::from(tag), received);
                        assert_eq!(bytes.len(), len as usize);
                        for (index, &byte) in bytes.iter().enumerate() {
                            assert_eq!(byte, crate::diagnostics::pattern_byte(received, index));
                        }
                        received += 1;
                    })
                    .unwrap();
            }
            assert_eq!(received, 40);
            assert_eq!(ring.used(), 0);
        }
    }

    #[test]
    fn full_ring_would_block_and_too_large_is_refused() {
        let ring = ring(1024);
        let mut producer = Producer::new(Arc::clone(&ring));
        let mut count = 0;
        while producer.try_reserve(56, 0).unwrap().is_some() {
            count += 1;
        }
        assert_eq!(count, 1024 / 64);
        producer.publish();
        assert_eq!(ring.used(), 1024);
        let error = producer.try_reserve(1024 - 7, 0).unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidArgument);
        let mut consumer = Consumer::new(Arc::clone(&ring));
        assert_eq!(consumer.drain(|_, _| {}).unwrap(), 16);
        assert!(producer.try_reserve(1024 - 8, 0).unwrap().is_some());
    }

    #[test]
    fn corrupt_records_close_the_ring_instead_of_crashing() {
        let ring = ring(256);
        // SAFETY: writes inside the data area, as a buggy JS writer could.
        unsafe { (ring.data() as *mut u32).write(10_000) };
        ring.word(RING_HEAD).store(16, Ordering::SeqCst);
        let mut consumer = Consumer::new(Arc::clone(&ring));
        assert!(consumer.drain(|_, _| panic!("no record")).is_err());
        assert!(ring.is_closed());
    }
}
