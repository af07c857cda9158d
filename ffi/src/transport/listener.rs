//! Listeners: a server endpoint, its accept loop (TLS, then the hello
//! exchange, a bounded number of handshakes at a time) and the backlog of
//! established links waiting for JS to accept them.

use super::endpoint::{endpoint, Transport};
use super::knul::tenant_hash;
use super::link::{connection_error, server_hello, Established, CLOSE_GOING_AWAY, HELLO_TIMEOUT};
use super::setup::{link_rings, start_link};
use crate::error::{KernelError, KernelResult};
use crate::events::EVENT_LISTENER;
use crate::handles::{HandleKind, HandleTable};
use crate::proto::{LinkInfo, ListenerStats};
use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Concurrent handshakes per listener.
const MAX_HANDSHAKES: usize = 64;
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
    /// Handshakes in progress at most; more wait (quinn buffers them, up to
    /// `max_incoming`).
    handshakes: Arc<tokio::sync::Semaphore>,
    accepted: AtomicU64,
    refused: AtomicU64,
    last_refusal: Mutex<String>,
}

#[derive(Default)]
struct ListenerQueue {
    ready: VecDeque<Established>,
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
        handshakes: Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES)),
        accepted: AtomicU64::new(0),
        refused: AtomicU64::new(0),
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
        let established = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            match queue.ready.pop_front() {
                Some(established) => established,
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
                    .push_front(established);
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
        )?;
        self.accepted.fetch_add(1, Ordering::Relaxed);
        Ok(Some(info))
    }

    pub fn stats(&self) -> ListenerStats {
        ListenerStats {
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
        for established in pending {
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
        tokio::spawn(async move {
            let Ok(_permit) = Arc::clone(&listener.handshakes).acquire_owned().await else {
                return;
            };
            if listener.closed.load(Ordering::SeqCst) {
                incoming.refuse();
                return;
            }
            let handshake = async {
                let conn = incoming.await.map_err(|error| connection_error(&error))?;
                server_hello(conn, listener.max_packet).await
            };
            let established = match tokio::time::timeout(HELLO_TIMEOUT * 2, handshake).await {
                Ok(Ok(established)) => established,
                Ok(Err(error)) => return listener.refuse(error.message),
                Err(_) => return listener.refuse("the handshake took longer than 20 s".into()),
            };
            let mut queue = listener.queue.lock().unwrap_or_else(|p| p.into_inner());
            if listener.closed.load(Ordering::SeqCst) || queue.ready.len() >= listener.backlog {
                drop(queue);
                established.conn.close(
                    quinn::VarInt::from_u32(CLOSE_GOING_AWAY),
                    b"the listener is not accepting links (closed or backlog full)",
                );
                return listener.refuse("backlog full or listener closed".into());
            }
            queue.ready.push_back(established);
            let armed = std::mem::take(&mut queue.armed);
            drop(queue);
            if armed {
                listener.wake_js();
            }
        });
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
