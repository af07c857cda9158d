//! The process tree of a guarded command as each OS lets the guard see it:
//! on Linux through its sandbox's cgroups (the whole tree's CPU time, limit
//! events, processes left after the command exited), elsewhere through the
//! process group (Unix) or the job object (Windows). The monitor and the
//! waiter ask it, so that they need no per-OS code of their own.

use super::stopper::Stopper;
use crate::proto::GuardViolation;

#[cfg(target_os = "linux")]
use super::sandbox::Sandbox;

/// The command's tree: its first process and, on Linux, its sandbox.
pub struct Tree {
    pid: u32,
    #[cfg(target_os = "linux")]
    sandbox: Sandbox,
}

impl Tree {
    #[cfg(target_os = "linux")]
    pub fn new(pid: u32, sandbox: Sandbox) -> Tree {
        Tree { pid, sandbox }
    }

    #[cfg(not(target_os = "linux"))]
    pub fn new(pid: u32) -> Tree {
        Tree { pid }
    }

    /// CPU time used so far, in ms: the whole tree's where a cpu cgroup
    /// tracks it, else the first process's (where `/proc` tells it).
    pub fn cpu_ms(&self) -> Option<u64> {
        #[cfg(target_os = "linux")]
        if let Some(used) = self.sandbox.cgroups.tree_cpu_ms() {
            return Some(used);
        }
        process_cpu_ms(self.pid)
    }

    /// A cgroup limit the tree hit (Linux), checked while it runs.
    pub fn limit_hit(&self) -> Option<GuardViolation> {
        #[cfg(target_os = "linux")]
        {
            self.sandbox.cgroups.violations().into_iter().next()
        }
        #[cfg(not(target_os = "linux"))]
        {
            None
        }
    }

    /// After the command exited: stops whatever of its tree is left. True
    /// when something was (`left_orphans`: the wait already found some).
    pub fn stop_leftovers(&self, left_orphans: bool, stop: &Stopper) -> bool {
        // Linux: the group was checked (and killed) before the leader was
        // reaped, so no recycled pid can be hit; the cgroups catch
        // processes that left the group.
        #[cfg(target_os = "linux")]
        {
            let _ = stop;
            left_orphans || self.sandbox.cgroups.kill_all() > 0
        }
        // Other Unixes: probe the group now.
        #[cfg(all(unix, not(target_os = "linux")))]
        {
            let _ = stop;
            // SAFETY: probing a process group is memory-safe.
            let alive = left_orphans || unsafe { libc::kill(-(self.pid as i32), 0) } == 0;
            if alive {
                // SAFETY: signalling a process group is memory-safe.
                unsafe { libc::kill(-(self.pid as i32), libc::SIGKILL) };
            }
            alive
        }
        // Windows: the job object holds the tree.
        #[cfg(windows)]
        {
            let _ = left_orphans;
            stop.terminate_job();
            false
        }
    }

    /// The limit events of the cgroups (Linux), read once the command
    /// stopped; then whatever is still in them is killed.
    pub fn final_violations(&self) -> Vec<GuardViolation> {
        #[cfg(target_os = "linux")]
        {
            let found = self.sandbox.cgroups.violations();
            self.sandbox.cgroups.kill_all();
            found
        }
        #[cfg(not(target_os = "linux"))]
        {
            Vec::new()
        }
    }

    /// Removes the cgroups (Linux) when the returned value drops, even
    /// during a panic.
    pub fn cleanup_on_drop(&self) -> CleanupOnDrop<'_> {
        CleanupOnDrop(self)
    }
}

/// See [`Tree::cleanup_on_drop`].
pub struct CleanupOnDrop<'a>(#[cfg_attr(not(target_os = "linux"), allow(dead_code))] &'a Tree);

impl Drop for CleanupOnDrop<'_> {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        self.0.sandbox.cleanup();
    }
}

/// CPU time of a running process (from Linux's `/proc`), in ms.
fn process_cpu_ms(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = stat_cpu_ticks(&stat)?;
    // SAFETY: sysconf has no preconditions.
    #[cfg(unix)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    #[cfg(not(unix))]
    let hz = 100;
    Some(ticks * 1000 / hz)
}

/// Resident memory of a running process now (Linux's `/proc`), in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// utime + stime of a `/proc/<pid>/stat` line, in clock ticks (the command
/// name in parentheses may hold spaces and parentheses itself).
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

#[cfg(test)]
mod tests {
    use super::stat_cpu_ticks;

    #[test]
    fn cpu_ticks_come_after_the_command_name() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0";
        assert_eq!(stat_cpu_ticks(stat), Some(12));
        assert_eq!(stat_cpu_ticks("42 (cut) S 1"), None);
    }
}
