//! Readiness events: everything JS waits for in a kernel (rings with records
//! or room, listeners with links, finished connects, closed links, finished
//! commits, finished guarded commands) is announced through ONE queue per kernel, and JS sleeps at one
//! place per kernel however many objects it waits on.
//!
//! An event is `[kind u32][handle u32]` (little-endian). Objects post an event
//! only when JS armed them (edge-triggered, at most one per arm) or when they
//! close, so the queue stays bounded by the number of objects.
//!
//! Waking JS. JS drains the queue with a synchronous call ([`EventQueue::take`]);
//! when it finds it empty the queue marks JS *parked*, and only the next push
//! wakes it (a busy JS side costs no wake at all). The wake is one of:
//!
//! - the thread-safe callback JS registered, called by this queue's waker
//!   thread (`bench/wake.ts` measures it against the alternatives: it wakes
//!   the event loop directly, no Deno worker thread involved). Deno blocks
//!   the thread that calls a thread-safe callback until JS ran it, so the
//!   call is never made by the pushing thread, which may hold locks a
//!   synchronous JS call is waiting for; the waker thread holds none;
//! - without a callback (Deno refuses to create one unless `--allow-ffi` is
//!   granted for every path), a `nonblocking` JS call parked in
//!   [`EventQueue::wait`], which the push signals.
//!
//! Closing: the waker may be inside a call (which needs the JS thread) when
//! JS closes the kernel, so JS first [`EventQueue::quiesce`]s the queue (no
//! further calls) and lets the calls in flight run, then closes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Events pushed in this process, by every kernel (wrapping): a JS side
/// that spins ([`spin`]) watches it instead of parking.
static PUSHES: AtomicU32 = AtomicU32::new(0);

/// A ring JS armed became ready (records to read / space to write) or closed.
pub const EVENT_RING: u32 = 1;
/// A listener has links to accept, or closed.
pub const EVENT_LISTENER: u32 = 2;
/// A connect operation finished (the handle is the operation id).
pub const EVENT_CONNECT: u32 = 3;
/// A link ended (closed by either side or failed); its status is final.
pub const EVENT_LINK_CLOSED: u32 = 4;
/// Commits (or flushes, undos) finished: collect them with
/// `krepis_store_completions` (the handle is 0).
pub const EVENT_COMPLETIONS: u32 = 5;
/// A guarded command ended: its result is ready for `krepis_guard_result`
/// (the handle is the process handle).
pub const EVENT_GUARD: u32 = 6;
/// Bytes per event record.
pub const EVENT_RECORD_BYTES: u32 = 8;

/// JS's `Deno.UnsafeCallback.threadSafe` taking nothing: wakes its event pump.
pub type WakeCallback = Option<unsafe extern "C" fn()>;

#[derive(Default)]
struct State {
    queue: VecDeque<(u32, u32)>,
    /// JS found the queue empty and sleeps until woken.
    parked: bool,
    /// The waker thread should call the callback.
    wake: bool,
    callback: WakeCallback,
    /// No calls of the callback (JS is about to close the kernel).
    quiesced: bool,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Signals the waker thread (a wake to deliver) and a JS `nonblocking`
    /// waiter (events queued).
    changed: Condvar,
    /// Calls of the callback under way (each blocks the waker until JS ran it).
    calling: AtomicU32,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A kernel's event queue.
#[derive(Default)]
pub struct EventQueue {
    shared: Arc<Shared>,
    /// The waker thread, joined on close (no thread outlives its kernel).
    waker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl EventQueue {
    /// Sets the callback that wakes JS and starts the waker thread that calls
    /// it; without one JS waits with [`EventQueue::wait`].
    pub fn register(&self, callback: WakeCallback) -> std::io::Result<()> {
        self.shared.lock().callback = callback;
        if callback.is_none() {
            return Ok(());
        }
        let shared = Arc::clone(&self.shared);
        let thread = std::thread::Builder::new()
            .name("krepis-waker".into())
            .spawn(move || waker(&shared))?;
        *self.waker.lock().unwrap_or_else(|p| p.into_inner()) = Some(thread);
        Ok(())
    }

    /// Queues an event; wakes JS if it is parked. Never blocks on JS.
    pub fn push(&self, kind: u32, handle: u32) {
        let mut state = self.shared.lock();
        if state.closed {
            return;
        }
        state.queue.push_back((kind, handle));
        if state.parked {
            state.parked = false;
            state.wake = true;
            self.shared.changed.notify_all();
        }
        drop(state);
        announce();
    }

    /// Moves as many events as fit into `out` and returns how many; when there
    /// are none, marks JS parked (the next push wakes it) and returns 0.
    pub fn take(&self, out: &mut [u8]) -> usize {
        self.drain(out, true)
    }

    /// Like [`EventQueue::take`], but an empty queue leaves JS unparked: JS
    /// is about to [`spin`], and a push must not wake it through the waker.
    pub fn poll(&self, out: &mut [u8]) -> usize {
        self.drain(out, false)
    }

    fn drain(&self, out: &mut [u8], park: bool) -> usize {
        let capacity = out.len() / EVENT_RECORD_BYTES as usize;
        let mut state = self.shared.lock();
        if state.queue.is_empty() {
            state.parked = park && !state.closed && capacity > 0;
            return 0;
        }
        state.parked = false;
        let count = capacity.min(state.queue.len());
        for (index, (kind, handle)) in state.queue.drain(..count).enumerate() {
            let record = &mut out[index * 8..index * 8 + 8];
            record[..4].copy_from_slice(&kind.to_le_bytes());
            record[4..].copy_from_slice(&handle.to_le_bytes());
        }
        count
    }

    /// Blocks (a `nonblocking` JS call, when there is no callback) until
    /// events are queued, the queue closes or `timeout` passes. Returns
    /// whether events are queued.
    pub fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if !state.queue.is_empty() {
                return true;
            }
            let now = Instant::now();
            if state.closed || now >= deadline {
                return false;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Stops calling the callback for good and returns how many calls are
    /// still in flight: JS lets them run before it closes the kernel.
    pub fn quiesce(&self) -> u32 {
        self.shared.lock().quiesced = true;
        self.shared.calling.load(Ordering::SeqCst)
    }

    /// Drops queued events, refuses new ones and stops the waker thread
    /// (joined unless a call is in flight: that call waits for the JS thread,
    /// which may be the caller; it exits by itself once JS ran it).
    pub fn close(&self) {
        let mut state = self.shared.lock();
        state.closed = true;
        state.queue.clear();
        state.callback = None;
        self.shared.changed.notify_all();
        drop(state);
        let thread = self.waker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            if self.shared.calling.load(Ordering::SeqCst) == 0
                && thread.thread().id() != std::thread::current().id()
            {
                let _ = thread.join();
            }
        }
    }
}

/// Tells spinning JS sides ([`spin`]) that some queue got an event.
pub fn announce() {
    PUSHES.fetch_add(1, Ordering::Release);
}

/// Whether spinning can pay off here: with one usable core the spinning JS
/// thread would only delay the kernel thread that is about to push. Asked
/// of the OS at most once a second (`available_parallelism` honours CPU
/// affinity and cgroup quotas, which may change while the process runs:
/// `taskset -p`).
pub fn spin_allowed() -> bool {
    static CHECKED: Mutex<Option<(Instant, bool)>> = Mutex::new(None);
    let mut checked = CHECKED.lock().unwrap_or_else(|p| p.into_inner());
    match *checked {
        Some((at, allowed)) if at.elapsed() < Duration::from_secs(1) => allowed,
        _ => {
            let allowed = std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2);
            *checked = Some((Instant::now(), allowed));
            allowed
        }
    }
}

/// Busy-waits up to `limit` until some kernel of this process pushed an
/// event since JS saw the push count `seen`; returns the count now (equal to
/// `seen`: nothing came). A wake costs JS two or three context switches
/// (waker thread, event loop, the waker again: `bench/wake.ts`), tens of
/// microseconds on small VMs; when the next event is due sooner than that
/// (a reply on a link, the next request under load), spinning for about
/// that long costs no more CPU than the wake and saves its latency: the
/// classic spin-then-park rule, within 2x of the better choice either way.
/// Returns at once where only one core is usable.
pub fn spin(seen: u32, limit: Duration) -> u32 {
    let start = Instant::now();
    let mut spins = 0u32;
    loop {
        let now = PUSHES.load(Ordering::Acquire);
        if now != seen || (spins == 0 && !spin_allowed()) {
            return now;
        }
        spins = spins.wrapping_add(1);
        if spins % 64 == 0 && start.elapsed() >= limit {
            return now;
        }
        std::hint::spin_loop();
    }
}

/// The waker thread: calls JS's callback for each wake until the queue closes.
fn waker(shared: &Shared) {
    let mut state = shared.lock();
    loop {
        if state.closed {
            return;
        }
        if !state.wake {
            state = shared
                .changed
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
            continue;
        }
        state.wake = false;
        let callback = if state.quiesced { None } else { state.callback };
        let Some(callback) = callback else { continue };
        shared.calling.fetch_add(1, Ordering::SeqCst);
        drop(state);
        // SAFETY: JS registered a live thread-safe callback taking nothing
        // and closes it only after `quiesce` reported no call in flight.
        unsafe { callback() };
        shared.calling.fetch_sub(1, Ordering::SeqCst);
        state = shared.lock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    static WOKEN: AtomicUsize = AtomicUsize::new(0);

    extern "C" fn woken() {
        WOKEN.fetch_add(1, Ordering::SeqCst);
    }

    fn woken_after(count: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while WOKEN.load(Ordering::SeqCst) < count {
            assert!(Instant::now() < deadline, "no wake");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn events_come_in_order_and_only_a_parked_js_is_woken() {
        let events = EventQueue::default();
        events.register(Some(woken)).unwrap();
        let before = WOKEN.load(Ordering::SeqCst);
        events.push(EVENT_RING, 7);
        events.push(EVENT_LINK_CLOSED, 9);
        let mut out = [0u8; 8];
        assert_eq!(events.take(&mut out), 1);
        assert_eq!(out, [1, 0, 0, 0, 7, 0, 0, 0]);
        assert_eq!(events.take(&mut out), 1);
        assert_eq!(out[0], 4);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(WOKEN.load(Ordering::SeqCst), before, "JS never parked");
        // Empty: JS parks; the next push wakes it once, the one after not.
        assert_eq!(events.take(&mut out), 0);
        events.push(EVENT_RING, 1);
        events.push(EVENT_RING, 2);
        woken_after(before + 1);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(WOKEN.load(Ordering::SeqCst), before + 1);
        // Quiesced: queued, never called again.
        let mut two = [0u8; 16];
        assert_eq!(events.take(&mut two), 2);
        assert_eq!(events.take(&mut two), 0);
        assert_eq!(events.quiesce(), 0);
        events.push(EVENT_RING, 3);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(WOKEN.load(Ordering::SeqCst), before + 1);
        events.close();
        events.push(EVENT_RING, 4);
        assert_eq!(events.take(&mut two), 0, "closing drops what was queued");
    }

    #[test]
    fn a_spin_returns_when_any_queue_gets_a_push() {
        let events = Arc::new(EventQueue::default());
        let seen = spin(0, Duration::ZERO);
        let pusher = Arc::clone(&events);
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(2));
            pusher.push(EVENT_RING, 1);
        });
        // Up to 1 ms per call: loop until the push lands (or 5 s pass).
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut now = spin(seen, Duration::from_millis(1));
        while now == seen {
            assert!(Instant::now() < deadline, "the push was never seen");
            now = spin(seen, Duration::from_millis(1));
        }
        thread.join().unwrap();
        // Polling leaves JS unparked: a push then must not schedule a wake.
        let mut out = [0u8; 8];
        assert_eq!(events.poll(&mut out), 1);
        assert_eq!(events.poll(&mut out), 0);
        assert!(!events.shared.lock().parked);
        events.push(EVENT_RING, 2);
        assert!(!events.shared.lock().wake);
        assert_eq!(events.take(&mut out), 1);
    }

    #[test]
    fn a_nonblocking_waiter_sees_pushes_and_close() {
        let events = Arc::new(EventQueue::default());
        assert!(!events.wait(Duration::from_millis(10)));
        // JS waits only after a take found nothing (and parked it): only a
        // parked JS is signalled.
        assert_eq!(events.take(&mut [0u8; 8]), 0);
        let started = Instant::now();
        let pusher = Arc::clone(&events);
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            pusher.push(EVENT_COMPLETIONS, 0);
        });
        assert!(events.wait(Duration::from_secs(5)));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the push did not signal"
        );
        thread.join().unwrap();
        let closer = Arc::clone(&events);
        let mut out = [0u8; 8];
        assert_eq!(events.take(&mut out), 1);
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            closer.close();
        });
        let started = Instant::now();
        assert!(!events.wait(Duration::from_secs(5)));
        assert!(started.elapsed() < Duration::from_secs(2));
        thread.join().unwrap();
    }
}
