//! The guard: runs a command the application must not trust in a child
//! process with limits the kernel enforces (timeout, CPU, output, memory,
//! processes) and, on Linux, the isolation of [`sandbox`]. stdout and
//! stderr stream to JS through kernel → JS rings; the result (exit status,
//! usage, violations, the isolation actually applied) is announced by an
//! `EVENT_GUARD` on the kernel's event queue and read with a synchronous
//! call (`krepis_guard_result`).
//!
//! Every guarded process gets its own process group (session), so a kill
//! reaches its whole tree; on Linux the cgroups catch children that start
//! their own session, and on Windows a job object holds the tree.
//!
//! Files, from the bottom up (a file imports only files listed before it):
//! - [`policy`]: checking a request, `envAllow`, output bounds, `require`;
//! - Linux isolation: [`access`] (the paths a command may read and write),
//!   [`landlock`], [`seccomp`] (the BPF program and its system-call tables),
//!   [`supervisor`] (answers and reports seccomp notifications),
//!   [`cgroup`], [`netns`] (the pool of network namespaces), [`child`] (the
//!   raw clone/exec child, descriptor passing), [`sandbox`] (every layer:
//!   prepared in the parent, entered in the child, settled after);
//! - `job` (Windows): the job object that holds a command's tree;
//! - [`stopper`]: kills a command's tree once and keeps its violations;
//! - [`tree`]: the tree as each OS lets the guard measure and stop it;
//! - [`spawned`]: a started command, whichever way it was started;
//!   [`reap`] waits for the raw child without signalling a recycled pid;
//! - starting a command, one file per OS: [`linux`], `unix` (macOS),
//!   `windows`;
//! - [`input`] (stdin: bytes once, or a ring's records), [`output`]
//!   (stdout/stderr pumps: streamed, collected, or read by another
//!   capability), [`monitor`]
//!   (timeout, CPU, cgroup limits while it runs), [`waiter`] (the result);
//! - this file: the handle table, spawning step by step ([`spawn_with`] is
//!   also how `runtimes` starts its Deno children), the exports.

mod input;
mod monitor;
mod output;
mod policy;
mod spawned;
mod stopper;
mod tree;
mod waiter;

#[cfg(target_os = "linux")]
mod access;
#[cfg(target_os = "linux")]
mod cgroup;
#[cfg(target_os = "linux")]
mod child;
#[cfg(windows)]
mod job;
#[cfg(target_os = "linux")]
mod landlock;
#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
mod netns;
#[cfg(target_os = "linux")]
mod reap;
#[cfg(target_os = "linux")]
mod sandbox;
#[cfg(target_os = "linux")]
mod seccomp;
#[cfg(target_os = "linux")]
mod supervisor;
#[cfg(all(unix, not(target_os = "linux")))]
mod unix;
#[cfg(windows)]
mod windows;

#[cfg(target_os = "linux")]
use linux::start;
#[cfg(all(unix, not(target_os = "linux")))]
use unix::start;
#[cfg(windows)]
use windows::start;

pub use input::Input;
pub use output::StreamReader;

use crate::boundary::{call, in_bytes, out_bytes, write_out};
use crate::error::{KernelError, KernelResult};
use crate::handles::{HandleKind, HandleTable};
use crate::kernel::Kernel;
use crate::proto::{GuardPolicy, GuardRequest, GuardUsage};
use monitor::Limits;
use prost::Message;
use spawned::Started;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use stopper::{Stopper, Violations};
use waiter::{Outcome, Waiting};

static PROCESSES: HandleTable<Guarded> = HandleTable::new(HandleKind::Guard);
/// Makes each command's cgroup names unique within this process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A guarded process, as its handle holds it.
pub struct Guarded {
    kernel_id: u64,
    stop: Arc<Stopper>,
    /// Published by the waiter once the command ended.
    outcome: Arc<Outcome>,
    /// For its usage while it runs.
    tree: Arc<tree::Tree>,
    pid: u32,
    at: std::time::Instant,
}

/// How a command's stdio is wired besides the output rings.
#[derive(Default)]
pub struct Stdio {
    /// stdin from a ring instead of the request's bytes.
    pub stdin: Option<Input>,
    /// Reads stdout instead of the stdout pump (the ring is then unused).
    pub stdout: Option<StreamReader>,
}

/// Starts `request` for the kernel `kernel_handle`: checks it, claims the
/// output rings, starts the command the way this OS does, and hands it to
/// its handle and the threads that watch it.
/// Returns its handle and pid. `stdio` wires stdin and stdout differently
/// (the runtimes' channel); the sandbox, limits and result are the same.
pub fn spawn_with(
    kernel_handle: u32,
    request: GuardRequest,
    stdout_ring: u32,
    stderr_ring: u32,
    stdio: Stdio,
) -> KernelResult<(u32, u32)> {
    let kernel = crate::kernel::kernel(kernel_handle)?;
    let policy = request.policy.clone().unwrap_or_default();
    policy::validate(&request, &policy)?;
    let rings = output::claim_rings(stdout_ring, stderr_ring)?;
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let violations = Violations::default();
    let started = start(&kernel, &request, &policy, id, &violations)?;
    watch(&kernel, started, request, policy, violations, rings, stdio)
}

/// Gives a started command its handle, then its threads: one writes its
/// stdin, one pump per output stream, the monitor and the waiter (all from
/// the kernel's blocking pool).
fn watch(
    kernel: &Kernel,
    started: Started,
    request: GuardRequest,
    policy: GuardPolicy,
    violations: Violations,
    rings: [Option<Arc<crate::ring::Ring>>; 2],
    stdio: Stdio,
) -> KernelResult<(u32, u32)> {
    let Started {
        mut spawned,
        isolation,
        at,
        tree,
    } = started;
    let stop = Arc::new(Stopper::new(
        spawned.pid,
        Arc::clone(&spawned.reaped),
        violations,
        #[cfg(windows)]
        spawned.job.take(),
    ));
    let outcome = Arc::new(Outcome::default());
    let tree = Arc::new(tree);
    let pid = spawned.pid;
    let handle = PROCESSES.insert(Arc::new(Guarded {
        kernel_id: kernel.id(),
        stop: Arc::clone(&stop),
        outcome: Arc::clone(&outcome),
        tree: Arc::clone(&tree),
        pid,
        at,
    }))?;
    let runtime = kernel.runtime_handle()?;

    if let Some(stdin) = spawned.stdin.take() {
        let input = stdio.stdin.unwrap_or(Input::Bytes(request.stdin));
        input::start(&runtime, stdin, input);
    }
    let collect = request.collect_output;
    let output = output::start(
        &runtime,
        [spawned.stdout.take(), spawned.stderr.take()],
        rings,
        policy::output_limit(&policy, collect),
        collect,
        &stop,
        stdio.stdout,
    );
    let done = Arc::new(AtomicBool::new(false));
    let limits = Limits {
        timeout_ms: policy.timeout_ms,
        max_cpu_ms: policy.max_cpu_ms,
    };
    monitor::start(
        &runtime,
        limits,
        at,
        Arc::clone(&tree),
        Arc::clone(&stop),
        Arc::clone(&done),
    );
    waiter::start(
        &runtime,
        Waiting {
            wait: spawned.wait,
            tree,
            stop,
            output,
            isolation,
            started: at,
            done,
            max_cpu_ms: policy.max_cpu_ms,
            outcome,
            events: Arc::clone(kernel.events()),
            handle,
        },
    );
    Ok((handle, pid))
}

/// Kills every guarded process of a kernel (on kernel close), zombie-free:
/// their waiter threads reap them.
pub fn release_owned(kernel_id: u64) {
    for process in PROCESSES.drain_where(|process| process.kernel_id == kernel_id) {
        process.stop.kill(None);
    }
}

/// Starts `request` (an encoded `krepis.v1.GuardRequest`) under the guard.
/// stdout/stderr go to the given kernel → JS rings (0 = discard). Writes the
/// process handle to `out_handle`.
///
/// # Safety
/// `request` must point to `request_len` readable bytes; `out_handle` to one u32.
#[no_mangle]
pub unsafe extern "C" fn krepis_guard_spawn(
    kernel: u32,
    request: *const u8,
    request_len: u32,
    stdout_ring: u32,
    stderr_ring: u32,
    out_handle: *mut u32,
) -> i32 {
    call("krepis_guard_spawn", || {
        if out_handle.is_null() || !out_handle.is_aligned() {
            return Err(KernelError::invalid_argument(
                "out_handle must point to one aligned u32",
            ));
        }
        // SAFETY: forwarded from this function's contract.
        let bytes = unsafe { in_bytes(request, request_len, "request")? };
        let request = GuardRequest::decode(bytes).map_err(|error| {
            KernelError::invalid_argument(format!("not a krepis.v1.GuardRequest: {error}"))
        })?;
        let (handle, _) = spawn_with(kernel, request, stdout_ring, stderr_ring, Stdio::default())?;
        // SAFETY: checked non-null and aligned above.
        unsafe { out_handle.write(handle) };
        Ok(0)
    })
}

/// The result of a guarded process that ended: writes its
/// `krepis.v1.GuardResult` into `out` and returns its length (more than
/// `cap`: nothing written, ask again with a buffer that large), or 0 while
/// it still runs. Never blocks: an `EVENT_GUARD` with the process handle
/// announces the result.
///
/// # Safety
/// `out` must point to `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_guard_result(process: u32, out: *mut u8, cap: u32) -> i32 {
    call("krepis_guard_result", || {
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { out_bytes(out, cap, "out")? };
        let process = PROCESSES.get(process)?;
        process
            .outcome
            .read(|result| write_out(result, out))
            .unwrap_or(Ok(0))
    })
}

/// Kills a guarded process and its whole tree (idempotent).
#[no_mangle]
pub extern "C" fn krepis_guard_kill(process: u32) -> i32 {
    call("krepis_guard_kill", || {
        PROCESSES.get(process)?.stop.kill(None);
        Ok(0)
    })
}

/// Releases a guarded process handle (killing it if it still runs).
#[no_mangle]
pub extern "C" fn krepis_guard_close(process: u32) -> i32 {
    call("krepis_guard_close", || {
        let process = PROCESSES.remove(process)?;
        if !process.outcome.is_published() {
            process.stop.kill(None);
        }
        Ok(0)
    })
}

/// The usage of a running guarded process so far: writes a
/// `krepis.v1.GuardUsage` (wall time, the tree's CPU time, the first
/// process's resident memory now; 0 where the OS does not tell) into `out`
/// and returns its length (more than `cap`: nothing written).
///
/// # Safety
/// `out` must point to `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_guard_usage(process: u32, out: *mut u8, cap: u32) -> i32 {
    call("krepis_guard_usage", || {
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { out_bytes(out, cap, "out")? };
        let process = PROCESSES.get(process)?;
        let running = !process.outcome.is_published();
        let usage = GuardUsage {
            wall_ms: process.at.elapsed().as_millis() as u64,
            cpu_ms: if running {
                process.tree.cpu_ms().unwrap_or(0)
            } else {
                0
            },
            max_rss_bytes: 0,
            rss_bytes: if running {
                tree::rss_bytes(process.pid).unwrap_or(0)
            } else {
                0
            },
        };
        write_out(&usage.encode_to_vec(), out)
    })
}
