//! The sandbox of one guarded command (Linux): every isolation layer,
//! decided and prepared in the parent ([`Sandbox::prepare`]: everything that
//! can fail or allocate), entered by the child between fork and `exec`
//! ([`Sandbox::enter`]: only system calls, as the post-fork rules require),
//! and settled afterwards ([`Sandbox::settle`]): a layer the host refused
//! inside the child moves from applied to not applied, through flags the
//! child writes into the memory it shares with the parent until `exec`.
//!
//! Layers, each applied when the host allows it and reported either way: a
//! new session (process group), cgroups, rlimits, a network namespace when
//! `net` is off, no root (a root host switches to `policy.privileges`' ids,
//! optionally inside a user namespace that maps nothing), no capabilities,
//! `no_new_privs`, Landlock, and the seccomp filter whose notifications the
//! supervisor answers.

use super::access::FileAccess;
use super::cgroup::Cgroups;
use super::child::send_fd;
use super::policy::{privileges, Drop};
use super::{landlock, netns, seccomp};
use crate::proto::{GuardIdentity, GuardIsolation, GuardPolicy};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

// Layers the child could not apply, as bits of `Sandbox::failed`.
const FAILED_NETNS: u32 = 1;
const FAILED_LANDLOCK: u32 = 2;
const FAILED_SECCOMP: u32 = 4;
const FAILED_CAPABILITIES: u32 = 8;
const FAILED_CGROUP: u32 = 16;
const FAILED_USERNS: u32 = 32;

/// What was decided for the child, prepared in the parent.
pub struct Sandbox {
    /// The layers applied, and why the others were not.
    pub isolation: GuardIsolation,
    pub access: Arc<FileAccess>,
    pub cgroups: Cgroups,
    landlock: Option<OwnedFd>,
    filter: Vec<libc::sock_filter>,
    /// Child end of the socket that carries the seccomp listener back.
    listener_tx: Option<OwnedFd>,
    pub listener_rx: Option<OwnedFd>,
    unshare_net: bool,
    /// A ready network namespace to enter instead of creating one.
    netns: Option<OwnedFd>,
    /// Root: the ids to switch to before exec.
    switch_to: Option<(u32, u32)>,
    /// Enter a user namespace that maps nothing (after switching ids).
    user_namespace: bool,
    /// Layers the child could not apply (FAILED_* bits), written before exec.
    failed: AtomicU32,
    rlimits: Vec<(libc::__rlimit_resource_t, libc::rlim_t)>,
}

impl Sandbox {
    /// Decides and prepares every layer for `policy`; `id` makes the
    /// command's cgroup names unique.
    pub fn prepare(policy: &GuardPolicy, id: u64) -> Sandbox {
        let mut isolation = GuardIsolation {
            applied: vec!["session".into(), "no_new_privs".into()],
            not_applied: vec![
                "pid_namespace: not implemented (the process group and cgroups bound the tree)"
                    .into(),
                "mount_namespace: not needed (Landlock restricts the file system)".into(),
            ],
            run_as: None,
        };
        let filter = seccomp::program(policy.net);
        let netns = if policy.net { None } else { netns::take() };
        let name = format!("krepis-guard-{}-{id}", std::process::id());
        let cgroups = Cgroups::prepare(policy, &name, &mut isolation);
        let mut sandbox = Sandbox {
            isolation,
            switch_to: None,
            user_namespace: false,
            access: Arc::new(FileAccess::of(policy)),
            failed: AtomicU32::new(if cgroups.unjoinable { FAILED_CGROUP } else { 0 }),
            cgroups,
            landlock: None,
            filter,
            listener_tx: None,
            listener_rx: None,
            unshare_net: !policy.net,
            netns,
            rlimits: Vec::new(),
        };
        sandbox.prepare_rlimits(policy);
        sandbox.prepare_landlock();
        sandbox.prepare_listener();
        if sandbox.unshare_net {
            sandbox.isolation.applied.push("net_namespace".into());
        }
        sandbox.prepare_identity(policy);
        sandbox.isolation.applied.push("no_capabilities".into());
        sandbox
    }

    /// Who the command runs as: a root host switches to the policy's ids
    /// (unless it says "keep"); "userns" adds a user namespace.
    fn prepare_identity(&mut self, policy: &GuardPolicy) {
        // SAFETY: these calls have no preconditions.
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let drop = privileges(policy);
        let isolation = &mut self.isolation;
        let run_as = match (euid, drop) {
            (0, Drop::Keep) => {
                isolation.not_applied.push(
                    "no_root: policy.privileges.drop is \"keep\": the command runs as uid 0 (without capabilities)"
                        .into(),
                );
                isolation
                    .not_applied
                    .push("setuid: policy.privileges.drop is \"keep\"".into());
                (0, egid)
            }
            (0, Drop::Setuid { uid, gid } | Drop::UserNamespace { uid, gid }) => {
                self.switch_to = Some((uid, gid));
                isolation.applied.push("no_root".into());
                isolation.applied.push("setuid".into());
                (uid, gid)
            }
            _ => {
                isolation.applied.push("no_root".into());
                isolation
                    .not_applied
                    .push("setuid: not needed (the host does not run as root)".into());
                (euid, egid)
            }
        };
        if matches!(drop, Drop::UserNamespace { .. }) {
            self.user_namespace = true;
            isolation.applied.push("user_namespace".into());
        } else {
            isolation
                .not_applied
                .push("user_namespace: policy.privileges.drop is not \"userns\"".into());
        }
        isolation.run_as = Some(GuardIdentity {
            uid: run_as.0,
            gid: run_as.1,
        });
    }

    fn prepare_rlimits(&mut self, policy: &GuardPolicy) {
        if policy.max_memory_bytes > 0 && !self.cgroups.memory_limited() {
            // No memory cgroup: the address space is the next best bound.
            self.rlimits
                .push((libc::RLIMIT_AS, policy.max_memory_bytes));
        }
        if policy.max_cpu_ms > 0 {
            self.rlimits
                .push((libc::RLIMIT_CPU, policy.max_cpu_ms.div_ceil(1000)));
        }
        self.rlimits.push((libc::RLIMIT_CORE, 0));
        self.isolation.applied.push("rlimits".into());
    }

    fn prepare_landlock(&mut self) {
        match landlock::ruleset(&self.access) {
            Ok(fd) => {
                self.landlock = Some(fd);
                self.isolation.applied.push("landlock".into());
                if landlock::version() >= 6 {
                    self.isolation.applied.push("signal_scope".into());
                } else {
                    self.isolation.not_applied.push(
                        "signal_scope: needs Landlock ABI 6 (the command can signal processes of its user)"
                            .into(),
                    );
                }
            }
            Err(why) => self.isolation.not_applied.push(format!("landlock: {why}")),
        }
    }

    /// The socket pair that carries the seccomp listener from the child.
    fn prepare_listener(&mut self) {
        let mut pair = [0; 2];
        // SAFETY: `pair` has room for the two fds.
        if unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                pair.as_mut_ptr(),
            )
        } == 0
        {
            // SAFETY: fresh fds owned by nobody else.
            unsafe {
                self.listener_rx = Some(OwnedFd::from_raw_fd(pair[0]));
                self.listener_tx = Some(OwnedFd::from_raw_fd(pair[1]));
            }
            self.isolation.applied.push("seccomp".into());
        } else {
            self.isolation
                .not_applied
                .push("seccomp: no socket pair for the supervisor".into());
        }
    }

    /// Runs in the forked child before exec. Only system calls, no allocation.
    ///
    /// # Safety
    /// Must only be called between fork and exec, in the child.
    pub unsafe fn enter(&self) -> std::io::Result<()> {
        let fail = |what: i32| {
            if what < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // SAFETY: a plain system call without arguments.
        fail(unsafe { libc::setsid() })?;
        if !self.cgroups.join() {
            self.failed.fetch_or(FAILED_CGROUP, Ordering::SeqCst);
        }
        self.set_rlimits()?;
        // Optional layers that fail here are recorded (the parent shares
        // this memory until exec) and reported as not applied, never claimed.
        if self.unshare_net && !netns::enter(self.netns.as_ref()) {
            self.failed.fetch_or(FAILED_NETNS, Ordering::SeqCst);
        }
        // Descriptors inherited without CLOEXEC must not reach the command.
        // SAFETY: marks descriptors close-on-exec; touches no memory.
        unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 1u32 << 2) };
        if let Some((uid, gid)) = self.switch_to {
            // Root gives root up, or the command does not run: never a
            // command left as root by accident. The bounding set goes
            // first (emptying it needs CAP_SETPCAP, which setresuid drops).
            drop_bounding_set();
            // The stdio pipes (root's, made by the parent) become the
            // command's, so that it can reopen them (/dev/stdout).
            for fd in 0..=2 {
                // SAFETY: changes the owner of one of this child's pipes.
                unsafe { libc::fchown(fd, uid, gid) };
            }
            switch_ids(uid, gid)?;
        }
        // SAFETY: a plain system call without pointers.
        if self.user_namespace && unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
            self.failed.fetch_or(FAILED_USERNS, Ordering::SeqCst);
        }
        // After a new user namespace the bounding set is full again (inside it).
        drop_bounding_set();
        if !drop_capabilities() {
            self.failed.fetch_or(FAILED_CAPABILITIES, Ordering::SeqCst);
        }
        // SAFETY: a plain system call without pointers.
        fail(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
        if let Some(ruleset) = &self.landlock {
            if !landlock::restrict_self(ruleset) {
                self.failed.fetch_or(FAILED_LANDLOCK, Ordering::SeqCst);
            }
        }
        if let Some(tx) = &self.listener_tx {
            let listener = seccomp::install(&self.filter);
            if listener < 0 {
                // The parent's receive sees the socket close at exec.
                self.failed.fetch_or(FAILED_SECCOMP, Ordering::SeqCst);
            } else {
                send_fd(tx.as_raw_fd(), listener)?;
                // SAFETY: closes the child's copy of the fd it just sent.
                unsafe { libc::close(listener) };
            }
        }
        Ok(())
    }

    /// Sets the prepared rlimits (CPU with a hard limit one second above
    /// the soft one, so SIGXCPU comes before SIGKILL). Between fork and exec.
    fn set_rlimits(&self) -> std::io::Result<()> {
        for &(resource, limit) in &self.rlimits {
            let hard = if resource == libc::RLIMIT_CPU {
                limit + 1
            } else {
                limit
            };
            let value = libc::rlimit {
                rlim_cur: limit,
                rlim_max: hard,
            };
            // SAFETY: `value` is a valid rlimit for the call's duration.
            if unsafe { libc::setrlimit(resource, &value) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Moves the layers the child could not apply from applied to not
    /// applied; returns their names.
    pub fn settle(&mut self) -> Vec<String> {
        let failed = self.failed.load(Ordering::SeqCst);
        if failed & FAILED_CGROUP != 0 {
            self.cgroups.not_joined();
        }
        let mut lost = Vec::new();
        for (bit, name) in [
            (FAILED_NETNS, "net_namespace"),
            (FAILED_LANDLOCK, "landlock"),
            (FAILED_LANDLOCK, "signal_scope"),
            (FAILED_SECCOMP, "seccomp"),
            (FAILED_CAPABILITIES, "no_capabilities"),
            (FAILED_USERNS, "user_namespace"),
            (FAILED_CGROUP, "cgroup_pids"),
            (FAILED_CGROUP, "cgroup_memory"),
            (FAILED_CGROUP, "cgroup_cpu"),
            (FAILED_CGROUP, "process_tree"),
        ] {
            let applied = &mut self.isolation.applied;
            if failed & bit != 0 && applied.iter().any(|applied| applied == name) {
                applied.retain(|applied| applied != name);
                self.isolation.not_applied.push(format!(
                    "{name}: refused by this host when entering the sandbox"
                ));
                lost.push(name.to_owned());
            }
        }
        lost
    }

    /// The child is running: the parent drops its copies of the child-only fds.
    pub fn spawned(&mut self) {
        self.listener_tx = None;
        self.netns = None;
        self.landlock = None;
        self.cgroups.close_child_fds();
    }

    /// Removes the cgroups (killing what is still in them).
    pub fn cleanup(&self) {
        self.cgroups.remove();
    }
}

/// Empties the bounding set, so that no exec grants a capability (root's
/// included); a refusal (no CAP_SETPCAP: an unprivileged host, whose set
/// grants nothing anyway) is ignored. Between fork and exec: only system calls.
fn drop_bounding_set() {
    for capability in 0..=63 {
        // SAFETY: prctl without pointers.
        unsafe { libc::prctl(libc::PR_CAPBSET_DROP, capability, 0, 0, 0) };
    }
}

/// Root becomes `uid`/`gid` with no supplementary groups (in that order:
/// changing the uid first would take the right to change groups away).
/// Between fork and exec: only system calls.
fn switch_ids(uid: u32, gid: u32) -> std::io::Result<()> {
    // SAFETY: setgroups reads no memory for an empty list; the others take ids.
    let failed = unsafe {
        libc::setgroups(0, std::ptr::null()) != 0
            || libc::setresgid(gid, gid, gid) != 0
            || libc::setresuid(uid, uid, uid) != 0
    };
    if failed {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Leaves the calling process no capabilities, now or after exec: clears
/// the ambient set and the effective, permitted and inheritable sets; false
/// when the last step was refused. Between fork and exec: only system calls.
fn drop_capabilities() -> bool {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    // SAFETY: prctl without pointers.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
    }
    let header = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let none = || Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    };
    let data = [none(), none()];
    // SAFETY: a version-3 header and the two data structs it expects.
    unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) == 0 }
}
