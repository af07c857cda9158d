//! Listeners: a server endpoint, its accept loop (TLS, then the hello
//! exchange) with handshake admission, the link and memory budget, and the
//! backlog of established links waiting for JS to accept them.
//!
//! Handshake admission (docs/knul.md, "Handshake"): at most `maxHandshakes`
//! connections may be between their first packet and their hello at once
//! (each holds at most a 64 KiB window: a memory cap). When they are all
//! taken, a newcomer takes the slot of the oldest connection that finished
//! TLS but has not sent its hello for `EVICT_AFTER` (it is closed with
//! code 6); a legitimate client sends its hello right after TLS, so only
//! peers that hold a slot without using it lose it. Otherwise the newcomer
//! waits for a slot. Once half the slots are taken, a connection that
//! finishes TLS gets `PRESSURE_HELLO_TIMEOUT` instead of `HELLO_TIMEOUT`
//! for its hello.

use super::budget::{ring_bytes, window_charge, Budget, Reservation};
use super::endpoint::{endpoint, Transport};
use super::knul::tenant_hash;
use super::link::{
    connection_error, server_hello, Established, CLOSE_BUSY, CLOSE_GOING_AWAY, HELLO_TIMEOUT,
};
use super::setup::{link_rings, start_link};
use crate::error::{KernelError, KernelResult};
use crate::events::EVENT_LISTENER;
use crate::handles::{HandleKind, HandleTable};
use crate::proto::{ErrorCode, LinkInfo, ListenerStats};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Default handshakes in progress per listener.
pub const DEFAULT_MAX_HANDSHAKES: u32 = 1024;
/// How long a connection may wait for its hello after TLS once half the
/// handshake slots are taken.
const PRESSURE_HELLO_TIMEOUT: Duration = Duration::from_secs(2);
/// A connection that finished TLS this long ago without sending its hello
/// gives its slot to a newcomer when all are taken.
const EVICT_AFTER: Duration = Duration::from_millis(250);
/// Default number of established links waiting for `accept`.
const DEFAULT_BACKLOG: usize = 1024;

pub(super) static LISTENERS: HandleTable<Listener> = HandleTable::new(HandleKind::Listener);

pub struct Listener {
    pub(super) kernel_id: u64,
    transport: Arc<Transport>,
    pub(super) endpoint: quinn::Endpoint,
    handle: OnceLock<u32>,
    max_packet: u32,
    tenants: Option<Arc<HashSet<u64>>>,
    backlog: usize,
    queue: Mutex<ListenerQueue>,
    closed: AtomicBool,
    /// Stops the accept loop (links already accepted are not affected).
    stop: tokio::sync::Notify,
    /// Handshakes in progress, oldest first; each can be told to give up.
    handshakes: Mutex<Handshakes>,
    /// A slot was given back.
    slot_freed: tokio::sync::Notify,
    max_handshakes: usize,
    /// This listener's links (in the backlog and accepted, until dropped).
    budget: Arc<Budget>,
    accepted: AtomicU64,
    refused: AtomicU64,
    /// Refused because a budget (this listener's or the kernel's) was spent.
    refused_over_budget: AtomicU64,
    last_refusal: Mutex<String>,
}

#[derive(Default)]
struct Handshakes {
    next: u64,
    /// By age (ids grow).
    pending: BTreeMap<u64, Slot>,
    evicted: u64,
}

struct Slot {
    /// Tells the handshake to give up its slot.
    evict: Arc<tokio::sync::Notify>,
    /// When it finished TLS (it waits for the hello since).
    tls_done: Option<Instant>,
}

#[derive(Default)]
struct ListenerQueue {
    ready: VecDeque<(Established, Reservation)>,
    /// JS waits for the next link: post an event when one arrives.
    armed: bool,
}

/// What a listener is asked to be, once the request was checked.
pub struct ListenOptions<'a> {
    pub address: SocketAddr,
    pub config: quinn::ServerConfig,
    pub max_packet: u32,
    /// Tenant ids whose packets are served (none: every tenant).
    pub tenants: &'a [String],
    /// Established links waiting for `accept` at most (0: the default).
    pub backlog: u32,
    /// Links of this listener at most (0: the kernel's budget only).
    pub max_links: u32,
    /// Window bytes of this listener's links at most (0: the kernel's only).
    pub max_window_bytes: u64,
    /// Handshakes in progress at most (0: the default).
    pub max_handshakes: u32,
}

/// Binds a listener, registers it and starts its accept loop; returns its
/// handle and the address it is bound to.
pub fn listen(
    transport: &Arc<Transport>,
    options: ListenOptions,
) -> KernelResult<(u32, SocketAddr)> {
    let ListenOptions {
        address,
        config,
        max_packet,
        tenants,
        backlog,
        max_links,
        max_window_bytes,
        max_handshakes,
    } = options;
    let endpoint = endpoint(&transport.runtime, address, Some(config)).map_err(|error| {
        KernelError::io(&format!("listening on {address}"), &error)
            .with_detail("address", address.to_string())
    })?;
    let bound = endpoint
        .local_addr()
        .map_err(|error| KernelError::io("reading the bound address", &error))?;
    let tenants = (!tenants.is_empty())
        .then(|| Arc::new(tenants.iter().map(|tenant| tenant_hash(tenant)).collect()));
    let listener = Arc::new(Listener {
        kernel_id: transport.kernel_id,
        transport: Arc::clone(transport),
        endpoint,
        handle: OnceLock::new(),
        max_packet,
        tenants,
        backlog: match backlog {
            0 => DEFAULT_BACKLOG,
            backlog => backlog as usize,
        },
        queue: Mutex::new(ListenerQueue::default()),
        closed: AtomicBool::new(false),
        stop: tokio::sync::Notify::new(),
        handshakes: Mutex::new(Handshakes::default()),
        slot_freed: tokio::sync::Notify::new(),
        max_handshakes: match max_handshakes {
            0 => DEFAULT_MAX_HANDSHAKES as usize,
            max => max as usize,
        },
        budget: Budget::new(
            "listener",
            match max_links {
                0 => u64::MAX,
                max => u64::from(max),
            },
            match max_window_bytes {
                0 => u64::MAX,
                max => max,
            },
        ),
        accepted: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        refused_over_budget: AtomicU64::new(0),
        last_refusal: Mutex::new(String::new()),
    });
    let handle = LISTENERS.insert(Arc::clone(&listener))?;
    let _ = listener.handle.set(handle);
    transport.runtime.spawn(accept_loop(listener));
    Ok((handle, bound))
}

impl Listener {
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Starts the next established link with the given rings. `None` when
    /// none is waiting: the listener then posts an event when one arrives.
    pub fn accept(&self, recv_ring: u32, send_ring: u32) -> KernelResult<Option<LinkInfo>> {
        let (established, reservation) = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            match queue.ready.pop_front() {
                Some(ready) => ready,
                None => {
                    queue.armed = true;
                    return Ok(None);
                }
            }
        };
        let (recv, send) = match link_rings(&self.transport, recv_ring, send_ring, self.max_packet)
        {
            Ok(rings) => rings,
            Err(error) => {
                // Keep the link for a correct accept.
                self.queue
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .ready
                    .push_front((established, reservation));
                return Err(error);
            }
        };
        let info = start_link(
            &self.transport,
            established,
            recv,
            send,
            self.max_packet,
            self.tenants.clone(),
            reservation,
        )?;
        self.accepted.fetch_add(1, Ordering::Relaxed);
        Ok(Some(info))
    }

    pub fn stats(&self) -> ListenerStats {
        let (handshakes, evicted) = {
            let handshakes = self.handshakes.lock().unwrap_or_else(|p| p.into_inner());
            (handshakes.pending.len() as u32, handshakes.evicted)
        };
        ListenerStats {
            handshakes,
            handshakes_evicted: evicted,
            links: self.budget.links() as u32,
            window_bytes: self.budget.window_bytes(),
            refused_over_budget: self.refused_over_budget.load(Ordering::Relaxed),
            accepted: self.accepted.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            last_refusal: self
                .last_refusal
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    fn refuse(&self, why: String) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        *self.last_refusal.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }

    fn wake_js(&self) {
        if let Some(handle) = self.handle.get() {
            self.transport.events.push(EVENT_LISTENER, *handle);
        }
    }

    pub fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let pending =
            std::mem::take(&mut self.queue.lock().unwrap_or_else(|p| p.into_inner()).ready);
        for (established, _reservation) in pending {
            established.conn.close(
                quinn::VarInt::from_u32(CLOSE_GOING_AWAY),
                b"the listener closed",
            );
        }
        // The accept loop now refuses newcomers; the endpoint (its UDP
        // socket) lives on while accepted links use it.
        self.stop.notify_one();
        self.wake_js();
    }
}

/// Accepts connections: TLS, then the hello exchange, then the backlog.
async fn accept_loop(listener: Arc<Listener>) {
    loop {
        let incoming = tokio::select! {
            incoming = listener.endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => return,
            },
            _ = listener.stop.notified() => break,
        };
        let listener = Arc::clone(&listener);
        tokio::spawn(handshake(listener, incoming));
    }
    // Closed: refuse new connections (the peer learns at once) while
    // accepted links still use the endpoint, then close it.
    loop {
        if listener.endpoint.open_connections() == 0 {
            listener.endpoint.close(
                quinn::VarInt::from_u32(CLOSE_GOING_AWAY),
                b"the listener closed",
            );
            return;
        }
        tokio::select! {
            incoming = listener.endpoint.accept() => match incoming {
                Some(incoming) => incoming.refuse(),
                None => return,
            },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

impl Listener {
    /// Takes a handshake slot: a free one, else the slot of the oldest
    /// connection idling after TLS for `EVICT_AFTER`, else waits for one.
    /// Returns the slot's id and what tells it to give up; `None` once the
    /// listener closed.
    async fn admit(&self) -> Option<(u64, Arc<tokio::sync::Notify>)> {
        loop {
            let freed = self.slot_freed.notified();
            {
                let mut handshakes = self.handshakes.lock().unwrap_or_else(|p| p.into_inner());
                if self.closed.load(Ordering::SeqCst) {
                    return None;
                }
                if handshakes.pending.len() >= self.max_handshakes {
                    let idle = handshakes
                        .pending
                        .iter()
                        .find(|(_, slot)| {
                            slot.tls_done.is_some_and(|at| at.elapsed() >= EVICT_AFTER)
                        })
                        .map(|(id, _)| *id);
                    if let Some(slot) = idle.and_then(|id| handshakes.pending.remove(&id)) {
                        // A stored permit: it gives up even if it is not
                        // waiting on it at this very moment.
                        slot.evict.notify_one();
                        handshakes.evicted += 1;
                    }
                }
                if handshakes.pending.len() < self.max_handshakes {
                    let id = handshakes.next;
                    handshakes.next += 1;
                    let evict = Arc::new(tokio::sync::Notify::new());
                    handshakes.pending.insert(
                        id,
                        Slot {
                            evict: Arc::clone(&evict),
                            tls_done: None,
                        },
                    );
                    return Some((id, evict));
                }
            }
            // Every slot is busy with TLS or was used recently: wait for one
            // to free up or to become evictable.
            let _ = tokio::time::timeout(EVICT_AFTER, freed).await;
        }
    }

    /// The handshake finished TLS; returns how long it may wait for the hello.
    fn tls_done(&self, id: u64) -> Duration {
        let mut handshakes = self.handshakes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = handshakes.pending.get_mut(&id) {
            slot.tls_done = Some(Instant::now());
        }
        if handshakes.pending.len() * 2 > self.max_handshakes {
            PRESSURE_HELLO_TIMEOUT
        } else {
            HELLO_TIMEOUT
        }
    }

    fn handshake_done(&self, id: u64) {
        let removed = self
            .handshakes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pending
            .remove(&id);
        if removed.is_some() {
            self.slot_freed.notify_one();
        }
    }

    /// Refuses an established link because the listener is busy (code 6).
    fn refuse_busy(&self, established: Established, why: String) {
        established
            .conn
            .close(quinn::VarInt::from_u32(CLOSE_BUSY), why.as_bytes());
        self.refuse(why);
    }
}

/// One connection: TLS, the hello exchange (within the deadline admission
/// gave it, unless a newer handshake takes its slot), the budgets, then the
/// backlog.
async fn handshake(listener: Arc<Listener>, incoming: quinn::Incoming) {
    if listener.closed.load(Ordering::SeqCst) {
        incoming.refuse();
        return;
    }
    let Some((id, evict)) = listener.admit().await else {
        incoming.refuse();
        return;
    };
    let outcome = async {
        let conn = tokio::select! {
            conn = tokio::time::timeout(HELLO_TIMEOUT, incoming) => match conn {
                Ok(conn) => conn.map_err(|error| connection_error(&error))?,
                Err(_) => return Err(KernelError::new(
                    ErrorCode::Connection,
                    format!("TLS took longer than {} s", HELLO_TIMEOUT.as_secs()),
                )),
            },
            _ = evict.notified() => return Err(KernelError::new(
                ErrorCode::Connection,
                "dropped during TLS: newer handshakes took its slot",
            )),
        };
        let deadline = listener.tls_done(id);
        // The budgets are charged once the peer's hello arrived, before the
        // answer: a peer that never sends one holds none, and a refused
        // peer's connect fails (code 6) instead of getting a link.
        let charge = window_charge(ring_bytes(listener.max_packet));
        let admit = || {
            Reservation::take(&[&listener.transport.budget, &listener.budget], charge)
                .map_err(|error| error.with_detail("closeCode", CLOSE_BUSY.to_string()))
        };
        tokio::select! {
            established = server_hello(conn.clone(), listener.max_packet, deadline, admit) => established,
            _ = evict.notified() => {
                let why = "the listener is busy: a newer handshake took the slot of this one, which sent no hello";
                conn.close(quinn::VarInt::from_u32(CLOSE_BUSY), why.as_bytes());
                Err(KernelError::new(ErrorCode::Connection, why))
            }
        }
    }
    .await;
    listener.handshake_done(id);
    let (established, reservation) = match outcome {
        Ok(admitted) => admitted,
        Err(error) => {
            if error.code == ErrorCode::ResourceExhausted {
                listener.refused_over_budget.fetch_add(1, Ordering::Relaxed);
            }
            return listener.refuse(error.message);
        }
    };
    let mut queue = listener.queue.lock().unwrap_or_else(|p| p.into_inner());
    if listener.closed.load(Ordering::SeqCst) {
        drop(queue);
        established.conn.close(
            quinn::VarInt::from_u32(CLOSE_GOING_AWAY),
            b"the listener closed",
        );
        return listener.refuse("the listener closed".into());
    }
    if queue.ready.len() >= listener.backlog {
        drop(queue);
        return listener.refuse_busy(
            established,
            "the listener's backlog is full (the application does not accept links)".into(),
        );
    }
    queue.ready.push_back((established, reservation));
    let armed = std::mem::take(&mut queue.armed);
    drop(queue);
    if armed {
        listener.wake_js();
    }
}
