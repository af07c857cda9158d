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

pub(super) static TRANSPORTS: HandleTable<Transport> = HandleTable::new(HandleKind::Transport);

pub struct Transport {
    pub(super) kernel_id: u64,
    pub(super) runtime: tokio::runtime::Handle,
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
