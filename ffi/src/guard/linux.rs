//! Starting a guarded command on Linux, step by step: prepare its
//! [`Sandbox`] and check `require` against it; turn the command, its args,
//! env and cwd into C strings and find the program on `PATH`; start the raw
//! child, which enters the sandbox before `exec`; settle what the child
//! could not apply (refusing the command if `require` named it); start the
//! supervisor on the seccomp listener the child sent back; and wait for the
//! command through [`reap`](super::reap), which never signals a recycled pid.

use super::child::{self, RawChild};
use super::policy::{check_required, passes_env};
use super::sandbox::Sandbox;
use super::spawned::{start_error, Spawned, Started};
use super::stopper::Violations;
use super::tree::Tree;
use super::{reap, supervisor};
use crate::error::{KernelError, KernelResult};
use crate::kernel::Kernel;
use crate::proto::{ErrorCode, GuardPolicy, GuardRequest};
use std::collections::HashMap;
use std::ffi::CString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Starts `request` under `policy` in its sandbox; `id` names its cgroups,
/// and the supervisor records file violations into `violations`.
pub fn start(
    kernel: &Kernel,
    request: &GuardRequest,
    policy: &GuardPolicy,
    id: u64,
    violations: &Violations,
) -> KernelResult<Started> {
    let sandbox = Sandbox::prepare(policy, id);
    if let Err(error) = check_required(policy, &sandbox.isolation) {
        sandbox.cleanup();
        return Err(error);
    }
    let at = Instant::now();
    let exec = match Exec::prepare(request, policy) {
        Ok(exec) => exec,
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
    let child = match child::spawn(
        &exec.path,
        &exec.argv,
        &exec.envp,
        exec.cwd.as_ref(),
        &enter,
    ) {
        Ok(child) => child,
        Err(error) => {
            sandbox.cleanup();
            return Err(start_error(&request.cmd, error));
        }
    };
    let mut sandbox = settle(sandbox, &child, policy)?;
    start_supervisor(kernel, &mut sandbox, violations)?;
    let isolation = sandbox.isolation.clone();
    let pid = child.pid as u32;
    Ok(Started {
        spawned: spawned(child, &sandbox),
        isolation,
        at,
        tree: Tree::new(pid, sandbox),
    })
}

/// What `execve` gets: the program's path, argv, envp, and the directory to
/// change to first.
struct Exec {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: Option<CString>,
}

impl Exec {
    /// The C strings of `request` (with the env `policy` lets through), the
    /// program found on `PATH` unless `cmd` is a path.
    fn prepare(request: &GuardRequest, policy: &GuardPolicy) -> KernelResult<Exec> {
        let env: HashMap<String, String> = request
            .env
            .iter()
            .filter(|(key, _)| passes_env(policy, key))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        let to_c = |text: &str, field: &str| {
            CString::new(text).map_err(|_| {
                KernelError::invalid_argument(format!("{field} must not contain NUL bytes"))
                    .with_detail("field", field.to_owned())
            })
        };
        let path = resolve(&request.cmd, &env).ok_or_else(|| {
            start_error(
                &request.cmd,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )
        })?;
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
        Ok(Exec {
            path,
            argv,
            envp,
            cwd,
        })
    }
}

/// Finds `cmd` on `PATH` (from the command's env, else the kernel's) unless it is a path.
fn resolve(cmd: &str, env: &HashMap<String, String>) -> Option<PathBuf> {
    if cmd.contains('/') {
        return Some(PathBuf::from(cmd));
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

/// The child runs: the parent lets go of the child-only fds and learns which
/// layers the child could not apply. One that `require` names ends the
/// command (killed and reaped) with an `Unsupported` error.
fn settle(mut sandbox: Sandbox, child: &RawChild, policy: &GuardPolicy) -> KernelResult<Sandbox> {
    sandbox.spawned();
    let lost = sandbox.settle();
    if let Some(required) = lost.iter().find(|name| policy.require.contains(name)) {
        // SAFETY: killing and reaping our own child has no memory-safety preconditions.
        unsafe {
            libc::kill(child.pid, libc::SIGKILL);
            libc::waitpid(child.pid, std::ptr::null_mut(), 0);
        }
        sandbox.cleanup();
        return Err(KernelError::new(
            ErrorCode::Unsupported,
            format!("policy.require: {required}: refused by this host"),
        )
        .with_detail("feature", required.clone()));
    }
    Ok(sandbox)
}

/// Receives the seccomp listener the child sent (if it installed a filter)
/// and answers its notifications from the kernel's blocking pool, whose
/// threads are reused: starting a guarded command costs no thread creation.
fn start_supervisor(
    kernel: &Kernel,
    sandbox: &mut Sandbox,
    violations: &Violations,
) -> KernelResult<()> {
    let listener = sandbox
        .listener_rx
        .take()
        .and_then(|rx| child::receive_fd(&rx));
    if let Some(listener) = listener {
        let (access, violations) = (Arc::clone(&sandbox.access), Arc::clone(violations));
        kernel
            .runtime_handle()?
            .spawn_blocking(move || supervisor::supervise(listener, access, violations));
    }
    Ok(())
}

/// The started child as the guard sees it: its pipes, and a wait that
/// reaps it safely (tracking the tree through its pids cgroup, if any).
fn spawned(child: RawChild, sandbox: &Sandbox) -> Spawned {
    let pid = child.pid;
    let tracked = sandbox
        .cgroups
        .pids
        .as_ref()
        .map(|dir| dir.join("cgroup.procs"));
    let reaped: Arc<Mutex<bool>> = Arc::default();
    let reaper = Arc::clone(&reaped);
    Spawned {
        pid: pid as u32,
        reaped,
        stdin: Some(Box::new(child.stdin)),
        stdout: Some(Box::new(child.stdout)),
        stderr: Some(Box::new(child.stderr)),
        wait: Box::new(move || reap::wait(pid, tracked.as_deref(), &reaper)),
    }
}
