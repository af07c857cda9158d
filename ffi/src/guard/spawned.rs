//! A started command as the rest of the guard sees it, whichever way (and on
//! whichever OS) it was started: its pid, its pipes, a blocking wait that
//! returns how it ended ([`Exit`]), the isolation actually applied, and its
//! process [`Tree`]. Also what starting through `std::process` shares
//! between the OSes that do (everything but Linux), and the error a command
//! that cannot start gets.

use super::tree::Tree;
use crate::error::KernelError;
use crate::proto::{ErrorCode, GuardIsolation};
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[cfg(windows)]
use super::job::Job;
#[cfg(not(target_os = "linux"))]
use crate::proto::{GuardPolicy, GuardRequest};

/// How a command ended.
pub struct Exit {
    /// The exit code, when it exited on its own.
    pub code: Option<i32>,
    /// The signal that ended it (Unix).
    #[cfg_attr(not(unix), allow(dead_code))]
    pub signal: Option<i32>,
    pub cpu_ms: u64,
    pub max_rss_bytes: u64,
    /// Processes of its tree were still alive when it exited (Linux).
    pub left_orphans: bool,
}

/// Blocks until the command exits (and reaps it).
pub type Waiter = Box<dyn FnOnce() -> std::io::Result<Exit> + Send>;

/// A started command's process and pipes.
pub struct Spawned {
    pub pid: u32,
    /// Set (under the lock) once the command's pid has been reaped: killers
    /// check it first, so no signal reaches a recycled pid.
    pub reaped: Arc<Mutex<bool>>,
    pub stdin: Option<Box<dyn Write + Send>>,
    pub stdout: Option<Box<dyn Read + Send>>,
    pub stderr: Option<Box<dyn Read + Send>>,
    pub wait: Waiter,
    #[cfg(windows)]
    pub job: Option<Job>,
}

/// What a per-OS start returns.
pub struct Started {
    pub spawned: Spawned,
    /// The isolation layers applied, and why the others were not.
    pub isolation: GuardIsolation,
    /// When the command was started (its wall time counts from here).
    pub at: Instant,
    pub tree: Tree,
}

/// The error of a command that could not be started.
pub fn start_error(cmd: &str, error: std::io::Error) -> KernelError {
    let code = match error.kind() {
        std::io::ErrorKind::NotFound => ErrorCode::NotFound,
        std::io::ErrorKind::PermissionDenied => ErrorCode::Permission,
        _ => ErrorCode::Io,
    };
    KernelError::new(code, format!("cannot start {cmd}: {error}"))
        .with_detail("cmd", cmd.to_owned())
}

/// The command of `request` for `std::process`: its args, cwd and the env
/// `policy` lets through (nothing else), with piped stdio.
#[cfg(not(target_os = "linux"))]
pub fn std_command(request: &GuardRequest, policy: &GuardPolicy) -> std::process::Command {
    use std::process::Stdio;
    let mut command = std::process::Command::new(&request.cmd);
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
        if super::policy::passes_env(policy, key) {
            command.env(key, value);
        }
    }
    command
}

#[cfg(not(target_os = "linux"))]
impl Spawned {
    /// A command started by `std::process` (on Windows, put in a job object).
    pub fn from_std(mut child: std::process::Child) -> Spawned {
        #[cfg(windows)]
        let job = {
            use std::os::windows::io::AsRawHandle;
            Job::for_process(child.as_raw_handle() as _)
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
                Ok(Exit {
                    code: status.code(),
                    signal,
                    cpu_ms: 0,
                    max_rss_bytes: 0,
                    left_orphans: false,
                })
            }),
            #[cfg(windows)]
            job,
        }
    }
}
