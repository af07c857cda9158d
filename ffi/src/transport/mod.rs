//! The KNUL transport's exports: one `Transport` per kernel (its event queue
//! and client endpoints), listeners, connects and links. The protocol itself
//! is in `link` (docs/knul.md); TLS in `tls`.
//!
//! Asynchronous work never blocks a JS call: `listen` binds at once,
//! `connect` returns an operation id whose completion arrives as an event,
//! and links report readiness through the transport's event queue.
//!
//! Files, from the bottom up (a file imports only files listed before it):
//! - [`knul`]: the 40-byte packet header codec;
//! - [`budget`]: link and window-memory budgets of kernels and listeners;
//! - [`lease`]: ring records lent to quinn without a copy;
//! - [`tls`]: rustls for quinn, ALPN `knul/1`, dev certificates;
//! - [`link`]: one link — hello, framing, pumps, close handshake;
//! - [`endpoint`]: a kernel's `Transport` and the UDP endpoints it binds;
//! - [`setup`]: checking a link's rings, registering and starting it;
//! - [`listener`]: listeners, their accept loop and backlog;
//! - [`connect`]: connects, run on the runtime, outcomes left for JS;
//! - this file: the exports (decoding and checking requests), a kernel's
//!   transport stats and its release on kernel close.

// cbindgen writes the ABI constants in the order it meets them: this file's
// first, then its modules' in the order declared here (`knul` before `link`).
pub mod budget;
pub mod connect;
pub mod endpoint;
pub mod knul;
pub mod lease;
pub mod link;
pub mod listener;
pub mod setup;
pub mod tls;

use crate::boundary::{call, in_bytes, out_bytes, write_out};
use crate::error::{KernelError, KernelResult};
use crate::kernel::kernel;
use crate::proto::{
    ConnectRequest, DevCertificateRequest, ErrorCode, ListenRequest, ListenerInfo, TransportOptions,
};
use budget::Budget;
use endpoint::{Transport, TRANSPORTS};
use link::CLOSE_GOING_AWAY;
use listener::{ListenOptions, LISTENERS};
use setup::LINKS;

use prost::Message;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

/// Default and largest `maxPacketBytes`.
pub const KNUL_DEFAULT_MAX_PACKET_BYTES: u32 = 1 << 20;
pub const KNUL_MAX_PACKET_BYTES: u32 = 256 << 20;
/// Room `krepis_listener_accept` needs for a `LinkInfo` (an IPv6 address
/// and a few varints fit with plenty to spare).
pub const LINK_INFO_MAX_BYTES: usize = 256;

fn check_max_packet(value: u32) -> KernelResult<u32> {
    match value {
        0 => Ok(KNUL_DEFAULT_MAX_PACKET_BYTES),
        value if value <= KNUL_MAX_PACKET_BYTES => Ok(value),
        value => Err(KernelError::invalid_argument(format!(
            "maxPacketBytes must be at most {KNUL_MAX_PACKET_BYTES}, got {value}"
        ))
        .with_detail("field", "maxPacketBytes")),
    }
}

fn check_port(port: u32) -> KernelResult<u16> {
    u16::try_from(port).map_err(|_| {
        KernelError::invalid_argument(format!("port must be 0–65535, got {port}"))
            .with_detail("field", "port")
    })
}

fn resolve(hostname: &str, port: u32) -> KernelResult<SocketAddr> {
    let port = check_port(port)?;
    (hostname, port)
        .to_socket_addrs()
        .map_err(|error| {
            KernelError::invalid_argument(format!("cannot resolve {hostname:?}: {error}"))
                .with_detail("field", "hostname")
        })?
        .next()
        .ok_or_else(|| {
            KernelError::invalid_argument(format!("{hostname:?} has no address"))
                .with_detail("field", "hostname")
        })
}

/// Links, listeners and budget of a kernel, for its stats.
pub fn stats_of(kernel_id: u64) -> crate::proto::TransportStats {
    let count = |owned: bool| u64::from(owned);
    let budget = |value: fn(&Budget) -> u64| {
        TRANSPORTS.sum(|transport| {
            if transport.kernel_id == kernel_id {
                value(&transport.budget)
            } else {
                0
            }
        })
    };
    crate::proto::TransportStats {
        links: LINKS.sum(|link| count(link.kernel_id == kernel_id)) as u32,
        listeners: LISTENERS.sum(|listener| count(listener.kernel_id == kernel_id)) as u32,
        window_bytes: budget(Budget::window_bytes),
        max_window_bytes: budget(|budget| budget.max_window_bytes),
        max_links: budget(|budget| budget.max_links),
        links_refused: budget(Budget::refused),
    }
}

/// Closes every transport object of a kernel (on kernel close): links end
/// with "going away", listeners and endpoints close, JS waiters wake.
pub fn release_owned(kernel_id: u64) {
    for link in LINKS.drain_where(|link| link.kernel_id == kernel_id) {
        link.abort(CLOSE_GOING_AWAY, "the kernel is closing");
    }
    let mut endpoints = Vec::new();
    for listener in LISTENERS.drain_where(|listener| listener.kernel_id == kernel_id) {
        listener.close();
        endpoints.push(listener.endpoint.clone());
    }
    let mut runtime = None;
    let transports = TRANSPORTS.drain_where(|transport| transport.kernel_id == kernel_id);
    for transport in &transports {
        endpoints.extend(
            transport
                .clients
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned(),
        );
        runtime = Some(transport.runtime.clone());
    }
    for endpoint in &endpoints {
        endpoint.close(
            quinn::VarInt::from_u32(CLOSE_GOING_AWAY),
            b"the kernel is closing",
        );
    }
    // Let the endpoints send their close frames before the runtime stops:
    // otherwise peers only notice at their idle timeout (30 s).
    // (Never from inside a runtime, where blocking is not allowed.)
    let outside_runtime = tokio::runtime::Handle::try_current().is_err();
    if let Some(runtime) = runtime.filter(|_| !endpoints.is_empty() && outside_runtime) {
        runtime.block_on(async {
            let idle = wait_all(endpoints.iter().map(|endpoint| endpoint.wait_idle()));
            let _ = tokio::time::timeout(SHUTDOWN_FLUSH, idle).await;
        });
    }
    for transport in &transports {
        transport.stop();
    }
}

/// How long kernel close waits for links' close frames to go out.
const SHUTDOWN_FLUSH: Duration = Duration::from_millis(250);

/// Awaits each future in turn (they all progress on the runtime meanwhile).
async fn wait_all<F: std::future::Future>(futures: impl Iterator<Item = F>) {
    for future in futures {
        future.await;
    }
}

/// Creates the kernel's transport (its client endpoints, pending connects,
/// its budget: `krepis.v1.TransportOptions`); writes the handle to `out`.
/// Its events go to the kernel's event queue.
///
/// # Safety
/// `request` must point to `len` readable bytes; `out` to a writable,
/// aligned `u32`.
#[no_mangle]
pub unsafe extern "C" fn krepis_transport_open(
    kernel_handle: u32,
    request: *const u8,
    len: u32,
    out: *mut u32,
) -> i32 {
    call("krepis_transport_open", || {
        if out.is_null() || !out.is_aligned() {
            return Err(KernelError::invalid_argument(
                "out must point to an aligned u32",
            ));
        }
        // SAFETY: forwarded from this function's contract.
        let request = unsafe { in_bytes(request, len, "request")? };
        let options = TransportOptions::decode(request).map_err(|error| {
            KernelError::invalid_argument(format!("bad TransportOptions: {error}"))
        })?;
        let owner = kernel(kernel_handle)?;
        let budget = Budget::new(
            "kernel",
            match options.max_links {
                0 => budget::DEFAULT_MAX_LINKS,
                max => u64::from(max),
            },
            match options.max_window_bytes {
                0 => budget::default_max_window_bytes(),
                max => max,
            },
        );
        let transport = Transport::new(owner.id(), Arc::clone(owner.events()), budget)?;
        let handle = TRANSPORTS.insert(Arc::new(transport))?;
        // SAFETY: checked non-null and aligned; the caller guarantees a u32.
        unsafe { out.write(handle) };
        Ok(0)
    })
}

/// Binds a listener (`krepis.v1.ListenRequest`); writes its
/// `krepis.v1.ListenerInfo` (handle and bound address) into `out`.
///
/// # Safety
/// `request` must point to `len` readable bytes; `out` to `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_transport_listen(
    transport: u32,
    request: *const u8,
    len: u32,
    out: *mut u8,
    cap: u32,
) -> i32 {
    call("krepis_transport_listen", || {
        let transport = TRANSPORTS.get(transport)?;
        // SAFETY: forwarded from this function's contract.
        let request = unsafe { in_bytes(request, len, "request")? };
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { out_bytes(out, cap, "out")? };
        let request = ListenRequest::decode(request).map_err(|error| {
            KernelError::invalid_argument(format!("bad ListenRequest: {error}"))
        })?;
        let max_packet = check_max_packet(request.max_packet_bytes)?;
        let address = resolve(&request.hostname, request.port)?;
        let config = tls::server_config(
            &request.cert_pem,
            &request.key_pem,
            budget::link_window(budget::ring_bytes(max_packet)),
        )?;
        let (handle, bound) = listener::listen(
            &transport,
            ListenOptions {
                address,
                config,
                max_packet,
                tenants: &request.tenants,
                backlog: request.backlog,
                max_links: request.max_links,
                max_window_bytes: request.max_window_bytes,
                max_handshakes: request.max_handshakes,
            },
        )?;
        let info = ListenerInfo {
            handle,
            hostname: bound.ip().to_string(),
            port: u32::from(bound.port()),
        };
        write_out(&info.encode_to_vec(), out)
    })
}

/// Takes the next established link of a listener and starts it with the
/// given rings; writes its `krepis.v1.LinkInfo`. Returns 0 when none is
/// waiting: the listener then posts an event when one arrives.
///
/// # Safety
/// `out` must point to `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_listener_accept(
    listener: u32,
    recv_ring: u32,
    send_ring: u32,
    out: *mut u8,
    cap: u32,
) -> i32 {
    call("krepis_listener_accept", || {
        let listener = LISTENERS.get(listener)?;
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { out_bytes(out, cap, "out")? };
        if out.len() < LINK_INFO_MAX_BYTES {
            // Checked first: a started link must reach JS, never be dropped
            // because its description did not fit.
            return Err(KernelError::invalid_argument(format!(
                "out must hold at least {LINK_INFO_MAX_BYTES} bytes"
            )));
        }
        if listener.is_closed() {
            return Err(KernelError::new(
                ErrorCode::Closed,
                "the listener is closed",
            ));
        }
        let Some(info) = listener.accept(recv_ring, send_ring)? else {
            return Ok(0);
        };
        write_out(&info.encode_to_vec(), out)
    })
}

/// Writes the listener's `krepis.v1.ListenerStats` into `out`.
///
/// # Safety
/// `out` must point to `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_listener_stats(listener: u32, out: *mut u8, cap: u32) -> i32 {
    call("krepis_listener_stats", || {
        let listener = LISTENERS.get(listener)?;
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { out_bytes(out, cap, "out")? };
        write_out(&listener.stats().encode_to_vec(), out)
    })
}

/// Stops listening: links not yet accepted are closed ("going away");
/// accepted links stay open.
#[no_mangle]
pub extern "C" fn krepis_listener_close(listener: u32) -> i32 {
    call("krepis_listener_close", || {
        LISTENERS.remove(listener)?.close();
        Ok(0)
    })
}

/// Starts connecting (`krepis.v1.ConnectRequest`) with the given rings.
/// Returns an operation id; an `EVENT_CONNECT` with that id is posted when
/// it finished, and `krepis_transport_connect_result` returns the outcome.
///
/// # Safety
/// `request` must point to `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_transport_connect(
    transport: u32,
    request: *const u8,
    len: u32,
    recv_ring: u32,
    send_ring: u32,
) -> i32 {
    call("krepis_transport_connect", || {
        let transport = TRANSPORTS.get(transport)?;
        // SAFETY: forwarded from this function's contract.
        let request = unsafe { in_bytes(request, len, "request")? };
        let request = ConnectRequest::decode(request).map_err(|error| {
            KernelError::invalid_argument(format!("bad ConnectRequest: {error}"))
        })?;
        let max_packet = check_max_packet(request.max_packet_bytes)?;
        let port = check_port(request.port)?;
        let operation =
            connect::start(&transport, request, max_packet, port, recv_ring, send_ring)?;
        Ok(operation as i32)
    })
}

/// The outcome of a finished connect: writes its `krepis.v1.LinkInfo`, or
/// fails with the connect's error. Each outcome is returned once.
///
/// # Safety
/// `out` must point to `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_transport_connect_result(
    transport: u32,
    operation: u32,
    out: *mut u8,
    cap: u32,
) -> i32 {
    call("krepis_transport_connect_result", || {
        let transport = TRANSPORTS.get(transport)?;
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { out_bytes(out, cap, "out")? };
        let mut connects = transport.connects.lock().unwrap_or_else(|p| p.into_inner());
        let encoded = match connects.get(&operation) {
            None => {
                return Err(KernelError::invalid_argument(format!(
                    "no finished connect with id {operation}"
                )))
            }
            Some(Ok(info)) => info.encode_to_vec(),
            Some(Err(error)) => {
                let error = error.clone();
                connects.remove(&operation);
                return Err(error);
            }
        };
        // A caller with a short buffer learns the length and asks again: the
        // outcome is removed only once it was delivered.
        if encoded.len() <= out.len() {
            connects.remove(&operation);
        }
        write_out(&encoded, out)
    })
}

/// Starts closing a link gracefully with a KNUL close code and UTF-8 reason:
/// everything already published to its send ring is delivered first, and
/// the peer's confirmation awaited at most `timeout_ms` (0: 30 s). An
/// `EVENT_LINK_CLOSED` follows when it has closed.
///
/// # Safety
/// `reason` must point to `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_link_close(
    link: u32,
    code: u32,
    reason: *const u8,
    len: u32,
    timeout_ms: u32,
) -> i32 {
    call("krepis_link_close", || {
        let link = LINKS.get(link)?;
        // SAFETY: forwarded from this function's contract.
        let reason = unsafe { in_bytes(reason, len, "reason")? };
        let reason = String::from_utf8_lossy(reason).into_owned();
        let runtime = transport_runtime(link.kernel_id)?;
        let timeout = match timeout_ms {
            0 => link::CLOSE_TIMEOUT,
            ms => Duration::from_millis(u64::from(ms)),
        };
        link.close(code, reason, timeout, &runtime);
        Ok(0)
    })
}

/// The runtime a kernel's links run on (their transport's).
fn transport_runtime(kernel_id: u64) -> KernelResult<tokio::runtime::Handle> {
    TRANSPORTS
        .find(|transport| transport.kernel_id == kernel_id)
        .map(|transport| transport.runtime.clone())
        .ok_or_else(|| KernelError::new(ErrorCode::Closed, "the kernel's transport is closed"))
}

/// Writes the link's `krepis.v1.LinkStatus` (open/closed, close code and
/// reason, error, statistics) into `out`.
///
/// # Safety
/// `out` must point to `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_link_status(link: u32, out: *mut u8, cap: u32) -> i32 {
    call("krepis_link_status", || {
        let link = LINKS.get(link)?;
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { out_bytes(out, cap, "out")? };
        write_out(&link.status().encode_to_vec(), out)
    })
}

/// Forgets a link JS is done with (closing it at once if still open).
#[no_mangle]
pub extern "C" fn krepis_link_free(link: u32) -> i32 {
    call("krepis_link_free", || {
        let link = LINKS.remove(link)?;
        link.abort(CLOSE_GOING_AWAY, "the link was released");
        // JS closed the link's rings before freeing it: their memory and
        // the connection's buffers go now.
        link.release_budget();
        Ok(0)
    })
}

/// Creates a self-signed development certificate
/// (`krepis.v1.DevCertificateRequest` → `krepis.v1.DevCertificate`).
///
/// # Safety
/// `request` must point to `len` readable bytes; `out` to `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_transport_dev_certificate(
    request: *const u8,
    len: u32,
    out: *mut u8,
    cap: u32,
) -> i32 {
    call("krepis_transport_dev_certificate", || {
        // SAFETY: forwarded from this function's contract.
        let request = unsafe { in_bytes(request, len, "request")? };
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { out_bytes(out, cap, "out")? };
        let request = DevCertificateRequest::decode(request).map_err(|error| {
            KernelError::invalid_argument(format!("bad DevCertificateRequest: {error}"))
        })?;
        write_out(&tls::dev_certificate(&request.names)?.encode_to_vec(), out)
    })
}
