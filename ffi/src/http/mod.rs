//! The HTTP engine: an HTTP/1.1 + HTTP/2 (h2c) server inside the kernel on
//! Pingora's proxy pipeline. Native routes (static responses, reverse
//! proxying) never enter JS; the rest reaches one JS handler through two
//! rings (docs/http.md).
//!
//! - [`protocol`]: the record tags, flags and limits of the rings to JS (ABI).
//! - [`headers`]: which headers are about the connection, not the message.
//! - [`target`]: the request target's normalization (before any routing).
//! - [`chunked`]: following chunked bodies (strict for requests).
//! - [`routes`]: the route table and matching.
//! - [`upstream`]: upstream pools, load balancing, health.
//! - [`fast`]: requests recognized from the raw HTTP/1 head (static routes, simple proxying).
//! - [`relay`]: the HTTP/1 fast path of proxy routes (own upstream connection pool).
//! - [`js_http1`]: the HTTP/1 fast path of bodyless JS requests.
//! - [`engine`]: the Pingora application (limits, routes, proxy hooks, JS requests).
//! - [`bridge`]: the rings to and from JS.
//! - [`server`]: the accept loop, connection driver and graceful shutdown.
//! - [`stream`]: the connection type given to Pingora (gathered writes).
//!
//! Unix only: on Windows these exports exist (the ABI is the same on every
//! platform) and report `Unsupported`.

#[cfg(unix)]
mod bridge;
#[cfg(unix)]
mod chunked;
#[cfg(unix)]
mod engine;
#[cfg(unix)]
mod fast;
#[cfg(unix)]
mod headers;
#[cfg(unix)]
mod js_http1;
pub mod protocol;
#[cfg(unix)]
mod relay;
#[cfg(unix)]
mod routes;
#[cfg(unix)]
mod server;
#[cfg(unix)]
mod stream;
#[cfg(unix)]
mod target;
#[cfg(unix)]
mod upstream;

use crate::boundary::{call, in_bytes, out_bytes, write_out};
use crate::error::{KernelError, KernelResult};
use crate::handles::{HandleKind, HandleTable};
#[cfg(not(unix))]
use crate::proto::ErrorCode;
use crate::proto::HttpServerInfo;
use prost::Message;

#[cfg(unix)]
type Server = server::HttpServer;

/// Windows: nothing is ever registered.
#[cfg(not(unix))]
pub struct Server {
    kernel_id: u64,
}

static SERVERS: HandleTable<Server> = HandleTable::new(HandleKind::HttpServer);

/// Stops every server of a closing kernel, at once.
pub fn release_owned(kernel_id: u64) {
    for _server in SERVERS.drain_where(|server| server.kernel_id == kernel_id) {
        #[cfg(unix)]
        _server.abort();
    }
}

/// Servers of a kernel not freed yet, for its stats.
pub fn servers_of(kernel_id: u64) -> u64 {
    SERVERS.sum(|server| u64::from(server.kernel_id == kernel_id))
}

#[cfg(unix)]
fn serve(kernel: u32, request: &[u8], to_js: u32, to_kernel: u32) -> KernelResult<HttpServerInfo> {
    let request = crate::proto::HttpServeRequest::decode(request)
        .map_err(|error| KernelError::invalid_argument(format!("bad HttpServeRequest: {error}")))?;
    let owner = crate::kernel::kernel(kernel)?;
    let to_js = crate::ring::ring(to_js)?;
    let to_kernel = crate::ring::ring(to_kernel)?;
    let server = server::HttpServer::start(
        owner.id(),
        owner.runtime_handle()?,
        request,
        to_js,
        to_kernel,
    )?;
    let address = server.address;
    let handle = SERVERS.insert(std::sync::Arc::new(server))?;
    Ok(HttpServerInfo {
        handle,
        hostname: address.ip().to_string(),
        port: u32::from(address.port()),
    })
}

#[cfg(not(unix))]
fn serve(
    _kernel: u32,
    _request: &[u8],
    _to_js: u32,
    _to_kernel: u32,
) -> KernelResult<HttpServerInfo> {
    Err(KernelError::new(
        ErrorCode::Unsupported,
        "the HTTP engine (Pingora) is not available on this platform; use Deno.serve",
    ))
}

/// Starts a server (`krepis.v1.HttpServeRequest`) answering JS routes through
/// `to_js_ring` (kernel → JS) and `to_kernel_ring` (JS → kernel), which the
/// server claims. Writes its `krepis.v1.HttpServerInfo` (handle, bound
/// address) into `out`.
///
/// # Safety
/// `request` must point to `len` readable bytes; `out` to `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_http_serve(
    kernel: u32,
    request: *const u8,
    len: u32,
    to_js_ring: u32,
    to_kernel_ring: u32,
    out: *mut u8,
    cap: u32,
) -> i32 {
    call("krepis_http_serve", || {
        // SAFETY: forwarded from this function's contract.
        let request = unsafe { in_bytes(request, len, "request")? };
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { out_bytes(out, cap, "out")? };
        let info = serve(kernel, request, to_js_ring, to_kernel_ring)?;
        write_out(&info.encode_to_vec(), out)
    })
}

/// Begins a graceful shutdown: stops accepting, lets requests in flight
/// finish for `grace_ms`, then aborts the rest. Returns at once; the kernel
/// closes the server's kernel → JS ring when everything has stopped.
#[no_mangle]
pub extern "C" fn krepis_http_shutdown(server: u32, grace_ms: u32) -> i32 {
    call("krepis_http_shutdown", || {
        let _server = SERVERS.get(server)?;
        #[cfg(unix)]
        _server.shutdown(std::time::Duration::from_millis(u64::from(grace_ms)));
        let _ = grace_ms;
        Ok(0)
    })
}

#[cfg(unix)]
fn stats(server: &Server) -> KernelResult<crate::proto::HttpServerStats> {
    Ok(server.stats())
}

#[cfg(not(unix))]
fn stats(_server: &Server) -> KernelResult<crate::proto::HttpServerStats> {
    Err(KernelError::new(
        ErrorCode::Unsupported,
        "no HTTP engine here",
    ))
}

/// Stops a server now; true when it had already finished on its own.
#[cfg(unix)]
fn stop(server: &Server) -> bool {
    let finished = server.is_finished();
    server.abort();
    finished
}

#[cfg(not(unix))]
fn stop(_server: &Server) -> bool {
    true
}

/// Writes the server's `krepis.v1.HttpServerStats` into `out`.
///
/// # Safety
/// `out` must point to `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_http_stats(server: u32, out: *mut u8, cap: u32) -> i32 {
    call("krepis_http_stats", || {
        let server = SERVERS.get(server)?;
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { out_bytes(out, cap, "out")? };
        write_out(&stats(&server)?.encode_to_vec(), out)
    })
}

/// Frees a server's handle; a server still running is aborted first.
/// Returns 1 when it had finished on its own, 0 when it was aborted.
#[no_mangle]
pub extern "C" fn krepis_http_free(server: u32) -> i32 {
    call("krepis_http_free", || {
        let server = SERVERS.remove(server)?;
        Ok(i32::from(stop(&server)))
    })
}
