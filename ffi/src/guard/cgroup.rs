//! The cgroups of one guarded command (Linux): a pids cgroup that tracks the
//! whole tree (even processes that leave its process group) and enforces
//! `maxProcesses`, a cpu cgroup that measures the tree's CPU time, and a
//! memory cgroup for `maxMemoryBytes`. They are made *below* this process's
//! own cgroups (from `/proc/self/cgroup`), so the limits the service runs
//! under still apply; on cgroup v2 one directory holds every controller.
//! The child joins them before `exec` ([`Cgroups::join`]); afterwards they
//! report limit events, and are emptied and removed when the command ends.

use crate::proto::{GuardIsolation, GuardPolicy, GuardViolation};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

/// Where a command's cgroups are, and the child's way into them.
pub struct Cgroups {
    /// Every directory made for the command (one per controller on v1).
    dirs: Vec<PathBuf>,
    /// The one tracking the tree (and `maxProcesses`), when there is one.
    pub pids: Option<PathBuf>,
    cpu: Option<PathBuf>,
    memory: Option<PathBuf>,
    /// `cgroup.procs` of each directory, opened for the child to write its
    /// pid into (held by the parent until the child runs).
    procs: Vec<OwnedFd>,
    /// A directory exists that the child has no way into.
    pub unjoinable: bool,
}

/// Where this process's cgroup for `controller` is, and whether it is the
/// unified (v2) hierarchy. Guarded commands get cgroups *below* it, so the
/// limits the service itself runs under (systemd TasksMax, memory) still
/// apply to them.
fn own_cgroup(controller: &str) -> Option<(PathBuf, bool)> {
    let table = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let relative = |path: &str| path.trim_start_matches('/').to_owned();
    for line in table.lines() {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if id != "0" && controllers.split(',').any(|c| c == controller) {
            let dir = PathBuf::from("/sys/fs/cgroup")
                .join(controller)
                .join(relative(path));
            if dir.join("cgroup.procs").exists() {
                return Some((dir, false));
            }
        }
    }
    for line in table.lines() {
        if let Some(path) = line.strip_prefix("0::") {
            let root = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
                .into_iter()
                .map(PathBuf::from)
                .find(|root| root.join("cgroup.controllers").exists())?;
            let dir = root.join(relative(path));
            if dir.join("cgroup.procs").exists() {
                return Some((dir, true));
            }
        }
    }
    None
}

/// Creates (or, on v2, reuses) the cgroup `name` below `own` (this process's
/// cgroup for the controller, from [`own_cgroup`]), and writes `settings`
/// into it.
fn make_cgroup(
    own: Option<&(PathBuf, bool)>,
    name: &str,
    settings: &[(&str, String)],
    existing: &[PathBuf],
) -> Result<PathBuf, String> {
    let (base, v2) = own.ok_or("no cgroup hierarchy with this controller")?;
    let v2 = *v2;
    let dir = base.join(name);
    // One directory holds every controller on v2.
    let fresh = !(v2 && existing.contains(&dir));
    if fresh {
        std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    for (file, value) in settings {
        if let Err(error) = std::fs::write(dir.join(file), value) {
            if fresh {
                let _ = std::fs::remove_dir(&dir);
            }
            return Err(format!("{file}: {error}"));
        }
    }
    Ok(dir)
}

/// `value` in decimal ASCII, written into the end of `digits`: formatting
/// without allocating, for the child between fork and exec.
fn decimal(mut value: u32, digits: &mut [u8; 12]) -> &[u8] {
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    &digits[at..]
}

impl Cgroups {
    /// Makes the cgroups `policy` asks for (plus the tracking one), named
    /// `name`, and reports each in `isolation`. A memory limit without a
    /// memory cgroup is left to the caller (`memory_limited` is false).
    pub fn prepare(policy: &GuardPolicy, name: &str, isolation: &mut GuardIsolation) -> Cgroups {
        let mut cgroups = Cgroups {
            dirs: Vec::new(),
            pids: None,
            cpu: None,
            memory: None,
            procs: Vec::new(),
            unjoinable: false,
        };
        cgroups.prepare_pids(policy, name, isolation);
        if policy.max_cpu_ms > 0 {
            cgroups.prepare_cpu(name, isolation);
        }
        if policy.max_memory_bytes > 0 {
            cgroups.prepare_memory(policy.max_memory_bytes, name, isolation);
        }
        for dir in &cgroups.dirs {
            let procs = dir.join("cgroup.procs");
            match std::fs::OpenOptions::new().write(true).open(&procs) {
                Ok(file) => cgroups.procs.push(OwnedFd::from(file)),
                // Without a way in, the cgroup tracks nothing: same as failing.
                Err(_) => cgroups.unjoinable = true,
            }
        }
        cgroups
    }

    /// Whether a memory cgroup enforces `maxMemoryBytes`.
    pub fn memory_limited(&self) -> bool {
        self.memory.is_some()
    }

    fn add(&mut self, dir: PathBuf) {
        if !self.dirs.contains(&dir) {
            self.dirs.push(dir);
        }
    }

    /// A pids cgroup always, when possible: it tracks the whole tree, even
    /// processes that leave the process group with setsid.
    fn prepare_pids(&mut self, policy: &GuardPolicy, name: &str, isolation: &mut GuardIsolation) {
        let pids_max = if policy.max_processes > 0 {
            policy.max_processes.to_string()
        } else {
            "max".into()
        };
        let own_pids = own_cgroup("pids");
        let settings: Vec<(&str, String)> =
            if policy.max_processes > 0 || own_pids.as_ref().is_some_and(|(_, v2)| !v2) {
                vec![("pids.max", pids_max)]
            } else {
                Vec::new() // v2 tracking needs no controller
            };
        match make_cgroup(own_pids.as_ref(), name, &settings, &self.dirs) {
            Ok(dir) => {
                isolation.applied.push("process_tree".into());
                if policy.max_processes > 0 {
                    isolation.applied.push("cgroup_pids".into());
                }
                self.pids = Some(dir.clone());
                self.dirs.push(dir);
            }
            Err(why) => {
                isolation.not_applied.push(format!(
                    "process_tree: {why}; a process that calls setsid escapes the group kill"
                ));
                if policy.max_processes > 0 {
                    isolation.not_applied.push(format!("cgroup_pids: {why}"));
                }
            }
        }
    }

    fn prepare_cpu(&mut self, name: &str, isolation: &mut GuardIsolation) {
        // v1 accounts CPU in `cpuacct`; v2 has one hierarchy.
        let own_cpu = own_cgroup("cpuacct")
            .filter(|(_, v2)| !v2)
            .or_else(|| own_cgroup("cpu"));
        match make_cgroup(own_cpu.as_ref(), name, &[], &self.dirs) {
            Ok(dir) => {
                isolation.applied.push("cgroup_cpu".into());
                self.cpu = Some(dir.clone());
                self.add(dir);
            }
            Err(why) => isolation.not_applied.push(format!(
                "cgroup_cpu: {why}; maxCpuMs counts the first process only"
            )),
        }
    }

    fn prepare_memory(&mut self, max_bytes: u64, name: &str, isolation: &mut GuardIsolation) {
        let own_memory = own_cgroup("memory");
        let v1 = own_memory.as_ref().is_some_and(|(_, v2)| !v2);
        let limit = if v1 {
            "memory.limit_in_bytes"
        } else {
            "memory.max"
        };
        match make_cgroup(
            own_memory.as_ref(),
            name,
            &[(limit, max_bytes.to_string())],
            &self.dirs,
        ) {
            Ok(dir) => {
                if v1 {
                    let _ = std::fs::write(
                        dir.join("memory.memsw.limit_in_bytes"),
                        max_bytes.to_string(),
                    );
                } else {
                    let _ = std::fs::write(dir.join("memory.swap.max"), "0");
                }
                isolation.applied.push("cgroup_memory".into());
                self.memory = Some(dir.clone());
                self.add(dir);
            }
            Err(why) => isolation
                .not_applied
                .push(format!("cgroup_memory: {why}; using RLIMIT_AS")),
        }
    }

    /// Writes the calling process's pid into every cgroup; false when one
    /// refused. Meant for the child between fork and exec: only system
    /// calls, no allocation.
    pub fn join(&self) -> bool {
        let mut joined = true;
        for fd in &self.procs {
            let mut digits = [0u8; 12];
            // SAFETY: getpid has no preconditions.
            let pid = decimal(unsafe { libc::getpid() } as u32, &mut digits);
            // SAFETY: writes `pid.len()` initialised bytes to an fd we own.
            let written = unsafe { libc::write(fd.as_raw_fd(), pid.as_ptr().cast(), pid.len()) };
            if written != pid.len() as isize {
                joined = false;
            }
        }
        joined
    }

    /// The child is running: the parent's copies of the `cgroup.procs` fds go.
    pub fn close_child_fds(&mut self) {
        self.procs.clear();
    }

    /// The child is not in the cgroups: nothing read from them would be
    /// true, so the tree is no longer measured or tracked through them (they
    /// are still emptied and removed).
    pub fn not_joined(&mut self) {
        self.pids = None;
        self.cpu = None;
        self.memory = None;
    }

    /// A violation recorded by the cgroups (read after the command stopped).
    pub fn violations(&self) -> Vec<GuardViolation> {
        let mut found = Vec::new();
        if let Some(dir) = &self.pids {
            let events = std::fs::read_to_string(dir.join("pids.events")).unwrap_or_default();
            if events
                .lines()
                .any(|line| line.starts_with("max ") && line != "max 0")
            {
                found.push(GuardViolation {
                    kind: "processes".into(),
                    detail: "the process limit was reached".into(),
                });
            }
        }
        if let Some(dir) = &self.memory {
            let read = |file: &str| std::fs::read_to_string(dir.join(file)).ok();
            let v1 = read("memory.failcnt");
            let hit = match v1 {
                Some(count) => {
                    count.trim() != "0"
                        || read("memory.memsw.failcnt").is_some_and(|c| c.trim() != "0")
                        || read("memory.oom_control").is_some_and(|control| {
                            control
                                .lines()
                                .any(|line| line.starts_with("oom_kill ") && line != "oom_kill 0")
                        })
                }
                None => std::fs::read_to_string(dir.join("memory.events"))
                    .unwrap_or_default()
                    .lines()
                    .any(|line| {
                        (line.starts_with("max ") || line.starts_with("oom_kill "))
                            && !line.ends_with(" 0")
                    }),
            };
            if hit {
                found.push(GuardViolation {
                    kind: "memory".into(),
                    detail: "the memory limit was reached".into(),
                });
            }
        }
        found
    }

    /// CPU time of the whole tree, in ms, from its cpu cgroup.
    pub fn tree_cpu_ms(&self) -> Option<u64> {
        let dir = self.cpu.as_ref()?;
        if let Ok(nanos) = std::fs::read_to_string(dir.join("cpuacct.usage")) {
            return nanos.trim().parse::<u64>().ok().map(|ns| ns / 1_000_000);
        }
        let stat = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
        stat.lines()
            .find_map(|line| line.strip_prefix("usage_usec "))
            .and_then(|us| us.trim().parse::<u64>().ok())
            .map(|us| us / 1000)
    }

    /// Kills whatever is left in the cgroups; returns how many were found.
    pub fn kill_all(&self) -> usize {
        let mut killed = 0;
        for dir in &self.dirs {
            for line in std::fs::read_to_string(dir.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
            {
                if let Ok(pid) = line.trim().parse::<i32>() {
                    // SAFETY: kill has no memory-safety preconditions.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    killed += 1;
                }
            }
        }
        killed
    }

    /// Removes the cgroups once they are empty.
    pub fn remove(&self) {
        for dir in &self.dirs {
            for _ in 0..100 {
                if std::fs::remove_dir(dir).is_ok() {
                    break;
                }
                self.kill_all();
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::decimal;

    #[test]
    fn decimal_formats_without_allocating() {
        let mut digits = [0u8; 12];
        for (value, text) in [(0, "0"), (7, "7"), (4_194_304, "4194304")] {
            assert_eq!(decimal(value, &mut digits), text.as_bytes());
        }
        assert_eq!(decimal(u32::MAX, &mut digits), b"4294967295");
    }
}
