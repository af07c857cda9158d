//! Starting a guarded command on Windows: through `std::process`, with the
//! two variables that name system directories (most programs cannot start
//! without them), then put in a job object that holds its tree. Only the
//! job object is reported as applied, once it exists; timeouts and output
//! limits are enforced as everywhere.

use super::policy::check_required;
use super::spawned::{start_error, std_command, Spawned, Started};
use super::stopper::Violations;
use super::tree::Tree;
use crate::error::KernelResult;
use crate::kernel::Kernel;
use crate::proto::{GuardIsolation, GuardPolicy, GuardRequest};
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
    // Windows cannot start most programs without these; they name system
    // directories, not secrets.
    for key in ["SystemRoot", "windir"] {
        if !request.env.contains_key(key) {
            if let Ok(value) = std::env::var(key) {
                command.env(key, value);
            }
        }
    }
    // Reported after spawn, once the job object exists.
    let mut isolation = GuardIsolation {
        applied: Vec::new(),
        not_applied: [
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
        .collect(),
        run_as: None,
    };
    check_required(policy, &isolation)?;
    let at = Instant::now();
    let child = command
        .spawn()
        .map_err(|error| start_error(&request.cmd, error))?;
    let spawned = Spawned::from_std(child);
    if spawned.job.is_some() {
        isolation.applied.push("job_object".into());
    } else {
        isolation
            .not_applied
            .push("job_object: could not be created; only the command itself can be killed".into());
    }
    let tree = Tree::new(spawned.pid);
    Ok(Started {
        spawned,
        isolation,
        at,
        tree,
    })
}
