//! The guard: runs a command the application must not trust in a child
//! process with limits the kernel enforces (timeout, CPU, output, memory,
//! processes) and, on Linux, the isolation of [`sandbox`]. stdout and
//! stderr stream to JS through kernel → JS rings; the result (exit status,
//! usage, violations, the isolation actually applied) comes from one
//! `nonblocking` wait.
//!
//! Every guarded process gets its own process group (session), so a kill
//! reaches its whole tree; on Linux the cgroups catch children that start
//! their own session, and on Windows a job object holds the tree.

#[cfg(target_os = "linux")]
mod access;
#[cfg(target_os = "linux")]
mod cgroup;
#[cfg(target_os = "linux")]
mod child;
#[cfg(target_os = "linux")]
mod landlock;
#[cfg(target_os = "linux")]
mod netns;
#[cfg(target_os = "linux")]
mod reap;
#[cfg(target_os = "linux")]
pub mod sandbox;
#[cfg(target_os = "linux")]
mod seccomp;
#[cfg(target_os = "linux")]
mod supervisor;

use crate::boundary::{call, in_bytes, out_bytes, write_out};
use crate::error::{KernelError, KernelResult};
use crate::handles::{HandleKind, HandleTable};
use crate::proto::{
    ErrorCode, GuardIsolation, GuardRequest, GuardResult, GuardUsage, GuardViolation,
};
use crate::ring::{ring, Producer, Ring, RING_RECORD_HEADER_BYTES};
use prost::Message;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

static PROCESSES: HandleTable<Guarded> = HandleTable::new(HandleKind::Guard);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
/// `run()` collects output in memory: at most this much per stream unless
/// `maxOutputBytes` says otherwise.
const COLLECT_LIMIT_BYTES: u64 = 64 << 20;

/// A guarded process, as its handle holds it.
pub struct Guarded {
    kernel_id: u64,
    stop: Arc<Stopper>,
    /// The encoded `GuardResult` once the command ended: encoded once, since
    /// JS may read it twice (a first buffer too small for collected output).
    result: Mutex<Option<Vec<u8>>>,
    finished: Condvar,
}

/// Kills the whole tree, once, remembering why.
struct Stopper {
    #[cfg_attr(windows, allow(dead_code))]
    pid: u32,
    killed: AtomicBool,
    /// Set (under the lock) once the command's pid has been reaped.
    reaped: Arc<Mutex<bool>>,
    violations: Arc<Mutex<Vec<GuardViolation>>>,
    #[cfg(windows)]
    job: Option<windows::Job>,
}

impl Stopper {
    /// Adds a violation to the command's result.
    fn record(&self, kind: &str, detail: impl Into<String>) {
        self.violations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(GuardViolation {
                kind: kind.into(),
                detail: detail.into(),
            });
    }

    fn kill(&self, kind: Option<(&str, String)>) {
        if let Some((kind, detail)) = kind {
            self.record(kind, detail);
        }
        if self.killed.swap(true, Ordering::SeqCst) {
            return;
        }
        // Held while signalling: once the command is reaped its pid may be
        // recycled, and the reaper sets the flag under this same lock.
        let reaped = self.reaped.lock().unwrap_or_else(|p| p.into_inner());
        if *reaped {
            return;
        }
        #[cfg(unix)]
        // SAFETY: signalling a process group has no memory-safety preconditions.
        unsafe {
            libc::kill(-(self.pid as i32), libc::SIGKILL);
            libc::kill(self.pid as i32, libc::SIGKILL);
        }
        #[cfg(windows)]
        if let Some(job) = &self.job {
            job.terminate();
        }
    }
}

#[cfg(windows)]
mod windows {
    use windows_sys::Win32::Foundation::{CloseHandle, HANDLE};
    use windows_sys::Win32::System::JobObjects::{
        AssignProcessToJobObject, CreateJobObjectW, JobObjectExtendedLimitInformation,
        SetInformationJobObject, TerminateJobObject, JOBOBJECT_EXTENDED_LIMIT_INFORMATION,
        JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
    };

    /// A job object that kills every process in it when closed.
    pub struct Job(HANDLE);
    // SAFETY: a job handle may be used from any thread.
    unsafe impl Send for Job {}
    // SAFETY: as above; the calls used are thread-safe.
    unsafe impl Sync for Job {}

    impl Job {
        pub fn for_process(process: HANDLE) -> Option<Job> {
            // SAFETY: plain Win32 calls on handles we own or were given.
            unsafe {
                let job = CreateJobObjectW(std::ptr::null(), std::ptr::null());
                if job.is_null() {
                    return None;
                }
                let mut info: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = std::mem::zeroed();
                info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
                SetInformationJobObject(
                    job,
                    JobObjectExtendedLimitInformation,
                    &info as *const _ as *const _,
                    std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
                );
                if AssignProcessToJobObject(job, process) == 0 {
                    CloseHandle(job);
                    return None;
                }
                Some(Job(job))
            }
        }

        pub fn terminate(&self) {
            // SAFETY: the handle is valid until drop.
            unsafe { TerminateJobObject(self.0, 1) };
        }
    }

    impl Drop for Job {
        fn drop(&mut self) {
            // SAFETY: closed once; KILL_ON_JOB_CLOSE ends any leftover process.
            unsafe { CloseHandle(self.0) };
        }
    }
}

/// Writes one process output stream into a ring, up to `limit` bytes.
/// Returns whether it had to truncate.
fn pump(
    mut source: impl Read,
    ring: Option<Arc<Ring>>,
    limit: u64,
    stop: &Stopper,
    name: &str,
    runtime: &tokio::runtime::Handle,
    sink: Option<&Mutex<Vec<u8>>>,
) -> bool {
    let mut producer = ring.map(Producer::new);
    let max_chunk = producer.as_ref().map_or(64 * 1024, |p| {
        (p.capacity() - RING_RECORD_HEADER_BYTES).min(64 * 1024) as usize
    });
    let mut buffer = vec![0u8; max_chunk];
    let mut total = 0u64;
    loop {
        let read = match source.read(&mut buffer) {
            Ok(0) | Err(_) => return false,
            Ok(read) => read,
        };
        let allowed = if limit == 0 {
            read as u64
        } else {
            (limit - total.min(limit)).min(read as u64)
        };
        if let Some(sink) = sink {
            sink.lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(&buffer[..allowed as usize]);
        }
        if let Some(producer) = producer.as_mut() {
            if allowed > 0 {
                match runtime.block_on(producer.reserve(allowed as u32, 0)) {
                    Ok(Some(slot)) => {
                        // SAFETY: `allowed` bytes were reserved at `slot`.
                        unsafe {
                            std::ptr::copy_nonoverlapping(buffer.as_ptr(), slot, allowed as usize)
                        };
                        producer.publish();
                    }
                    _ => {
                        // The reader went away: keep draining so the child never blocks.
                    }
                }
            }
        }
        total += read as u64;
        if limit != 0 && total > limit {
            stop.kill(Some((
                "output",
                format!("{name} exceeded maxOutputBytes ({limit} bytes)"),
            )));
            return true;
        }
    }
}

#[cfg(unix)]
fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGSYS => "SIGSYS".into(),
        libc::SIGXCPU => "SIGXCPU".into(),
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGABRT => "SIGABRT".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGPIPE => "SIGPIPE".into(),
        other => format!("SIG{other}"),
    }
}

/// CPU time of a running process (Linux), in ms.
fn cpu_ms(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    #[cfg(unix)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    #[cfg(not(unix))]
    let hz = 100;
    Some(ticks * 1000 / hz)
}

/// A started command, whichever way it was started.
struct Spawned {
    pid: u32,
    /// Shared with the reaper: see `Stopper::reaped`.
    reaped: Arc<Mutex<bool>>,
    stdin: Option<Box<dyn Write + Send>>,
    stdout: Option<Box<dyn Read + Send>>,
    stderr: Option<Box<dyn Read + Send>>,
    /// Blocks until the command exits: exit code, signal, CPU ms, max RSS bytes.
    wait: Waiter,
    #[cfg(windows)]
    job: Option<windows::Job>,
}

/// Exit code, signal, CPU ms, max RSS bytes, and whether group members were left.
type Waited = (Option<i32>, Option<i32>, u64, u64, bool);
type Waiter = Box<dyn FnOnce() -> std::io::Result<Waited> + Send>;

impl Spawned {
    #[cfg(not(target_os = "linux"))]
    fn from_std(mut child: std::process::Child) -> Spawned {
        #[cfg(windows)]
        let job = {
            use std::os::windows::io::AsRawHandle;
            windows::Job::for_process(child.as_raw_handle() as _)
        };
        let reaped: Arc<Mutex<bool>> = Arc::default();
        let reaper = Arc::clone(&reaped);
        Spawned {
            pid: child.id(),
            reaped,
            stdin: child
                .stdin
                .take()
                .map(|s| Box::new(s) as Box<dyn Write + Send>),
            stdout: child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            stderr: child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            wait: Box::new(move || {
                let status = child.wait()?;
                *reaper.lock().unwrap_or_else(|p| p.into_inner()) = true;
                #[cfg(unix)]
                let signal = std::os::unix::process::ExitStatusExt::signal(&status);
                #[cfg(not(unix))]
                let signal = None;
                Ok((status.code(), signal, 0, 0, false))
            }),
            #[cfg(windows)]
            job,
        }
    }
}

/// Finds `cmd` on `PATH` (from the command's env, else the kernel's) unless it is a path.
#[cfg(target_os = "linux")]
fn resolve(
    cmd: &str,
    env: &std::collections::HashMap<String, String>,
) -> Option<std::path::PathBuf> {
    if cmd.contains('/') {
        return Some(std::path::PathBuf::from(cmd));
    }
    let path = env
        .get("PATH")
        .cloned()
        .or_else(|| std::env::var("PATH").ok())?;
    path.split(':')
        .map(|dir| std::path::Path::new(dir).join(cmd))
        .find(|candidate| {
            std::fs::metadata(candidate).is_ok_and(|meta| {
                use std::os::unix::fs::PermissionsExt;
                meta.is_file() && meta.permissions().mode() & 0o111 != 0
            })
        })
}

fn spawn(
    kernel_handle: u32,
    request: GuardRequest,
    stdout_ring: u32,
    stderr_ring: u32,
) -> KernelResult<u32> {
    let kernel = crate::kernel::kernel(kernel_handle)?;
    let policy = request.policy.clone().unwrap_or_default();
    for (field, paths) in [
        ("policy.read", &policy.read),
        ("policy.write", &policy.write),
    ] {
        if let Some(relative) = paths
            .iter()
            .find(|path| !std::path::Path::new(path).is_absolute())
        {
            return Err(KernelError::invalid_argument(format!(
                "{field} must hold absolute paths, got {relative:?}"
            ))
            .with_detail("field", field));
        }
    }
    if request.cmd.is_empty() {
        return Err(
            KernelError::invalid_argument("cmd must not be empty").with_detail("field", "cmd")
        );
    }
    let rings = [stdout_ring, stderr_ring].map(|handle| {
        if handle == 0 {
            Ok(None)
        } else {
            ring(handle).map(Some)
        }
    });
    let [stdout_ring, stderr_ring] = rings;
    let (stdout_ring, stderr_ring) = (stdout_ring?, stderr_ring?);
    for ring in [&stdout_ring, &stderr_ring].into_iter().flatten() {
        ring.claim()?;
    }
    #[cfg_attr(not(target_os = "linux"), allow(unused_variables))]
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let mut command = Command::new(&request.cmd);
    command
        .args(&request.args)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if !request.cwd.is_empty() {
        command.current_dir(&request.cwd);
    }
    for (key, value) in &request.env {
        if policy.env_allow.is_empty() || policy.env_allow.contains(key) {
            command.env(key, value);
        }
    }
    // Windows cannot start most programs without these; they name system
    // directories, not secrets.
    #[cfg(windows)]
    for key in ["SystemRoot", "windir"] {
        if !request.env.contains_key(key) {
            if let Ok(value) = std::env::var(key) {
                command.env(key, value);
            }
        }
    }
    let violations: Arc<Mutex<Vec<GuardViolation>>> = Arc::default();
    #[allow(unused_mut, unused_assignments)]
    let mut isolation = GuardIsolation::default();

    #[cfg(target_os = "linux")]
    let sandbox = {
        use std::os::unix::process::CommandExt;
        let sandbox = Arc::new(sandbox::Sandbox::prepare(&policy, id));
        isolation = sandbox.isolation.clone();
        let inside = Arc::clone(&sandbox);
        // SAFETY: `enter` only makes system calls on values prepared above.
        unsafe { command.pre_exec(move || inside.enter()) };
        sandbox
    };
    #[cfg(all(unix, not(target_os = "linux")))]
    {
        use std::os::unix::process::CommandExt;
        let cpu_seconds = policy.max_cpu_ms.div_ceil(1000);
        // SAFETY: only async-signal-safe system calls between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if cpu_seconds > 0 {
                    let limit = libc::rlimit {
                        rlim_cur: cpu_seconds,
                        rlim_max: cpu_seconds + 1,
                    };
                    libc::setrlimit(libc::RLIMIT_CPU, &limit);
                }
                Ok(())
            })
        };
        isolation.applied = vec!["session".into(), "rlimits".into()];
        isolation.not_applied = [
            "no_new_privs",
            "landlock",
            "seccomp",
            "net_namespace",
            "cgroup_pids",
            "cgroup_memory",
        ]
        .iter()
        .map(|name| format!("{name}: not available on this OS"))
        .collect();
    }
    #[cfg(windows)]
    {
        // Reported after spawn, once the job object exists.
        isolation.applied = Vec::new();
        isolation.not_applied = [
            "session",
            "no_new_privs",
            "rlimits",
            "landlock",
            "seccomp",
            "net_namespace",
            "cgroup_pids",
            "cgroup_memory",
        ]
        .iter()
        .map(|name| format!("{name}: not available on this OS"))
        .collect();
    }
    for required in &policy.require {
        if !isolation.applied.iter().any(|applied| applied == required) {
            let why = isolation
                .not_applied
                .iter()
                .find(|line| line.starts_with(&format!("{required}:")))
                .cloned()
                .unwrap_or_else(|| format!("{required}: unknown isolation feature"));
            #[cfg(target_os = "linux")]
            sandbox.cleanup();
            return Err(
                KernelError::new(ErrorCode::Unsupported, format!("policy.require: {why}"))
                    .with_detail("feature", required.clone()),
            );
        }
    }

    let started = Instant::now();
    let start_error = |error: std::io::Error| {
        let code = match error.kind() {
            std::io::ErrorKind::NotFound => ErrorCode::NotFound,
            std::io::ErrorKind::PermissionDenied => ErrorCode::Permission,
            _ => ErrorCode::Io,
        };
        KernelError::new(code, format!("cannot start {}: {error}", request.cmd))
            .with_detail("cmd", request.cmd.clone())
    };

    #[cfg(target_os = "linux")]
    let (spawned, sandbox) = {
        use std::ffi::CString;
        drop(command);
        let env: std::collections::HashMap<String, String> = request
            .env
            .iter()
            .filter(|(key, _)| policy.env_allow.is_empty() || policy.env_allow.contains(key))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        let to_c = |text: &str, field: &str| {
            CString::new(text).map_err(|_| {
                KernelError::invalid_argument(format!("{field} must not contain NUL bytes"))
                    .with_detail("field", field.to_owned())
            })
        };
        let prepared = (|| -> KernelResult<_> {
            let path = resolve(&request.cmd, &env)
                .ok_or_else(|| start_error(std::io::Error::from(std::io::ErrorKind::NotFound)))?;
            let path = to_c(&path.to_string_lossy(), "cmd")?;
            let mut argv = vec![to_c(&request.cmd, "cmd")?];
            for arg in &request.args {
                argv.push(to_c(arg, "args")?);
            }
            let envp = env
                .iter()
                .map(|(key, value)| to_c(&format!("{key}={value}"), "env"))
                .collect::<KernelResult<Vec<_>>>()?;
            let cwd = if request.cwd.is_empty() {
                None
            } else {
                Some(to_c(&request.cwd, "cwd")?)
            };
            Ok((path, argv, envp, cwd))
        })();
        let (path, argv, envp, cwd) = match prepared {
            Ok(prepared) => prepared,
            Err(error) => {
                sandbox.cleanup();
                return Err(error);
            }
        };
        let enter = || {
            // SAFETY: runs in the child between clone and exec, which is what
            // `enter` requires; it only makes system calls on values prepared above.
            unsafe { sandbox.enter() }
        };
        let child = match child::spawn(&path, &argv, &envp, cwd.as_ref(), &enter) {
            Ok(child) => child,
            Err(error) => {
                sandbox.cleanup();
                return Err(start_error(error));
            }
        };
        let mut owned = Arc::try_unwrap(sandbox)
            .unwrap_or_else(|_| unreachable!("only this function holds it"));
        owned.spawned();
        let lost = owned.settle();
        isolation = owned.isolation.clone();
        if let Some(required) = lost.iter().find(|name| policy.require.contains(name)) {
            // SAFETY: killing and reaping our own child has no memory-safety preconditions.
            unsafe {
                libc::kill(child.pid, libc::SIGKILL);
                libc::waitpid(child.pid, std::ptr::null_mut(), 0);
            }
            owned.cleanup();
            return Err(KernelError::new(
                ErrorCode::Unsupported,
                format!("policy.require: {required}: refused by this host"),
            )
            .with_detail("feature", required.clone()));
        }
        let listener = owned
            .listener_rx
            .take()
            .and_then(|rx| child::receive_fd(&rx));
        let sandbox = Arc::new(owned);
        if let Some(listener) = listener {
            let (access, violations) = (Arc::clone(&sandbox.access), Arc::clone(&violations));
            // Threads of the kernel's blocking pool are reused: starting a
            // guarded command costs no thread creation.
            kernel
                .runtime_handle()?
                .spawn_blocking(move || supervisor::supervise(listener, access, violations));
        }
        let pid = child.pid;
        let tracked = sandbox
            .cgroups
            .pids
            .as_ref()
            .map(|dir| dir.join("cgroup.procs"));
        let reaped: Arc<Mutex<bool>> = Arc::default();
        let reaper = Arc::clone(&reaped);
        let spawned = Spawned {
            pid: pid as u32,
            reaped,
            stdin: Some(Box::new(child.stdin)),
            stdout: Some(Box::new(child.stdout)),
            stderr: Some(Box::new(child.stderr)),
            wait: Box::new(move || {
                let (status, usage, orphans) = reap::wait(pid, tracked.as_deref(), &reaper)?;
                let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
                let signal = libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status));
                let cpu =
                    |time: libc::timeval| time.tv_sec as u64 * 1000 + time.tv_usec as u64 / 1000;
                Ok((
                    code,
                    signal,
                    cpu(usage.ru_utime) + cpu(usage.ru_stime),
                    usage.ru_maxrss as u64 * 1024,
                    orphans,
                ))
            }),
        };
        (spawned, Some(sandbox))
    };
    #[cfg(not(target_os = "linux"))]
    let (spawned, sandbox) = {
        let child = command.spawn().map_err(start_error)?;
        let spawned = Spawned::from_std(child);
        #[cfg(windows)]
        if spawned.job.is_some() {
            isolation.applied.push("job_object".into());
        } else {
            isolation.not_applied.push(
                "job_object: could not be created; only the command itself can be killed".into(),
            );
        }
        (spawned, None)
    };
    finish_spawn(
        kernel.as_ref(),
        spawned,
        request,
        policy,
        violations,
        isolation,
        started,
        stdout_ring,
        stderr_ring,
        sandbox,
    )
}

#[cfg(target_os = "linux")]
type SandboxRef = Option<Arc<sandbox::Sandbox>>;
#[cfg(not(target_os = "linux"))]
type SandboxRef = Option<()>;

#[allow(clippy::too_many_arguments)]
fn finish_spawn(
    kernel: &crate::kernel::Kernel,
    mut child: Spawned,
    request: GuardRequest,
    policy: crate::proto::GuardPolicy,
    violations: Arc<Mutex<Vec<GuardViolation>>>,
    isolation: GuardIsolation,
    started: Instant,
    stdout_ring: Option<Arc<Ring>>,
    stderr_ring: Option<Arc<Ring>>,
    #[cfg_attr(not(target_os = "linux"), allow(unused_variables))] sandbox: SandboxRef,
) -> KernelResult<u32> {
    let pid = child.pid;
    #[cfg(windows)]
    let job = child.job.take();
    let stop = Arc::new(Stopper {
        pid,
        killed: AtomicBool::new(false),
        reaped: Arc::clone(&child.reaped),
        violations: Arc::clone(&violations),
        #[cfg(windows)]
        job,
    });
    let guarded = Arc::new(Guarded {
        kernel_id: kernel.id(),
        stop: Arc::clone(&stop),
        result: Mutex::new(None),
        finished: Condvar::new(),
    });
    let handle = PROCESSES.insert(Arc::clone(&guarded))?;
    let runtime = kernel.runtime_handle()?;

    // stdin: written from a thread, then closed.
    if let Some(mut stdin) = child.stdin.take() {
        let input = request.stdin.clone();
        runtime.spawn_blocking(move || {
            let _ = stdin.write_all(&input);
        });
    }
    let collect = request.collect_output;
    let limit = match (policy.max_output_bytes, collect) {
        // Collected output lives in memory: bounded even without a policy.
        (0, true) => COLLECT_LIMIT_BYTES,
        (limit, _) => limit,
    };
    // Pumps report through a std channel (tokio timers die with the runtime
    // on kernel close); collected output accumulates in shared buffers, so
    // whatever was read is kept even if a pump never finishes.
    let sinks: Arc<[Mutex<Vec<u8>>; 2]> = Arc::default();
    let truncated: Arc<[AtomicBool; 2]> = Arc::default();
    let (pumped, pumps_done) = std::sync::mpsc::channel::<()>();
    for (index, (source, ring, name)) in [
        (child.stdout.take(), stdout_ring, "stdout"),
        (child.stderr.take(), stderr_ring, "stderr"),
    ]
    .into_iter()
    .enumerate()
    {
        let (stop, pump_runtime) = (Arc::clone(&stop), runtime.clone());
        let (sinks, truncated, pumped) =
            (Arc::clone(&sinks), Arc::clone(&truncated), pumped.clone());
        runtime.spawn_blocking(move || {
            if let Some(source) = source {
                let sink = collect.then(|| &sinks[index]);
                if pump(
                    source,
                    ring.clone(),
                    limit,
                    &stop,
                    name,
                    &pump_runtime,
                    sink,
                ) {
                    truncated[index].store(true, Ordering::SeqCst);
                }
            }
            if let Some(ring) = ring {
                ring.close();
            }
            let _ = pumped.send(());
        });
    }
    drop(pumped);

    // The monitor: timeout, CPU (precise on Linux), cgroup limits.
    let monitor_stop = Arc::clone(&stop);
    let done = Arc::new(AtomicBool::new(false));
    let monitor_done = Arc::clone(&done);
    #[cfg(target_os = "linux")]
    let monitor_sandbox = sandbox.clone();
    runtime.spawn_blocking(move || {
        while !monitor_done.load(Ordering::SeqCst) {
            let elapsed = started.elapsed();
            if policy.timeout_ms > 0 && elapsed >= Duration::from_millis(policy.timeout_ms) {
                monitor_stop.kill(Some((
                    "timeout",
                    format!("still running after timeoutMs ({} ms)", policy.timeout_ms),
                )));
                return;
            }
            if policy.max_cpu_ms > 0 {
                // The whole tree's CPU time where a cpu cgroup tracks it.
                #[cfg(target_os = "linux")]
                let used = monitor_sandbox
                    .as_ref()
                    .and_then(|s| s.cgroups.tree_cpu_ms())
                    .or_else(|| cpu_ms(pid));
                #[cfg(not(target_os = "linux"))]
                let used = cpu_ms(pid);
                if let Some(used) = used {
                    if used > policy.max_cpu_ms {
                        monitor_stop.kill(Some((
                            "cpu",
                            format!("used {used} ms of CPU, maxCpuMs is {}", policy.max_cpu_ms),
                        )));
                        return;
                    }
                }
            }
            #[cfg(target_os = "linux")]
            if let Some(sandbox) = &monitor_sandbox {
                let found = sandbox.cgroups.violations();
                if let Some(first) = found.into_iter().next() {
                    monitor_stop.kill(Some((first.kind.as_str(), first.detail)));
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });

    // The waiter: reaps the child, cleans up the tree, builds the result.
    let waiter = Arc::clone(&guarded);
    let wait = child.wait;
    runtime.spawn_blocking(move || {
        // Whatever happens below (even a panic), the cgroups are removed.
        #[cfg(target_os = "linux")]
        let _cleanup = CleanupOnDrop(sandbox.clone());
        let status = wait();
        done.store(true, Ordering::SeqCst);
        let wall_ms = started.elapsed().as_millis() as u64;
        let mut result = GuardResult::default();
        let (mut cpu_ms, mut max_rss_bytes) = (0, 0);
        let left_orphans = matches!(&status, Ok((_, _, _, _, true)));
        #[cfg(windows)]
        let _ = left_orphans; // the job object holds the tree on Windows
        match &status {
            Ok((code, signal, cpu, rss, _)) => {
                result.code = code.unwrap_or(-1);
                (cpu_ms, max_rss_bytes) = (*cpu, *rss);
                #[cfg(not(unix))]
                let _ = signal;
                #[cfg(unix)]
                {
                    if let Some(signal) = *signal {
                        result.signal = signal_name(signal);
                        if signal == libc::SIGSYS {
                            let kind = if policy.net { "syscall" } else { "net" };
                            stop.record(kind, "killed by seccomp: a forbidden system call (an IPv4/IPv6 socket with net: false, or ptrace/mount/kexec/bpf)");
                        }
                        if signal == libc::SIGXCPU && !stop.killed.load(Ordering::SeqCst) {
                            stop.record("cpu", format!("exceeded maxCpuMs ({} ms)", policy.max_cpu_ms));
                        }
                    }
                }
            }
            Err(error) => result.signal = format!("wait failed: {error}"),
        }
        // Anything of the tree still alive is an orphan: stop it.
        #[cfg(unix)]
        {
            // Linux: the group was checked (and killed) before the leader was
            // reaped, so no recycled pid can be hit; the cgroups catch
            // processes that left the group. Other Unixes: probe the group now.
            #[cfg(target_os = "linux")]
            let alive = left_orphans || sandbox.as_ref().is_some_and(|s| s.cgroups.kill_all() > 0);
            #[cfg(not(target_os = "linux"))]
            // SAFETY: probing a process group is memory-safe.
            let alive = left_orphans || unsafe { libc::kill(-(pid as i32), 0) } == 0;
            if alive {
                stop.record(
                    "orphans",
                    "processes were left running after the command exited; they were killed",
                );
                #[cfg(not(target_os = "linux"))]
                // SAFETY: signalling a process group is memory-safe.
                unsafe {
                    libc::kill(-(pid as i32), libc::SIGKILL)
                };
            }
        }
        #[cfg(windows)]
        if let Some(job) = &stop.job {
            job.terminate();
        }
        #[cfg(target_os = "linux")]
        if let Some(sandbox) = &sandbox {
            for violation in sandbox.cgroups.violations() {
                let mut list = stop.violations.lock().unwrap_or_else(|p| p.into_inner());
                if !list.iter().any(|v| v.kind == violation.kind) {
                    list.push(violation);
                }
            }
            sandbox.cgroups.kill_all();
        }
        // Collected output: wait (briefly) for the pumps. A process that
        // escaped every kill may still hold the output open; streamed output
        // is the reader's business and does not hold the result back.
        if collect {
            let deadline = Instant::now() + Duration::from_millis(500);
            for _ in 0..2 {
                let left = deadline.saturating_duration_since(Instant::now());
                if pumps_done.recv_timeout(left).is_err() {
                    stop.record(
                        "orphans",
                        "a process outside the command's reach kept its output open",
                    );
                    break;
                }
            }
        }
        result.stdout = std::mem::take(&mut *sinks[0].lock().unwrap_or_else(|p| p.into_inner()));
        result.stderr = std::mem::take(&mut *sinks[1].lock().unwrap_or_else(|p| p.into_inner()));
        result.stdout_truncated = truncated[0].load(Ordering::SeqCst);
        result.stderr_truncated = truncated[1].load(Ordering::SeqCst);
        result.usage = Some(GuardUsage {
            wall_ms,
            cpu_ms,
            max_rss_bytes,
        });
        result.violations = stop
            .violations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        result.isolation = Some(isolation);
        *waiter.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(result.encode_to_vec());
        waiter.finished.notify_all();
        // Removing the (now empty) cgroups happens when `_cleanup` drops,
        // after the result is published.
    });
    Ok(handle)
}

/// Removes a command's cgroups when dropped.
#[cfg(target_os = "linux")]
struct CleanupOnDrop(Option<Arc<sandbox::Sandbox>>);

#[cfg(target_os = "linux")]
impl Drop for CleanupOnDrop {
    fn drop(&mut self) {
        if let Some(sandbox) = &self.0 {
            sandbox.cleanup();
        }
    }
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
        let handle = spawn(kernel, request, stdout_ring, stderr_ring)?;
        // SAFETY: checked non-null and aligned above.
        unsafe { out_handle.write(handle) };
        Ok(0)
    })
}

/// [nonblocking] Waits up to `timeout_ms` for a guarded process to end and
/// writes its `krepis.v1.GuardResult` into `out`; returns its length, or 0
/// when it is still running.
///
/// # Safety
/// `out` must point to `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn krepis_guard_wait(
    process: u32,
    timeout_ms: u32,
    out: *mut u8,
    cap: u32,
) -> i32 {
    call("krepis_guard_wait", || {
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { out_bytes(out, cap, "out")? };
        let process = PROCESSES.get(process)?;
        let deadline = Instant::now() + Duration::from_millis(u64::from(timeout_ms));
        let mut result = process.result.lock().unwrap_or_else(|p| p.into_inner());
        while result.is_none() {
            let now = Instant::now();
            if now >= deadline {
                return Ok(0);
            }
            result = process
                .finished
                .wait_timeout(result, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        write_out(result.as_ref().expect("checked"), out)
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
        if process
            .result
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
        {
            process.stop.kill(None);
        }
        Ok(0)
    })
}
