//! Readiness events: many kernel objects (the rings of transport links,
//! listeners, pending connects) report to JS through ONE queue, so JS waits
//! with one `nonblocking` call however many objects it waits on. A
//! `nonblocking` call per object would hold a Deno blocking-pool thread each,
//! and a thousand idle links would exhaust that pool.
//!
//! An event is `[kind u32][handle u32]` (little-endian). Objects post an event
//! only when JS armed them (edge-triggered, at most one per arm) or when they
//! close, so the queue stays bounded by the number of objects.

use crate::error::KernelResult;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// A ring JS armed became ready (records to read / space to write) or closed.
pub const EVENT_RING: u32 = 1;
/// A listener has links to accept, or closed.
pub const EVENT_LISTENER: u32 = 2;
/// A connect operation finished (the handle is the operation id).
pub const EVENT_CONNECT: u32 = 3;
/// A link ended (closed by either side or failed); its status is final.
pub const EVENT_LINK_CLOSED: u32 = 4;
/// Bytes per event record.
pub const EVENT_RECORD_BYTES: u32 = 8;

#[derive(Default)]
pub struct EventQueue {
    queue: Mutex<VecDeque<(u32, u32)>>,
    ready: Condvar,
    woken: AtomicBool,
    closed: AtomicBool,
}

impl EventQueue {
    pub fn push(&self, kind: u32, handle: u32) {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.push_back((kind, handle));
        self.ready.notify_all();
    }

    /// Makes a current (or the next) `wait` return without events.
    pub fn wake(&self) {
        let _queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        self.woken.store(true, Ordering::SeqCst);
        self.ready.notify_all();
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.wake();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Blocks until events are queued, `wake`/`close` was called or the
    /// timeout passed; moves as many events as fit into `out` and returns
    /// how many.
    pub fn wait(&self, out: &mut [u8], timeout: Duration) -> KernelResult<i32> {
        let capacity = out.len() / EVENT_RECORD_BYTES as usize;
        let deadline = Instant::now() + timeout;
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if !queue.is_empty() || capacity == 0 {
                break;
            }
            if self.woken.swap(false, Ordering::SeqCst) || self.is_closed() {
                return Ok(0);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(0);
            }
            queue = self
                .ready
                .wait_timeout(queue, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let count = capacity.min(queue.len());
        for (index, (kind, handle)) in queue.drain(..count).enumerate() {
            let record = &mut out[index * 8..index * 8 + 8];
            record[..4].copy_from_slice(&kind.to_le_bytes());
            record[4..].copy_from_slice(&handle.to_le_bytes());
        }
        Ok(count as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_returns_queued_events_in_order_and_wake_interrupts() {
        let events = EventQueue::default();
        events.push(EVENT_RING, 7);
        events.push(EVENT_LINK_CLOSED, 9);
        let mut out = [0u8; 8];
        assert_eq!(events.wait(&mut out, Duration::ZERO).unwrap(), 1);
        assert_eq!(out, [1, 0, 0, 0, 7, 0, 0, 0]);
        assert_eq!(events.wait(&mut out, Duration::ZERO).unwrap(), 1);
        assert_eq!(out[0], 4);
        events.wake();
        let started = Instant::now();
        assert_eq!(events.wait(&mut out, Duration::from_secs(5)).unwrap(), 0);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
