//! Starting a guarded command on a Unix other than Linux (macOS): through
//! `std::process`, in a new session (so a kill reaches its process group)
//! with a CPU rlimit for `maxCpuMs`. The Linux layers are reported as not
//! available; timeouts and output limits are enforced as everywhere.

use super::policy::check_required;
use super::spawned::{start_error, std_command, Spawned, Started};
use super::stopper::Violations;
use super::tree::Tree;
use crate::error::KernelResult;
use crate::kernel::Kernel;
use crate::proto::{GuardIsolation, GuardPolicy, GuardRequest};
use std::os::unix::process::CommandExt;
use std::time::Instant;

/// Starts `request` under `policy` (`_kernel`, `_id` and `_violations` serve
/// the Linux sandbox only).
pub fn start(
    _kernel: &Kernel,
    request: &GuardRequest,
    policy: &GuardPolicy,
    _id: u64,
    _violations: &Violations,
) -> KernelResult<Started> {
    let mut command = std_command(request, policy);
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
    // SAFETY: these calls have no preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let mut isolation = GuardIsolation {
        applied: vec!["session".into(), "rlimits".into()],
        not_applied: [
            "setuid",
            "user_namespace",
            "no_new_privs",
            "landlock",
            "seccomp",
            "net_namespace",
            "cgroup_pids",
            "cgroup_memory",
        ]
        .iter()
        .map(|name| format!("{name}: not available on this OS"))
        .collect(),
        run_as: Some(crate::proto::GuardIdentity { uid, gid }),
    };
    if uid == 0 {
        let why = "no_root: the host runs as root and this OS has no privilege drop in the guard";
        isolation.not_applied.push(why.into());
    } else {
        isolation.applied.push("no_root".into());
    }
    check_required(policy, &isolation)?;
    let at = Instant::now();
    let child = command
        .spawn()
        .map_err(|error| start_error(&request.cmd, error))?;
    let spawned = Spawned::from_std(child);
    let tree = Tree::new(spawned.pid);
    Ok(Started {
        spawned,
        isolation,
        at,
        tree,
    })
}
