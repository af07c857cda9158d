//! Opening, closing and reporting on kernels: the composition root of the
//! crate. This is the one module that names every capability, and only
//! through each capability's top-level hooks (`release_owned`, `stats_of`,
//! the store's `open_for`/`close_of`), never through their internals.
//!
//! Close order, and why:
//! 1. capabilities whose objects JS waits on (HTTP servers, transport links,
//!    rings, guarded processes, store handles): closing them wakes kernel
//!    tasks and JS waiters blocked on them;
//! 2. the runtime, waiting up to the grace period for its tasks;
//! 3. shared buffers: JS has detached its views by now, and a task that
//!    outlived the grace still holds `Arc`s to what it uses;
//! 4. the store: flushes, stops its committer and releases the data dir even
//!    if something still holds a reference to it.

use crate::boundary::{call, in_bytes, out_bytes, write_out};
use crate::error::KernelError;
use crate::events::WakeCallback;
use crate::identity;
use crate::kernel::{self, Kernel};
use crate::proto::{BufferStats, KernelConfig, Stats};
use crate::{buffers, guard, http, ring, store, transport};
use prost::Message;
use std::sync::Arc;

/// Step 1 of closing a kernel, in this order (see the module docs).
const RELEASE_BEFORE_RUNTIME_STOPS: &[fn(u64)] = &[
    http::release_owned,
    transport::release_owned,
    ring::release_owned,
    guard::release_owned,
    store::release_owned,
];

/// Opens a kernel and the capabilities that start with it (the store).
fn open(config: &KernelConfig, wake: WakeCallback) -> Result<u32, KernelError> {
    let kernel = Arc::new(Kernel::open(config)?);
    kernel
        .events()
        .register(wake)
        .map_err(|error| KernelError::io("starting the kernel's waker thread", &error))?;
    if let Err(error) = store::open_for(&kernel, &config.store.clone().unwrap_or_default()) {
        let _ = shutdown(&kernel);
        return Err(error);
    }
    match kernel::insert(Arc::clone(&kernel)) {
        Ok(handle) => Ok(handle),
        Err(error) => {
            let _ = shutdown(&kernel);
            Err(error)
        }
    }
}

/// Releases everything the kernel owns, in the order of the module docs.
/// Idempotent: the first call takes the runtime, later calls do nothing.
/// Everything is released even when it fails: `Err` reports what closing
/// the store lost (acknowledged puts that could not be made durable).
fn shutdown(kernel: &Kernel) -> Result<(), KernelError> {
    let Some(runtime) = kernel.take_runtime() else {
        return Ok(());
    };
    for release in RELEASE_BEFORE_RUNTIME_STOPS {
        release(kernel.id());
    }
    kernel.stop_runtime(runtime);
    buffers::release_owned(kernel.id());
    let store = store::close_of(kernel);
    // Last: nothing may call JS's callback once JS closed it.
    kernel.events().close();
    store
}

fn stats(kernel: &Kernel) -> Stats {
    Stats {
        kernel_id: kernel.id(),
        version: identity::version().to_owned(),
        worker_threads: kernel.worker_threads(),
        alive_tasks: kernel.alive_tasks(),
        uptime_us: kernel.uptime().as_micros() as u64,
        open_kernels: kernel::open_kernels() as u32,
        data_dir: kernel
            .data_dir()
            .map(|dir| dir.display().to_string())
            .unwrap_or_default(),
        store: store::stats_of(kernel),
        buffers: Some(BufferStats {
            ring_used_bytes: ring::used_bytes_of(kernel.id()),
            ..kernel.accounting().stats()
        }),
        transport: Some(transport::stats_of(kernel.id())),
    }
}

/// Opens a kernel configured by `config` (an encoded `krepis.v1.KernelConfig`
/// of `config_len` bytes) and writes its handle to `out_handle`. `wake` is
/// JS's thread-safe callback that wakes its event pump (see
/// `krepis_events_take`), called from the kernel's waker thread; null: JS
/// waits with `krepis_events_wait` instead.
///
/// # Safety
/// `config` must point to `config_len` readable bytes (or be null with 0);
/// `out_handle` must point to one writable, aligned `u32`; `wake` must stay
/// callable until `krepis_events_quiesce` reported no call in flight after
/// the kernel closed.
#[no_mangle]
pub unsafe extern "C" fn krepis_kernel_open(
    config: *const u8,
    config_len: u32,
    wake: WakeCallback,
    out_handle: *mut u32,
) -> i32 {
    call("krepis_kernel_open", || {
        if out_handle.is_null() || !out_handle.is_aligned() {
            return Err(KernelError::invalid_argument(
                "out_handle must point to one aligned u32",
            ));
        }
        // SAFETY: forwarded from this function's contract.
        let bytes = unsafe { in_bytes(config, config_len, "config")? };
        let config = KernelConfig::decode(bytes).map_err(|error| {
            KernelError::invalid_argument(format!(
                "config is not a valid krepis.v1.KernelConfig ({config_len} bytes): {error}"
            ))
        })?;
        let handle = open(&config, wake)?;
        // SAFETY: checked non-null and aligned above; the caller guarantees it is writable.
        unsafe { out_handle.write(handle) };
        Ok(0)
    })
}

/// Closes a kernel: stops its runtime and waits for its threads. A closed or
/// forged handle returns an error status (`CLOSED` / `INVALID_HANDLE`). The
/// kernel is closed even when this returns `IO`: that reports puts or
/// deletes that were acknowledged but could not be made durable. JS calls
/// `krepis_events_quiesce` first and lets the `wake` calls in flight run: it
/// closes its callback once this returned.
#[no_mangle]
pub extern "C" fn krepis_kernel_close(kernel: u32) -> i32 {
    call("krepis_kernel_close", || {
        shutdown(&*kernel::remove(kernel)?)?;
        Ok(0)
    })
}

/// Writes the kernel's `krepis.v1.Stats` (protobuf) into `out`; returns its
/// length (nothing is written when that exceeds `cap`).
///
/// # Safety
/// `out` must be null or point to `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_kernel_stats(kernel: u32, out: *mut u8, cap: u32) -> i32 {
    call("krepis_kernel_stats", || {
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { out_bytes(out, cap, "out")? };
        let stats = stats(&*kernel::kernel(kernel)?).encode_to_vec();
        write_out(&stats, out)
    })
}

/// Moves the kernel's pending events (`[kind u32][handle u32]` each, see
/// `KREPIS_EVENT_*`) into `out` and returns how many. When there are none
/// it returns 0 and marks JS parked: the next event calls the `wake`
/// callback given to `krepis_kernel_open` (once).
///
/// # Safety
/// `out` must be null or point to `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_events_take(kernel: u32, out: *mut u8, cap: u32) -> i32 {
    call("krepis_events_take", || {
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { out_bytes(out, cap, "out")? };
        Ok(kernel::kernel(kernel)?.events().take(out) as i32)
    })
}

/// Like `krepis_events_take`, but when there are none JS is not marked
/// parked: it is about to spin (`krepis_events_spin`) and takes with
/// `krepis_events_take` before it sleeps.
///
/// # Safety
/// `out` must be null or point to `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_events_poll(kernel: u32, out: *mut u8, cap: u32) -> i32 {
    call("krepis_events_poll", || {
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { out_bytes(out, cap, "out")? };
        Ok(kernel::kernel(kernel)?.events().poll(out) as i32)
    })
}

/// Busy-waits up to `max_micros` (at most 1000) until any kernel of this
/// process queued an event since JS saw the push count `seen`; returns the
/// count now (equal to `seen` when nothing came). Returns at once where the
/// process may use only one core.
#[no_mangle]
pub extern "C" fn krepis_events_spin(seen: u32, max_micros: u32) -> u32 {
    crate::events::spin(
        seen,
        std::time::Duration::from_micros(u64::from(max_micros.min(1000))),
    )
}

/// 1 when spinning can pay off in this process (it may use two cores or
/// more), 0 when `krepis_events_spin` would return at once.
#[no_mangle]
pub extern "C" fn krepis_events_spin_allowed() -> i32 {
    i32::from(crate::events::spin_allowed())
}

/// [nonblocking] Waits up to `timeout_ms` until the kernel has events (JS
/// then takes them with `krepis_events_take`): the wait of a JS side that
/// could not register a `wake` callback. Returns 1 when events are queued,
/// 0 otherwise.
#[no_mangle]
pub extern "C" fn krepis_events_wait(kernel: u32, timeout_ms: u32) -> i32 {
    call("krepis_events_wait", || {
        let events = std::sync::Arc::clone(kernel::kernel(kernel)?.events());
        Ok(i32::from(events.wait(std::time::Duration::from_millis(
            u64::from(timeout_ms),
        ))))
    })
}

/// Stops calling the `wake` callback for good and returns how many calls are
/// in flight. JS calls it before closing the kernel and lets the calls in
/// flight run first (each needs the JS thread).
#[no_mangle]
pub extern "C" fn krepis_events_quiesce(kernel: u32) -> i32 {
    call("krepis_events_quiesce", || {
        Ok(kernel::kernel(kernel)?.events().quiesce() as i32)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::MAX_WORKER_THREADS;
    use crate::proto::ErrorCode;

    fn open(config: KernelConfig) -> i32 {
        let bytes = config.encode_to_vec();
        let mut handle = 0u32;
        // SAFETY: valid buffer and out pointer for the call's duration.
        let status =
            unsafe { krepis_kernel_open(bytes.as_ptr(), bytes.len() as u32, None, &mut handle) };
        if status == 0 {
            handle as i32
        } else {
            status
        }
    }

    #[test]
    fn open_stats_close() {
        let handle = open(KernelConfig {
            worker_threads: 2,
            ..Default::default()
        }) as u32;
        let kernel = kernel::kernel(handle).unwrap();
        let stats = stats(&kernel);
        assert_eq!(stats.worker_threads, 2);
        assert_eq!(stats.version, env!("CARGO_PKG_VERSION"));
        drop(kernel);
        assert_eq!(krepis_kernel_close(handle), 0);
        assert_eq!(krepis_kernel_close(handle), -(ErrorCode::Closed as i32));
    }

    #[test]
    fn rejects_bad_config() {
        // SAFETY: valid pointers for the call's duration.
        let status = unsafe {
            let garbage = [0xffu8; 7];
            let mut handle = 0u32;
            krepis_kernel_open(garbage.as_ptr(), 7, None, &mut handle)
        };
        assert_eq!(status, -(ErrorCode::InvalidArgument as i32));
        let status = open(KernelConfig {
            worker_threads: MAX_WORKER_THREADS + 1,
            ..Default::default()
        });
        assert_eq!(status, -(ErrorCode::InvalidArgument as i32));
        let status = open(KernelConfig {
            data_dir: "relative/dir".into(),
            ..Default::default()
        });
        assert_eq!(status, -(ErrorCode::InvalidArgument as i32));
    }
}
