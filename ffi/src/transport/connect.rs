//! Connects: they never block JS (docs/design.md, "Connects never block
//! JS"). Starting one returns an operation id at once; name resolution,
//! TLS and the hello exchange run on the kernel's runtime, and the outcome
//! (the started link, or the typed error) waits in the transport for JS,
//! announced by an `EVENT_CONNECT` with that id.

use super::budget::{link_window, ring_bytes, window_charge, Reservation};
use super::endpoint::Transport;
use super::link::{client_hello, connection_error, HELLO_TIMEOUT};
use super::setup::{link_rings, start_link};
use super::tls;
use crate::error::{KernelError, KernelResult};
use crate::events::EVENT_CONNECT;
use crate::proto::{ConnectRequest, ErrorCode, LinkInfo};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Starts connecting as `request` asks (`max_packet` and `port` already
/// checked) with the rings JS made for the link; returns the operation id.
/// Errors found before anything runs (TLS configuration, rings, the
/// kernel's budget: `ResourceExhausted`) are returned at once.
pub fn start(
    transport: &Arc<Transport>,
    request: ConnectRequest,
    max_packet: u32,
    port: u16,
    recv_ring: u32,
    send_ring: u32,
) -> KernelResult<u32> {
    let config = tls::client_config(&request.ca_pems, link_window(ring_bytes(max_packet)))?;
    let hostname = request.hostname;
    let server_name = if request.server_name.is_empty() {
        hostname.clone()
    } else {
        request.server_name
    };
    let (recv, send) = link_rings(transport, recv_ring, send_ring, max_packet)?;
    let reservation = match Reservation::take(&[&transport.budget], window_charge(recv.capacity()))
    {
        Ok(reservation) => reservation,
        Err(error) => {
            recv.close();
            send.close();
            return Err(error);
        }
    };
    let operation = transport.next_connect.fetch_add(1, Ordering::Relaxed) & 0x7fff_ffff;
    let operation = operation.max(1);
    let task_transport = Arc::clone(transport);
    transport.runtime.spawn(async move {
        let outcome = async {
            // Name resolution may block on DNS: here, not on the JS thread.
            let address = tokio::net::lookup_host((hostname.as_str(), port))
                .await
                .ok()
                .and_then(|mut addresses| addresses.next())
                .ok_or_else(|| {
                    KernelError::new(
                        ErrorCode::Connection,
                        format!("cannot resolve {hostname:?}"),
                    )
                    .with_detail("field", "hostname")
                })?;
            let endpoint = task_transport.client_endpoint(address.is_ipv6())?;
            let connecting = endpoint
                .connect_with(config, address, &server_name)
                .map_err(|error| {
                    KernelError::invalid_argument(format!("cannot connect to {address}: {error}"))
                })?;
            let conn = connecting.await.map_err(|error| {
                let mut error = connection_error(&error);
                error.message =
                    format!("connecting to {address} ({server_name}): {}", error.message);
                error
            })?;
            let established = tokio::time::timeout(HELLO_TIMEOUT, client_hello(conn, max_packet))
                .await
                .map_err(|_| {
                    KernelError::new(
                        ErrorCode::Connection,
                        "the server sent no hello within 10 s",
                    )
                })??;
            start_link(
                &task_transport,
                established,
                Arc::clone(&recv),
                Arc::clone(&send),
                max_packet,
                None,
                reservation,
            )
        }
        .await;
        if outcome.is_err() {
            recv.close();
            send.close();
        }
        finish(&task_transport, operation, outcome);
    });
    Ok(operation)
}

/// Leaves a connect's outcome for `krepis_transport_connect_result` and
/// tells JS.
fn finish(transport: &Transport, operation: u32, result: KernelResult<LinkInfo>) {
    transport
        .connects
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(operation, result);
    transport.events.push(EVENT_CONNECT, operation);
}
