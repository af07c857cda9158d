//! The krepis kernel: the native half of `@krepis/sdk`.
//!
//! Deno loads this library through FFI. Every export is `extern "C"`, named
//! `krepis_*`, runs inside [`boundary::call`] (which catches panics) and
//! returns an `i32`: `>= 0` means success (a length or 0), `< 0` is the
//! negated [`proto::ErrorCode`], with details in the calling thread's last
//! error ([`boundary::krepis_last_error`]). Objects cross the boundary as
//! `u32` handles ([`handles`]), never as pointers.
//!
//! One capability per module:
//! - [`identity`]: version and ABI hash, checked by the loader before use.
//! - [`boundary`]: panic catching, status codes, the last error.
//! - [`kernel`]: kernel lifecycle (a tokio runtime) and stats.
//! - [`memory`], [`buffers`]: kernel-owned memory shared with JS without copying.
//! - [`ring`]: SPSC rings between the kernel and JS.
//! - [`guard`] (+ `sandbox` on Linux): untrusted commands in isolated,
//!   limited child processes.
//! - [`store`], [`commit`], [`journal`], [`scan`], [`watch`]: the sled store,
//!   its group-committed transactions, the journal, the commit log, scans
//!   and change feeds.
//! - [`transport`] (+ `link`, `tls`, `events`, `lease`, `knul`): KNUL links over QUIC.
//! - [`http`]: the HTTP engine (Pingora) with native routes and JS handlers.

pub mod anchors;
pub mod boundary;
pub mod buffers;
pub mod commit;
pub mod error;
pub mod events;
pub mod guard;
pub mod handles;
pub mod http;
pub mod identity;
pub mod journal;
pub mod kernel;
pub mod knul;
pub mod lease;
pub mod link;
pub mod memory;
pub mod proto;
pub mod ring;
#[cfg(target_os = "linux")]
pub mod sandbox;
pub mod scan;
pub mod store;
pub mod tls;
pub mod transport;
pub mod wal;
pub mod watch;
