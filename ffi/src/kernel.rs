//! The kernel: a tokio multi-thread runtime plus the per-kernel state its
//! capabilities attach to it, reachable from JS by handle.
//!
//! This module knows no capability. Capabilities look their kernel up here
//! ([`kernel`], [`kernel_by_id`]) and keep per-kernel state either in tables
//! of their own (keyed by [`Kernel::id`]) or attached to the kernel
//! ([`Kernel::attach`]); `crate::lifecycle` opens and closes kernels and is
//! the only place that knows the order in which capabilities are released.

use crate::error::{KernelError, KernelResult};
use crate::events::EventQueue;
use crate::handles::{HandleKind, HandleTable};
use crate::memory::BufferAccounting;
use crate::proto::{ErrorCode, KernelConfig};
use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Upper bound on `worker_threads`, to turn a typo into an error instead of
/// thousands of threads.
pub(crate) const MAX_WORKER_THREADS: u32 = 256;
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
    /// Where every capability tells JS that something it waits for is ready.
    events: Arc<EventQueue>,
    /// State capabilities attached to this kernel, at most one per type.
    attached: Mutex<Vec<Arc<dyn Any + Send + Sync>>>,
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
            events: Arc::default(),
            attached: Mutex::new(Vec::new()),
        })
    }

    /// Process-unique id (owner tag of everything capabilities create for it).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The data directory, `None` when opened with `dataDir: null`.
    pub fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_deref()
    }

    pub fn worker_threads(&self) -> u32 {
        self.worker_threads
    }

    pub fn uptime(&self) -> Duration {
        self.opened_at.elapsed()
    }

    /// Counters of this kernel's shared buffers and rings.
    pub fn accounting(&self) -> &Arc<BufferAccounting> {
        &self.accounting
    }

    /// The kernel's event queue (JS waits on it, capabilities post to it).
    pub fn events(&self) -> &Arc<EventQueue> {
        &self.events
    }

    /// Attaches a capability's per-kernel state (one value per type; a
    /// second value of the same type replaces the first).
    pub fn attach<T: Any + Send + Sync>(&self, value: Arc<T>) {
        let mut attached = self.attached.lock().unwrap_or_else(|p| p.into_inner());
        attached.retain(|entry| !entry.is::<T>());
        attached.push(value);
    }

    /// The attached state of type `T`, if any.
    pub fn attached<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        let attached = self.attached.lock().unwrap_or_else(|p| p.into_inner());
        attached
            .iter()
            .find(|entry| entry.is::<T>())
            .and_then(|entry| Arc::clone(entry).downcast::<T>().ok())
    }

    /// Removes and returns the attached state of type `T`.
    pub fn detach<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        let mut attached = self.attached.lock().unwrap_or_else(|p| p.into_inner());
        let index = attached.iter().position(|entry| entry.is::<T>())?;
        attached.swap_remove(index).downcast::<T>().ok()
    }

    /// A handle to the kernel's runtime (for threads that drive async work).
    pub fn runtime_handle(&self) -> KernelResult<tokio::runtime::Handle> {
        let runtime = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
        runtime
            .as_ref()
            .map(|runtime| runtime.handle().clone())
            .ok_or_else(closed)
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
            None => Err(closed()),
        }
    }

    /// Tasks alive on the runtime (0 once closed).
    pub fn alive_tasks(&self) -> u64 {
        self.runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, |runtime| runtime.metrics().num_alive_tasks() as u64)
    }

    /// Takes the runtime out of the kernel: from here on `spawn` reports
    /// `Closed`. `None` when it was taken already (close is idempotent).
    pub fn take_runtime(&self) -> Option<tokio::runtime::Runtime> {
        self.runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Stops a runtime taken with [`Kernel::take_runtime`], waiting up to the
    /// kernel's grace period for its tasks and worker threads.
    pub fn stop_runtime(&self, runtime: tokio::runtime::Runtime) {
        if tokio::runtime::Handle::try_current().is_ok() {
            // Dropped on a runtime thread (blocking there would panic).
            runtime.shutdown_background();
        } else {
            runtime.shutdown_timeout(self.shutdown_grace);
        }
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        // Only a kernel that was never closed (an open that failed half-way)
        // still has its runtime here; closing went through the lifecycle.
        if let Some(runtime) = self.take_runtime() {
            self.stop_runtime(runtime);
        }
    }
}

fn closed() -> KernelError {
    KernelError::new(ErrorCode::Closed, "the kernel is closed")
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

/// Makes an opened kernel reachable by handle.
pub(crate) fn insert(kernel: Arc<Kernel>) -> KernelResult<u32> {
    KERNELS.insert(kernel)
}

/// Makes a kernel unreachable by handle (the first step of closing it).
pub(crate) fn remove(handle: u32) -> KernelResult<Arc<Kernel>> {
    KERNELS.remove(handle)
}

/// Kernels reachable by handle.
pub fn open_kernels() -> usize {
    KERNELS.live()
}

/// The open kernel with process-unique id `id`.
pub fn kernel_by_id(id: u64) -> KernelResult<Arc<Kernel>> {
    KERNELS.find(|kernel| kernel.id == id).ok_or_else(closed)
}

/// Looks up an open kernel (used by every capability that takes a kernel handle).
pub fn kernel(handle: u32) -> KernelResult<Arc<Kernel>> {
    KERNELS.get(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attached_state_is_typed() {
        let kernel = Kernel::open(&KernelConfig {
            worker_threads: 1,
            ..Default::default()
        })
        .unwrap();
        assert!(kernel.attached::<u32>().is_none());
        kernel.attach(Arc::new(7u32));
        kernel.attach(Arc::new(String::from("x")));
        kernel.attach(Arc::new(8u32));
        assert_eq!(*kernel.attached::<u32>().unwrap(), 8);
        assert_eq!(kernel.attached::<String>().unwrap().as_str(), "x");
        assert_eq!(*kernel.detach::<u32>().unwrap(), 8);
        assert!(kernel.attached::<u32>().is_none());
    }
}
