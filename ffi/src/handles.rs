//! Handles: how kernel objects cross the boundary.
//!
//! A handle is a `u32` (a fast FFI number in Deno) made of
//! `kind (4 bits) | generation (10 bits) | slot (18 bits)`. The kind catches a
//! handle of one table passed to another; the generation catches a handle
//! used after its object was removed. Freed slots are reused in FIFO order and
//! only once enough are free, so a stale handle keeps failing for a long time
//! instead of aliasing the next object. Handle 0 is never valid.

use crate::error::{KernelError, KernelResult};
use crate::proto::ErrorCode;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

const SLOT_BITS: u32 = 18;
const GENERATION_BITS: u32 = 10;
const MAX_SLOTS: usize = 1 << SLOT_BITS;
const GENERATION_MASK: u32 = (1 << GENERATION_BITS) - 1;
/// Free slots kept in quarantine before one is reused.
const REUSE_AFTER_FREE: usize = 64;

/// Which table a handle belongs to (the top 4 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum HandleKind {
    Kernel = 1,
    Buffer = 2,
    Ring = 3,
    Tree = 4,
    Scan = 5,
    Guard = 6,
    Transport = 7,
    Listener = 8,
    Link = 9,
    HttpServer = 10,
}

impl HandleKind {
    fn name(self) -> &'static str {
        match self {
            HandleKind::Kernel => "kernel",
            HandleKind::Buffer => "buffer",
            HandleKind::Ring => "ring",
            HandleKind::Tree => "store tree",
            HandleKind::Scan => "store scan",
            HandleKind::Guard => "guarded process",
            HandleKind::Transport => "transport",
            HandleKind::Listener => "listener",
            HandleKind::Link => "link",
            HandleKind::HttpServer => "HTTP server",
        }
    }

    fn from_bits(bits: u32) -> Option<Self> {
        match bits {
            1 => Some(HandleKind::Kernel),
            2 => Some(HandleKind::Buffer),
            3 => Some(HandleKind::Ring),
            4 => Some(HandleKind::Tree),
            5 => Some(HandleKind::Scan),
            6 => Some(HandleKind::Guard),
            7 => Some(HandleKind::Transport),
            8 => Some(HandleKind::Listener),
            9 => Some(HandleKind::Link),
            10 => Some(HandleKind::HttpServer),
            _ => None,
        }
    }
}

struct Entry<T> {
    generation: u32,
    value: Option<Arc<T>>,
}

struct Slots<T> {
    entries: Vec<Entry<T>>,
    free: VecDeque<u32>,
    live: usize,
}

/// A table of objects reachable by handle. Lookups clone an `Arc`, so an object
/// stays alive for a call that is using it even if another thread removes it.
pub struct HandleTable<T> {
    kind: HandleKind,
    slots: Mutex<Slots<T>>,
}

/// Generation 0 is skipped so that handle 0 can never be valid.
fn next_generation(generation: u32) -> u32 {
    match (generation + 1) & GENERATION_MASK {
        0 => 1,
        next => next,
    }
}

fn pack(kind: HandleKind, generation: u32, slot: u32) -> u32 {
    ((kind as u32) << (SLOT_BITS + GENERATION_BITS)) | (generation << SLOT_BITS) | slot
}

impl<T> HandleTable<T> {
    pub const fn new(kind: HandleKind) -> Self {
        Self {
            kind,
            slots: Mutex::new(Slots {
                entries: Vec::new(),
                free: VecDeque::new(),
                live: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Slots<T>> {
        // A panic while holding the lock cannot leave the table inconsistent
        // (every mutation is a single assignment), so poisoning is ignored.
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stores `value` and returns its new handle.
    pub fn insert(&self, value: Arc<T>) -> KernelResult<u32> {
        let mut slots = self.lock();
        let slot = if slots.free.len() > REUSE_AFTER_FREE || slots.entries.len() >= MAX_SLOTS {
            slots.free.pop_front()
        } else {
            None
        };
        let slot = match slot {
            Some(slot) => slot,
            None if slots.entries.len() < MAX_SLOTS => {
                slots.entries.push(Entry {
                    generation: 1,
                    value: None,
                });
                (slots.entries.len() - 1) as u32
            }
            None => {
                return Err(KernelError::new(
                    ErrorCode::ResourceExhausted,
                    format!(
                        "too many open {} handles (limit {MAX_SLOTS})",
                        self.kind.name()
                    ),
                ))
            }
        };
        let entry = &mut slots.entries[slot as usize];
        entry.value = Some(value);
        let generation = entry.generation;
        slots.live += 1;
        Ok(pack(self.kind, generation, slot))
    }

    /// Splits a handle, checking that it belongs to this table.
    fn decode(&self, handle: u32) -> KernelResult<(u32, u32)> {
        let kind_bits = handle >> (SLOT_BITS + GENERATION_BITS);
        if kind_bits != self.kind as u32 {
            let actual = match HandleKind::from_bits(kind_bits) {
                Some(kind) => format!("a {} handle", kind.name()),
                None => "not a krepis handle".to_owned(),
            };
            return Err(KernelError::new(
                ErrorCode::InvalidHandle,
                format!(
                    "handle {handle:#010x} is {actual}, expected a {} handle",
                    self.kind.name()
                ),
            ));
        }
        let generation = (handle >> SLOT_BITS) & GENERATION_MASK;
        let slot = handle & ((1 << SLOT_BITS) - 1);
        Ok((generation, slot))
    }

    fn stale(&self, handle: u32, never_issued: bool) -> KernelError {
        if never_issued {
            KernelError::new(
                ErrorCode::InvalidHandle,
                format!(
                    "{} handle {handle:#010x} was never issued",
                    self.kind.name()
                ),
            )
        } else {
            KernelError::new(
                ErrorCode::Closed,
                format!("{} handle {handle:#010x} is closed", self.kind.name()),
            )
        }
    }

    /// The object behind `handle`, or `InvalidHandle` / `Closed`.
    pub fn get(&self, handle: u32) -> KernelResult<Arc<T>> {
        let (generation, slot) = self.decode(handle)?;
        let slots = self.lock();
        match slots.entries.get(slot as usize) {
            Some(Entry {
                generation: current,
                value: Some(value),
            }) if *current == generation => Ok(Arc::clone(value)),
            Some(_) => Err(self.stale(handle, false)),
            None => Err(self.stale(handle, true)),
        }
    }

    /// Removes the object behind `handle`; the handle is dead afterwards.
    pub fn remove(&self, handle: u32) -> KernelResult<Arc<T>> {
        let (generation, slot) = self.decode(handle)?;
        let mut slots = self.lock();
        let Some(entry) = slots.entries.get_mut(slot as usize) else {
            return Err(self.stale(handle, true));
        };
        if entry.generation != generation || entry.value.is_none() {
            return Err(self.stale(handle, false));
        }
        let value = entry.value.take().expect("checked above");
        entry.generation = next_generation(entry.generation);
        slots.free.push_back(slot);
        slots.live -= 1;
        Ok(value)
    }

    /// Removes every object for which `owned` is true (used when the owner
    /// shuts down); their handles are dead afterwards.
    pub fn drain_where(&self, owned: impl Fn(&T) -> bool) -> Vec<Arc<T>> {
        let mut slots = self.lock();
        let mut drained = Vec::new();
        let mut freed = Vec::new();
        for (index, entry) in slots.entries.iter_mut().enumerate() {
            if entry.value.as_deref().is_some_and(&owned) {
                drained.push(entry.value.take().expect("checked by is_some_and"));
                entry.generation = next_generation(entry.generation);
                freed.push(index as u32);
            }
        }
        slots.live -= drained.len();
        slots.free.extend(freed);
        drained
    }

    /// Sums `value(object)` over every live object.
    pub fn sum(&self, value: impl Fn(&T) -> u64) -> u64 {
        let slots = self.lock();
        slots
            .entries
            .iter()
            .filter_map(|entry| entry.value.as_deref())
            .map(value)
            .sum()
    }

    /// The first live object for which `matches` is true.
    pub fn find(&self, matches: impl Fn(&T) -> bool) -> Option<Arc<T>> {
        let slots = self.lock();
        slots
            .entries
            .iter()
            .filter_map(|entry| entry.value.as_ref())
            .find(|value| matches(value))
            .cloned()
    }

    /// Objects currently reachable.
    pub fn live(&self) -> usize {
        self.lock().live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_nonzero_and_roundtrip() {
        let table = HandleTable::new(HandleKind::Kernel);
        let handle = table.insert(Arc::new(7)).unwrap();
        assert_ne!(handle, 0);
        assert_eq!(*table.get(handle).unwrap(), 7);
        assert_eq!(table.live(), 1);
    }

    #[test]
    fn removed_handle_is_closed_and_stays_closed_across_reuse() {
        let table = HandleTable::new(HandleKind::Kernel);
        let first = table.insert(Arc::new(1)).unwrap();
        table.remove(first).unwrap();
        assert_eq!(table.get(first).unwrap_err().code, ErrorCode::Closed);
        assert_eq!(table.remove(first).unwrap_err().code, ErrorCode::Closed);
        for value in 0..1000 {
            let handle = table.insert(Arc::new(value)).unwrap();
            assert_ne!(handle, first, "a stale handle must not alias a new object");
            table.remove(handle).unwrap();
        }
        assert_eq!(table.live(), 0);
    }

    #[test]
    fn forged_handles_are_rejected() {
        let table: HandleTable<u8> = HandleTable::new(HandleKind::Kernel);
        assert_eq!(table.get(0).unwrap_err().code, ErrorCode::InvalidHandle);
        assert_eq!(
            table.get(0xffff_ffff).unwrap_err().code,
            ErrorCode::InvalidHandle
        );
        let never = pack(HandleKind::Kernel, 1, 42);
        assert_eq!(table.get(never).unwrap_err().code, ErrorCode::InvalidHandle);
    }

    #[test]
    fn drain_empties_the_table() {
        let table = HandleTable::new(HandleKind::Kernel);
        let handles: Vec<u32> = (0..5).map(|v| table.insert(Arc::new(v)).unwrap()).collect();
        assert_eq!(table.drain_where(|v| v % 2 == 0).len(), 3);
        assert_eq!(table.live(), 2);
        assert_eq!(table.drain_where(|_| true).len(), 2);
        for handle in handles {
            assert_eq!(table.get(handle).unwrap_err().code, ErrorCode::Closed);
        }
    }
}
