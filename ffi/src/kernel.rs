//! Kernel lifecycle: a kernel owns a tokio multi-thread runtime (and, through
//! later capabilities, everything that runs on it). Closing a kernel stops its
//! runtime and waits for the worker threads; the library itself stays loaded.

use crate::boundary::{call, in_bytes, out_bytes, write_out};
use crate::buffers::{self, BufferAccounting};
use crate::error::{KernelError, KernelResult};
use crate::handles::{HandleKind, HandleTable};
use crate::identity;
use crate::proto::{ErrorCode, KernelConfig, Stats};
use crate::ring;
use prost::Message;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Upper bound on `worker_threads`, to turn a typo into an error instead of
/// thousands of threads.
const MAX_WORKER_THREADS: u32 = 256;
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_millis(5000);

static KERNELS: HandleTable<Kernel> = HandleTable::new(HandleKind::Kernel);
static NEXT_KERNEL_ID: AtomicU64 = AtomicU64::new(1);

/// A running kernel.
pub struct Kernel {
    id: u64,
    opened_at: Instant,
    worker_threads: u32,
    data_dir: Option<PathBuf>,
    shutdown_grace: Duration,
    /// `None` once closed.
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    accounting: Arc<BufferAccounting>,
    /// The store in `<data_dir>/store`; `None` without a data dir or once closed.
    store: Mutex<Option<Arc<crate::store::Store>>>,
}

impl Kernel {
    /// Validates `config`, prepares the data directory and starts the runtime.
    pub fn open(config: &KernelConfig) -> KernelResult<Kernel> {
        if config.worker_threads > MAX_WORKER_THREADS {
            return Err(KernelError::invalid_argument(format!(
                "workerThreads is {}, the maximum is {MAX_WORKER_THREADS}",
                config.worker_threads
            ))
            .with_detail("field", "worker_threads"));
        }
        let data_dir = match config.data_dir.as_str() {
            "" => None,
            path => Some(prepare_data_dir(path)?),
        };
        let store = match &data_dir {
            Some(dir) => Some(crate::store::Store::open(
                dir,
                &config.store.unwrap_or_default(),
            )?),
            None => None,
        };
        let worker_threads = match config.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            n => n,
        };
        let thread_name = match config.thread_name.as_str() {
            "" => "krepis".to_owned(),
            name => name.to_owned(),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(worker_threads as usize)
            .thread_name(thread_name)
            // Guarded processes each park a few blocking tasks (pipes, reaper).
            .max_blocking_threads(4096)
            .enable_time()
            .enable_io()
            .build()
            .map_err(|error| KernelError::io("starting the kernel runtime", &error))?;
        Ok(Kernel {
            id: NEXT_KERNEL_ID.fetch_add(1, Ordering::Relaxed),
            opened_at: Instant::now(),
            worker_threads,
            data_dir,
            shutdown_grace: match config.shutdown_grace_ms {
                0 => DEFAULT_SHUTDOWN_GRACE,
                ms => Duration::from_millis(u64::from(ms)),
            },
            runtime: Mutex::new(Some(runtime)),
            accounting: Arc::default(),
            store: Mutex::new(store),
        })
    }

    /// The kernel's store, or an error naming why there is none.
    pub fn store(&self) -> KernelResult<Arc<crate::store::Store>> {
        self.store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| {
                if self.data_dir.is_none() {
                    KernelError::new(
                        ErrorCode::InvalidArgument,
                        "this kernel has no data dir (dataDir: null), so it has no store",
                    )
                } else {
                    KernelError::new(ErrorCode::Closed, "the kernel is closed")
                }
            })
    }

    /// Process-unique id (owner tag of buffers and rings).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Counters of this kernel's shared buffers and rings.
    pub fn accounting(&self) -> &Arc<BufferAccounting> {
        &self.accounting
    }

    /// A handle to the kernel's runtime (for threads that drive async work).
    pub fn runtime_handle(&self) -> KernelResult<tokio::runtime::Handle> {
        let runtime = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
        runtime
            .as_ref()
            .map(|runtime| runtime.handle().clone())
            .ok_or_else(|| KernelError::new(ErrorCode::Closed, "the kernel is closed"))
    }

    /// Runs `task` on the kernel's runtime; `Closed` once the kernel closed.
    pub fn spawn<F>(&self, task: F) -> KernelResult<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let runtime = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
        match runtime.as_ref() {
            Some(runtime) => {
                runtime.spawn(task);
                Ok(())
            }
            None => Err(KernelError::new(ErrorCode::Closed, "the kernel is closed")),
        }
    }

    /// Stops the runtime, waiting up to the grace period for its tasks and
    /// worker threads. Idempotent.
    pub fn shutdown(&self) {
        let runtime = self
            .runtime
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(runtime) = runtime {
            // Rings first: closing them wakes tasks and JS waiters blocked on them.
            crate::http::release_owned(self.id);
            crate::transport::release_owned(self.id);
            ring::release_owned(self.id);
            crate::guard::release_owned(self.id);
            crate::store::release_owned(self.id);
            crate::scan::release_owned(self.id);
            if tokio::runtime::Handle::try_current().is_ok() {
                // Dropped on a runtime thread (blocking there would panic).
                runtime.shutdown_background();
            } else {
                runtime.shutdown_timeout(self.shutdown_grace);
            }
            // JS has detached its views by now. A task that outlived the grace
            // period still holds `Arc`s to what it uses, so freeing the table
            // entries cannot pull memory from under it.
            buffers::release_owned(self.id);
            let store = self.store.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(store) = store {
                // Flushes, stops the committer and releases the data dir even
                // if something still holds a reference to the store.
                store.close();
            }
        }
    }

    pub fn stats(&self) -> Stats {
        let alive_tasks = self
            .runtime
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
            .map_or(0, |runtime| runtime.metrics().num_alive_tasks() as u64);
        Stats {
            kernel_id: self.id,
            version: identity::version().to_owned(),
            worker_threads: self.worker_threads,
            alive_tasks,
            uptime_us: self.opened_at.elapsed().as_micros() as u64,
            open_kernels: KERNELS.live() as u32,
            data_dir: self
                .data_dir
                .as_ref()
                .map(|dir| dir.display().to_string())
                .unwrap_or_default(),
            store: self
                .store
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map(|store| store.stats()),
            buffers: Some(crate::proto::BufferStats {
                ring_used_bytes: ring::used_bytes_of(self.id),
                ..self.accounting.stats()
            }),
            transport: Some(crate::transport::stats_of(self.id)),
        }
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn prepare_data_dir(path: &str) -> KernelResult<PathBuf> {
    let dir = PathBuf::from(path);
    if !dir.is_absolute() {
        return Err(KernelError::invalid_argument(format!(
            "dataDir must be an absolute path, got {path:?}"
        ))
        .with_detail("field", "data_dir"));
    }
    std::fs::create_dir_all(&dir)
        .map_err(|error| KernelError::io(&format!("creating data dir {path}"), &error))?;
    if !dir.is_dir() {
        return Err(KernelError::new(
            ErrorCode::Io,
            format!("data dir {path} exists but is not a directory"),
        ));
    }
    Ok(dir)
}

/// The open kernel with process-unique id `id`.
pub fn kernel_by_id(id: u64) -> KernelResult<Arc<Kernel>> {
    KERNELS
        .find(|kernel| kernel.id == id)
        .ok_or_else(|| KernelError::new(ErrorCode::Closed, "the kernel is closed"))
}

/// Looks up an open kernel (used by every capability that takes a kernel handle).
pub fn kernel(handle: u32) -> KernelResult<Arc<Kernel>> {
    KERNELS.get(handle)
}

/// Opens a kernel configured by `config` (an encoded `krepis.v1.KernelConfig`
/// of `config_len` bytes) and writes its handle to `out_handle`.
///
/// # Safety
/// `config` must point to `config_len` readable bytes (or be null with 0);
/// `out_handle` must point to one writable, aligned `u32`.
#[no_mangle]
pub unsafe extern "C" fn krepis_kernel_open(
    config: *const u8,
    config_len: u32,
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
        let handle = KERNELS.insert(Arc::new(Kernel::open(&config)?))?;
        // SAFETY: checked non-null and aligned above; the caller guarantees it is writable.
        unsafe { out_handle.write(handle) };
        Ok(0)
    })
}

/// Closes a kernel: stops its runtime and waits for its threads. A closed or
/// forged handle returns an error status (`CLOSED` / `INVALID_HANDLE`).
#[no_mangle]
pub extern "C" fn krepis_kernel_close(kernel: u32) -> i32 {
    call("krepis_kernel_close", || {
        KERNELS.remove(kernel)?.shutdown();
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
        let stats = self::kernel(kernel)?.stats().encode_to_vec();
        write_out(&stats, out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(config: KernelConfig) -> i32 {
        let bytes = config.encode_to_vec();
        let mut handle = 0u32;
        // SAFETY: valid buffer and out pointer for the call's duration.
        let status = unsafe { krepis_kernel_open(bytes.as_ptr(), bytes.len() as u32, &mut handle) };
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
        let kernel = kernel(handle).unwrap();
        let stats = kernel.stats();
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
            krepis_kernel_open(garbage.as_ptr(), 7, &mut handle)
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

    #[test]
    fn panics_become_errors() {
        assert_eq!(
            crate::boundary::krepis_debug_panic(),
            -(ErrorCode::Panic as i32)
        );
        let mut buffer = vec![0u8; 1024];
        // SAFETY: valid buffer for the call's duration.
        let length = unsafe { crate::boundary::krepis_last_error(buffer.as_mut_ptr(), 1024) };
        let error = crate::proto::Error::decode(&buffer[..length as usize]).unwrap();
        assert_eq!(error.code, ErrorCode::Panic as i32);
        assert!(error.message.contains("deliberate panic"));
    }
}
