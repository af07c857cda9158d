//! Turning an established connection into a running link JS can use:
//! checking the two rings JS made for it, registering it in `LINKS` and
//! starting it. Listeners (accept) and connects both end here.

use super::budget::{connection_window, window_charge, Reservation};
use super::endpoint::Transport;
use super::knul::{KNUL_HEADER_BYTES, KNUL_VERSION};
use super::link::{Established, Link, LinkSetup, CLOSE_GOING_AWAY};
use crate::error::{KernelError, KernelResult};
use crate::handles::{HandleKind, HandleTable};
use crate::proto::LinkInfo;
use crate::ring::{record_size, ring, Direction, Ring};
use std::collections::HashSet;
use std::sync::Arc;

pub(super) static LINKS: HandleTable<Link> = HandleTable::new(HandleKind::Link);

/// Checks the two rings JS made for a link (of the transport's kernel, the
/// right directions, large enough) and claims them.
pub fn link_rings(
    transport: &Transport,
    recv_ring: u32,
    send_ring: u32,
    max_packet: u32,
) -> KernelResult<(Arc<Ring>, Arc<Ring>)> {
    let receive = ring(recv_ring)?;
    let send = ring(send_ring)?;
    if receive.kernel_id() != transport.kernel_id || send.kernel_id() != transport.kernel_id {
        return Err(KernelError::invalid_argument(
            "a link's rings must belong to the transport's kernel",
        ));
    }
    if receive.direction() != Direction::ToJs || send.direction() != Direction::ToKernel {
        return Err(KernelError::invalid_argument(
            "a link needs a kernel → JS ring to receive and a JS → kernel ring to send",
        ));
    }
    let needed = record_size(KNUL_HEADER_BYTES as u32 + max_packet);
    if u64::from(receive.capacity()) < needed {
        return Err(KernelError::invalid_argument(format!(
            "the receive ring ({} bytes) cannot hold a packet of maxPacketBytes ({max_packet})",
            receive.capacity()
        )));
    }
    receive.claim()?;
    send.claim()?;
    Ok((receive, send))
}

/// Registers and starts a link; returns what JS needs to know about it.
/// `reservation` is its share of the budgets (held until the link is
/// dropped); it grows if JS gave the link a larger ring than was reserved.
pub fn start_link(
    transport: &Transport,
    established: Established,
    recv: Arc<Ring>,
    send: Arc<Ring>,
    max_packet: u32,
    tenants: Option<Arc<HashSet<u64>>>,
    mut reservation: Reservation,
) -> KernelResult<LinkInfo> {
    let charge = window_charge(recv.capacity());
    if charge > reservation.bytes() {
        reservation.grow(charge - reservation.bytes());
    }
    let window = connection_window(recv.capacity());
    let link = Link::new(
        established,
        LinkSetup {
            kernel_id: transport.kernel_id,
            events: Arc::clone(&transport.events),
            recv_ring: recv,
            send_ring: send,
            max_packet,
            tenants,
            window,
            reservation,
        },
    );
    let handle = match LINKS.insert(Arc::clone(&link)) {
        Ok(handle) => handle,
        Err(error) => {
            link.abort(CLOSE_GOING_AWAY, "the kernel has too many links");
            return Err(error);
        }
    };
    link.start(handle, &transport.runtime);
    let remote = link.remote_address();
    Ok(LinkInfo {
        handle,
        remote_hostname: remote.ip().to_string(),
        remote_port: u32::from(remote.port()),
        version: u32::from(KNUL_VERSION),
        peer_max_packet_bytes: link.peer_max(),
        max_datagram_bytes: link.max_datagram_bytes(),
    })
}
