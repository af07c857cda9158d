//! The krepis kernel: the native half of `@krepis/sdk`.
//!
//! Deno loads this library through FFI. Every export is `extern "C"`, named
//! `krepis_*`, runs inside [`boundary::call`] (which catches panics) and
//! returns an `i32`: `>= 0` means success (a length or 0), `< 0` is the
//! negated [`proto::ErrorCode`], with details in the calling thread's last
//! error ([`boundary::krepis_last_error`]). Objects cross the boundary as
//! `u32` handles ([`handles`]), never as pointers.
//!
//! Layers; a module imports only from its own layer's lower modules or from
//! layers below it (checked by `tools/import_graph.ts`):
//! - foundation: [`error`], [`proto`], [`boundary`] (panic catching, status
//!   codes, the last error), [`identity`] (version and ABI hash),
//!   [`handles`], [`memory`] (memory shared with JS and its accounting),
//!   [`events`] (one readiness queue for many objects), [`ring`] (SPSC rings
//!   between the kernel and JS), [`kernel`] (the Kernel and handle lookup);
//! - capabilities, one folder each: [`buffers`], [`store`], [`transport`]
//!   (KNUL over QUIC), [`guard`] (sandboxed child processes), [`http`]
//!   (Pingora, native routes and JS handlers), [`runtimes`] (supervised Deno
//!   children over a framed channel, started through the guard);
//! - [`lifecycle`]: opening and closing kernels, the release order, stats;
//! - [`diagnostics`]: test and benchmark exports, outside the public ABI.

pub mod boundary;
pub mod buffers;
/// cbindgen:ignore
pub mod diagnostics;
pub mod error;
pub mod events;
pub mod guard;
pub mod handles;
pub mod http;
pub mod identity;
pub mod kernel;
pub mod lifecycle;
pub mod memory;
pub mod proto;
pub mod ring;
pub mod runtimes;
pub mod store;
pub mod transport;
