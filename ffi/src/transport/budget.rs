//! Budgets: how many links a kernel (and each of its listeners) holds, and
//! how much memory their receive windows may hold (docs/knul.md, "Limits").
//!
//! A link's _window bytes_ are what a peer can make this kernel hold for it
//! without the application reading: its receive ring, plus what its QUIC
//! connection receive window and QUIC's datagram buffer may cost (2.5× their
//! size: see `QUIC_MEMORY_FACTOR`). They are reserved before a
//! link exists (a listener reserves once the hello exchange is done, before
//! the backlog; a connect before it starts) and given back when the link's
//! kernel object is dropped (JS freed it and its tasks ended), which is when
//! that memory is freed. Over budget, the link is refused: the peer's
//! connection closes with code 6 and the refusal is counted; a connect fails
//! with a `ResourceExhausted` error.

use super::knul::KNUL_HEADER_BYTES;
use crate::error::{KernelError, KernelResult};
use crate::proto::ErrorCode;
use crate::ring::{record_size, RING_MAX_CAPACITY};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Smallest ring a link gets (as `bindings/transport/link.ts` sizes them).
const MIN_RING_BYTES: u32 = 64 << 10;
/// A link's QUIC stream receive window: its receive ring's size, but at
/// least this much (small rings would make a link slow on real paths)...
const MIN_LINK_WINDOW: u32 = 256 << 10;
/// ...and at most this much.
const MAX_LINK_WINDOW: u32 = 16 << 20;
/// What the connection's window has on top of the data stream's: room for
/// control packets (at most 4136 bytes each) even when the application
/// does not read the data stream, so a `close` always gets through.
const CONTROL_WINDOW: u32 = 64 << 10;
/// Datagrams QUIC buffers for a link before the receive pump takes them.
pub const DATAGRAM_BUFFER_BYTES: u32 = 256 << 10;
/// Default links per kernel.
pub const DEFAULT_MAX_LINKS: u64 = 10_000;

/// The ring size JS gives a link for packets up to `max_packet` (room for
/// about four; `ringBytes` in `bindings/transport/link.ts`).
pub fn ring_bytes(max_packet: u32) -> u32 {
    let record = record_size(KNUL_HEADER_BYTES as u32 + max_packet);
    let mut capacity = MIN_RING_BYTES;
    while u64::from(capacity) < 4 * record && capacity < RING_MAX_CAPACITY {
        capacity *= 2;
    }
    capacity
}

/// The QUIC stream receive window of a link whose receive ring holds
/// `ring` bytes.
pub fn link_window(ring: u32) -> u32 {
    ring.clamp(MIN_LINK_WINDOW, MAX_LINK_WINDOW)
}

/// Its QUIC connection receive window (every stream together).
pub fn connection_window(ring: u32) -> u32 {
    link_window(ring) + CONTROL_WINDOW
}

/// What QUIC's buffered bytes may cost in memory, as a fraction: quinn
/// keeps received data in the UDP receive buffers it arrived in (shared by
/// several packets) and copies it out only once those hold more than 2.5×
/// the data (quinn-proto's assembler). Measured: a full 8 MiB window held
/// about 16 MiB.
const QUIC_MEMORY_FACTOR: (u64, u64) = (5, 2);

/// The window bytes a link with a receive ring of `ring` bytes is charged:
/// its ring, plus what QUIC may hold for its connection window and its
/// datagrams.
pub fn window_charge(ring: u32) -> u64 {
    let quic = u64::from(connection_window(ring)) + u64::from(DATAGRAM_BUFFER_BYTES);
    u64::from(ring) + quic * QUIC_MEMORY_FACTOR.0 / QUIC_MEMORY_FACTOR.1
}

/// The default window budget of a kernel: a quarter of the machine's
/// memory, at least 256 MiB (1 GiB where the size is unknown).
pub fn default_max_window_bytes() -> u64 {
    physical_memory().map_or(1 << 30, |bytes| (bytes / 4).max(256 << 20))
}

#[cfg(unix)]
fn physical_memory() -> Option<u64> {
    // SAFETY: sysconf has no preconditions; it returns -1 for unknown names.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (pages > 0 && page > 0).then(|| pages as u64 * page as u64)
}

#[cfg(not(unix))]
fn physical_memory() -> Option<u64> {
    None
}

/// One scope's budget (a kernel or a listener) and what is reserved of it.
#[derive(Debug)]
pub struct Budget {
    /// "kernel" or "listener": named in refusals.
    scope: &'static str,
    pub max_links: u64,
    pub max_window_bytes: u64,
    links: AtomicU64,
    window_bytes: AtomicU64,
    refused: AtomicU64,
}

impl Budget {
    pub fn new(scope: &'static str, max_links: u64, max_window_bytes: u64) -> Arc<Budget> {
        Arc::new(Budget {
            scope,
            max_links,
            max_window_bytes,
            links: AtomicU64::new(0),
            window_bytes: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// Links holding a reservation now.
    pub fn links(&self) -> u64 {
        self.links.load(Ordering::SeqCst)
    }

    /// Window bytes reserved now.
    pub fn window_bytes(&self) -> u64 {
        self.window_bytes.load(Ordering::SeqCst)
    }

    /// Links refused because this budget was spent.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Takes one link and `bytes` if both fit.
    fn take(&self, bytes: u64) -> Result<(), String> {
        let links = self.links.fetch_add(1, Ordering::SeqCst);
        if links >= self.max_links {
            self.links.fetch_sub(1, Ordering::SeqCst);
            return Err(format!(
                "the {} has {links} links, its maxLinks",
                self.scope
            ));
        }
        let held = self.window_bytes.fetch_add(bytes, Ordering::SeqCst);
        if held + bytes > self.max_window_bytes {
            self.window_bytes.fetch_sub(bytes, Ordering::SeqCst);
            self.links.fetch_sub(1, Ordering::SeqCst);
            return Err(format!(
                "a link's windows ({bytes} bytes) do not fit the {}'s maxWindowBytes ({} of {} bytes in use)",
                self.scope, held, self.max_window_bytes
            ));
        }
        Ok(())
    }

    fn give_back(&self, links: u64, bytes: u64) {
        self.links.fetch_sub(links, Ordering::SeqCst);
        self.window_bytes.fetch_sub(bytes, Ordering::SeqCst);
    }
}

/// A link's share of one or more budgets, given back on drop.
#[derive(Debug)]
pub struct Reservation {
    budgets: Vec<Arc<Budget>>,
    bytes: u64,
}

impl Reservation {
    /// Reserves one link and `bytes` of window memory in every budget, or
    /// none (the refusal is counted by the budget that was spent).
    pub fn take(budgets: &[&Arc<Budget>], bytes: u64) -> KernelResult<Reservation> {
        let mut taken: Vec<Arc<Budget>> = Vec::with_capacity(budgets.len());
        for budget in budgets {
            if let Err(why) = budget.take(bytes) {
                budget.refused.fetch_add(1, Ordering::Relaxed);
                for earlier in &taken {
                    earlier.give_back(1, bytes);
                }
                return Err(KernelError::new(
                    ErrorCode::ResourceExhausted,
                    format!("link refused: {why}"),
                )
                .with_detail("scope", budget.scope)
                .with_detail("windowBytes", bytes.to_string()));
            }
            taken.push(Arc::clone(budget));
        }
        Ok(Reservation {
            budgets: taken,
            bytes,
        })
    }

    /// Adds `bytes` (a link got a larger ring than was reserved for), over
    /// the budget if need be: the ring exists already.
    pub fn grow(&mut self, bytes: u64) {
        for budget in &self.budgets {
            budget.window_bytes.fetch_add(bytes, Ordering::SeqCst);
        }
        self.bytes += bytes;
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        for budget in &self.budgets {
            budget.give_back(1, self.bytes);
        }
        RELEASED.fetch_add(self.bytes, Ordering::SeqCst);
    }
}

/// Window bytes given back since the allocator was last asked to return
/// freed memory to the OS.
static RELEASED: AtomicU64 = AtomicU64::new(0);
/// Given back at least this much, the next [`give_memory_back`] trims.
const TRIM_AFTER_BYTES: u64 = 32 << 20;

/// Returns freed heap to the OS once links gave back a lot of window
/// memory. Each transport runs its QUIC work on a thread of its own, and
/// glibc keeps what a thread freed in that thread's arena for reuse: 100
/// flooding links that went away left ~150 MiB of RSS behind until this
/// trim (`malloc_trim` walks every arena). Called periodically on the
/// transport's thread, after the links' buffers were dropped there.
pub fn give_memory_back() {
    // Trim once more on the next call: buffers of a link freed just before
    // this one may still be dropped after it.
    static AGAIN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if RELEASED.load(Ordering::SeqCst) < TRIM_AFTER_BYTES && !AGAIN.swap(false, Ordering::SeqCst) {
        return;
    }
    if RELEASED.swap(0, Ordering::SeqCst) >= TRIM_AFTER_BYTES {
        AGAIN.store(true, Ordering::SeqCst);
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's arenas
    // to the OS; it touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_are_sized_as_js_sizes_them() {
        assert_eq!(ring_bytes(1024), 64 << 10);
        assert_eq!(ring_bytes(16 << 10), 128 << 10);
        assert_eq!(ring_bytes(1 << 20), 8 << 20);
        assert_eq!(link_window(64 << 10), 256 << 10);
        assert_eq!(link_window(64 << 20), 16 << 20);
    }

    #[test]
    fn a_reservation_takes_every_budget_or_none_and_gives_back_on_drop() {
        let kernel = Budget::new("kernel", 10, 1000);
        let listener = Budget::new("listener", 2, 10_000);
        let first = Reservation::take(&[&kernel, &listener], 400).unwrap();
        let second = Reservation::take(&[&kernel, &listener], 400).unwrap();
        // The listener's link budget is spent.
        let error = Reservation::take(&[&kernel, &listener], 1).unwrap_err();
        assert_eq!(error.code, ErrorCode::ResourceExhausted);
        assert_eq!(error.details["scope"], "listener");
        assert_eq!((kernel.links(), kernel.window_bytes()), (2, 800));
        assert_eq!(listener.refused(), 1);
        drop(first);
        // The kernel's memory budget is spent: 400 + 700 > 1000.
        let error = Reservation::take(&[&kernel, &listener], 700).unwrap_err();
        assert_eq!(error.details["scope"], "kernel");
        assert_eq!((listener.links(), listener.window_bytes()), (1, 400));
        drop(second);
        assert_eq!((kernel.links(), kernel.window_bytes()), (0, 0));
        assert_eq!((listener.links(), listener.window_bytes()), (0, 0));
    }
}
