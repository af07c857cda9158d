//! A kernel's [`Transport`] and the UDP endpoints it binds.
//!
//! The transport is what one kernel's listeners, connects and links share:
//! the event queue JS waits on (one `nonblocking` wait per kernel, not one
//! per link: docs/design.md, "One wait for everything"), the client
//! endpoints connects go out from, and the outcomes of finished connects.

use super::budget::Budget;
use crate::error::{KernelError, KernelResult};
use crate::events::EventQueue;
use crate::handles::{HandleKind, HandleTable};
use crate::proto::LinkInfo;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};

/// UDP socket buffers asked for (the OS may cap them, e.g. Linux at
/// `net.core.rmem_max`). The default ~200 KiB overflows when many links
/// handshake at once or a fast link bursts, and each drop costs a QUIC
/// retransmission timeout.
const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// A UDP endpoint on `address` with large socket buffers.
pub fn endpoint(
    runtime: &tokio::runtime::Handle,
    address: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if address.is_ipv6() {
        // Dual-stack when the OS allows it ("::" then also takes IPv4).
        let _ = socket.set_only_v6(false);
    }
    // Best effort: a smaller buffer only costs speed under bursts.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    socket.bind(&address.into())?;
    let _runtime = runtime.enter();
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        socket.into(),
        Arc::new(quinn::TokioRuntime),
    )
}

/// How often the transport checks whether links gave back enough memory to
/// return it to the OS.
const TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// How long kernel close waits for the transport's thread to stop (its
/// tasks are dropped, none is awaited).
const STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

pub(super) static TRANSPORTS: HandleTable<Transport> = HandleTable::new(HandleKind::Transport);

pub struct Transport {
    pub(super) kernel_id: u64,
    /// Where its endpoints, connections and links run: one thread of its
    /// own (see [`Transport::new`]).
    pub(super) runtime: tokio::runtime::Handle,
    /// The runtime itself, taken out and stopped by [`Transport::stop`].
    own_runtime: Mutex<Option<tokio::runtime::Runtime>>,
    pub(super) events: Arc<EventQueue>,
    /// Client endpoints (one UDP socket per address family), made on first use.
    pub(super) clients: Mutex<HashMap<bool, quinn::Endpoint>>,
    /// Finished connects waiting for JS to collect them.
    pub(super) connects: Mutex<HashMap<u32, KernelResult<LinkInfo>>>,
    pub(super) next_connect: AtomicU32,
    /// The kernel's link and window-memory budget (every listener's links
    /// and every connect's count against it).
    pub(super) budget: Arc<Budget>,
}

impl Transport {
    /// A kernel's transport, with a runtime of one thread for all of its
    /// QUIC work. A packet's path through quinn hops between tasks (the
    /// endpoint driver, the connection driver, the link's pumps); on the
    /// kernel's shared multi-threaded runtime those hops land on other
    /// workers and each costs a context switch (same-process 64 B round
    /// trips: 7.3 switches and ~78 µs of kernel CPU per round trip with two
    /// workers, 4.0 and ~58 µs on one thread, and 25% more round trips/s).
    /// quinn drives each connection from one task anyway, so one thread
    /// loses little throughput (bulk: `bench:transport`).
    pub fn new(
        kernel_id: u64,
        events: Arc<EventQueue>,
        budget: Arc<Budget>,
    ) -> KernelResult<Transport> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("krepis-knul")
            .enable_time()
            .enable_io()
            .build()
            .map_err(|error| KernelError::io("starting the transport's runtime", &error))?;
        // Freed link buffers go back to the OS from this thread's arena.
        runtime.spawn(async {
            let mut every = tokio::time::interval(TRIM_INTERVAL);
            loop {
                every.tick().await;
                super::budget::give_memory_back();
            }
        });
        Ok(Transport {
            kernel_id,
            runtime: runtime.handle().clone(),
            own_runtime: Mutex::new(Some(runtime)),
            events,
            clients: Mutex::new(HashMap::new()),
            connects: Mutex::new(HashMap::new()),
            next_connect: AtomicU32::new(1),
            budget,
        })
    }

    /// Stops the runtime (on kernel close, after its links and endpoints
    /// closed) and joins its thread, so no thread outlives the kernel; from
    /// inside another runtime, where blocking is not allowed, it is left to
    /// stop in the background.
    pub fn stop(&self) {
        let runtime = self
            .own_runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(runtime) = runtime {
            if tokio::runtime::Handle::try_current().is_err() {
                runtime.shutdown_timeout(STOP_TIMEOUT);
            } else {
                runtime.shutdown_background();
            }
        }
    }

    /// The client endpoint for one address family, bound on first use.
    pub fn client_endpoint(&self, ipv6: bool) -> KernelResult<quinn::Endpoint> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(endpoint) = clients.get(&ipv6) {
            return Ok(endpoint.clone());
        }
        let bind: SocketAddr = if ipv6 {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = endpoint(&self.runtime, bind, None)
            .map_err(|error| KernelError::io("binding a UDP socket for connect", &error))?;
        clients.insert(ipv6, endpoint.clone());
        Ok(endpoint)
    }
}

impl Drop for Transport {
    /// Dropping a tokio runtime blocks, which panics inside another runtime:
    /// stop it in the background however the transport goes away.
    fn drop(&mut self) {
        self.stop();
    }
}
