//! Linux isolation for guarded commands. Everything that can fail or
//! allocate is prepared in the parent ([`Sandbox::prepare`]); the closure that
//! runs in the forked child before `exec` ([`Sandbox::enter`]) only makes
//! system calls, as the post-fork rules require.
//!
//! Layers, each applied when the host allows it and reported either way:
//! a new session (process group), `no_new_privs`, rlimits, a network
//! namespace when `net` is off, cgroups (pids, memory) when writable,
//! Landlock file-system rules, and a seccomp filter that kills the command on
//! ptrace/mount/kexec/bpf (and IPv4/IPv6 sockets when `net` is off) and hands
//! every `open` to a supervisor thread ([`supervise`]) so that an attempt to
//! read or write outside the policy is refused *and reported*.

use crate::proto::{GuardPolicy, GuardViolation};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};

const LANDLOCK_CREATE_RULESET: libc::c_long = 444;
const LANDLOCK_ADD_RULE: libc::c_long = 445;
const LANDLOCK_RESTRICT_SELF: libc::c_long = 446;
const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
const LANDLOCK_RULE_PATH_BENEATH: u32 = 1;
const FS_EXECUTE: u64 = 1 << 0;
const FS_READ_FILE: u64 = 1 << 2;
const FS_READ_DIR: u64 = 1 << 3;

const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;
const SECCOMP_FILTER_FLAG_NEW_LISTENER: libc::c_ulong = 1 << 3;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_IOCTL_NOTIF_RECV: libc::c_ulong = 0xc050_2100;
const SECCOMP_IOCTL_NOTIF_SEND: libc::c_ulong = 0xc018_2101;
const SECCOMP_IOCTL_NOTIF_ID_VALID: libc::c_ulong = 0x4008_2102;
const SECCOMP_USER_NOTIF_FLAG_CONTINUE: u32 = 1;
/// Most file violations reported per command (the first ones).
pub const MAX_REPORTED_VIOLATIONS: usize = 64;
const FAILED_NETNS: u32 = 1;
const FAILED_LANDLOCK: u32 = 2;
const FAILED_SECCOMP: u32 = 4;
const FAILED_CAPABILITIES: u32 = 8;
const FAILED_CGROUP: u32 = 16;

#[cfg(target_arch = "x86_64")]
mod arch {
    pub(super) const AUDIT: u32 = 0xc000_003e;
    // ptrace mount umount2 kexec_load kexec_file_load bpf io_uring_setup/enter/register
    pub(super) const DENIED: &[i64] = &[101, 165, 166, 246, 320, 321, 425, 426, 427];
    pub(super) const SOCKET: i64 = 41;
    pub(super) const OPEN: Option<i64> = Some(2);
    pub(super) const CREAT: Option<i64> = Some(85);
    pub(super) const OPENAT: i64 = 257;
    pub(super) const OPENAT2: i64 = 437;
    /// The legacy (non-`*at`) calls that change the file tree; the `*at`
    /// forms every architecture has are in [`super::TREE_CHANGES`].
    pub(super) const LEGACY_TREE_CHANGES: &[(i64, &[super::PathArg])] = {
        use super::PathArg as A;
        &[
            (libc::SYS_mkdir, &[A::creates(None, 0)]),
            (libc::SYS_mknod, &[A::creates(None, 0)]),
            (libc::SYS_symlink, &[A::creates(None, 1)]),
            (libc::SYS_rmdir, &[A::changes(None, 0)]),
            (libc::SYS_unlink, &[A::changes(None, 0)]),
            (
                libc::SYS_rename,
                &[A::changes(None, 0), A::replaces(None, 1)],
            ),
            (libc::SYS_link, &[A::changes(None, 0), A::creates(None, 1)]),
        ]
    };
}
#[cfg(target_arch = "aarch64")]
mod arch {
    pub(super) const AUDIT: u32 = 0xc000_00b7;
    pub(super) const DENIED: &[i64] = &[117, 40, 39, 104, 294, 280, 425, 426, 427];
    pub(super) const SOCKET: i64 = 198;
    pub(super) const OPEN: Option<i64> = None;
    pub(super) const CREAT: Option<i64> = None;
    pub(super) const OPENAT: i64 = 56;
    pub(super) const OPENAT2: i64 = 437;
    /// arm64 has only the `*at` forms.
    pub(super) const LEGACY_TREE_CHANGES: &[(i64, &[super::PathArg])] = &[];
}

/// Calls that change the file tree, sent to the supervisor so an
/// out-of-policy one is reported (Landlock alone would deny silently). Each
/// architecture adds its legacy forms (`arch::LEGACY_TREE_CHANGES`).
const TREE_CHANGES: &[(i64, &[PathArg])] = {
    use PathArg as A;
    &[
        (libc::SYS_truncate, &[A::changes(None, 0)]),
        (libc::SYS_mkdirat, &[A::creates(Some(0), 1)]),
        (libc::SYS_mknodat, &[A::creates(Some(0), 1)]),
        (libc::SYS_symlinkat, &[A::creates(Some(1), 2)]),
        (libc::SYS_unlinkat, &[A::changes(Some(0), 1)]),
        (
            libc::SYS_renameat,
            &[A::changes(Some(0), 1), A::replaces(Some(2), 3)],
        ),
        (
            libc::SYS_renameat2,
            &[A::changes(Some(0), 1), A::replaces(Some(2), 3)],
        ),
        (
            libc::SYS_linkat,
            &[A::changes(Some(0), 1), A::creates(Some(2), 3)],
        ),
    ]
};

/// Every call that changes the file tree on this architecture.
fn tree_changes() -> impl Iterator<Item = &'static (i64, &'static [PathArg])> {
    TREE_CHANGES.iter().chain(arch::LEGACY_TREE_CHANGES)
}

/// A path argument of a call that changes the file tree: where it is (an
/// optional directory-fd argument, the path argument) and what the call does
/// to it. For `symlink` only the new link counts: its target is just text.
#[derive(Clone, Copy)]
struct PathArg {
    dir: Option<usize>,
    path: usize,
    role: PathRole,
}

/// Decides when an out-of-policy path is worth a violation: only when the
/// call would otherwise have changed something. `mkdir -p` meeting an
/// existing `/tmp` gets its EEXIST (from the kernel), not a false report.
#[derive(Clone, Copy, PartialEq)]
enum PathRole {
    /// Made by the call (fails with EEXIST when present).
    Creates,
    /// Removed or modified (fails with ENOENT when absent).
    Changes,
    /// A rename's target: written either way.
    Replaces,
}

impl PathArg {
    const fn creates(dir: Option<usize>, path: usize) -> Self {
        Self {
            dir,
            path,
            role: PathRole::Creates,
        }
    }
    const fn changes(dir: Option<usize>, path: usize) -> Self {
        Self {
            dir,
            path,
            role: PathRole::Changes,
        }
    }
    const fn replaces(dir: Option<usize>, path: usize) -> Self {
        Self {
            dir,
            path,
            role: PathRole::Replaces,
        }
    }
}

/// Always readable (and executable): what running a program needs.
const SYSTEM_READ: &[&str] = &[
    // Name-service basics that interpreters read at start-up (no secrets).
    "/etc/nsswitch.conf",
    "/etc/passwd",
    "/etc/group",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/opt",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/localtime",
    "/proc",
    "/sys/devices/system/cpu",
    "/dev/null",
    "/dev/zero",
    "/dev/urandom",
    "/dev/random",
];
/// Always writable.
const SYSTEM_WRITE: &[&str] = &["/dev/null"];

/// Network namespaces created ahead of time: `unshare(CLONE_NEWNET)` costs
/// ~0.4 ms, so a background thread keeps a few fresh ones ready and each
/// guarded command enters its own with a cheap `setns`. Never shared: each
/// namespace is handed out once.
mod netns_pool {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::sync::{Condvar, Mutex, OnceLock};

    const SPARE: usize = 4;

    struct Pool {
        spare: Mutex<(Vec<OwnedFd>, bool)>,
        wanted: Condvar,
    }

    fn pool() -> &'static Pool {
        static POOL: OnceLock<Pool> = OnceLock::new();
        POOL.get_or_init(|| {
            let _ = std::thread::Builder::new()
                .name("krepis-netns".into())
                .spawn(refill);
            Pool {
                spare: Mutex::new((Vec::new(), true)),
                wanted: Condvar::new(),
            }
        })
    }

    fn refill() {
        let pool = pool();
        loop {
            {
                let mut spare = pool.spare.lock().unwrap_or_else(|p| p.into_inner());
                while spare.0.len() >= SPARE {
                    spare = pool.wanted.wait(spare).unwrap_or_else(|p| p.into_inner());
                }
            }
            // SAFETY: affects only this thread, which never runs anything else.
            let fd = unsafe {
                if libc::unshare(libc::CLONE_NEWNET) != 0 {
                    -1
                } else {
                    libc::open(
                        c"/proc/thread-self/ns/net".as_ptr(),
                        libc::O_RDONLY | libc::O_CLOEXEC,
                    )
                }
            };
            let mut spare = pool.spare.lock().unwrap_or_else(|p| p.into_inner());
            if fd < 0 {
                spare.1 = false; // not permitted here: callers fall back to unshare
                return;
            }
            // SAFETY: a fresh fd owned by nobody else.
            spare.0.push(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }

    /// A fresh network namespace, if one is ready.
    pub fn take() -> Option<OwnedFd> {
        let pool = pool();
        let mut spare = pool.spare.lock().unwrap_or_else(|p| p.into_inner());
        let taken = if spare.1 { spare.0.pop() } else { None };
        pool.wanted.notify_one();
        taken
    }
}

/// What was decided for the child, prepared in the parent.
pub struct Sandbox {
    pub applied: Vec<String>,
    pub not_applied: Vec<String>,
    landlock: Option<OwnedFd>,
    filter: Vec<libc::sock_filter>,
    /// Child end of the socket that carries the seccomp listener back.
    listener_tx: Option<OwnedFd>,
    pub listener_rx: Option<OwnedFd>,
    unshare_net: bool,
    /// A ready network namespace to enter instead of creating one.
    netns: Option<OwnedFd>,
    /// Root: empty the bounding set and the capability sets before exec.
    drop_capabilities: bool,
    /// Layers the child could not apply (FAILED_* bits), written before exec.
    failed: std::sync::atomic::AtomicU32,
    rlimits: Vec<(libc::__rlimit_resource_t, libc::rlim_t)>,
    cgroup_procs: Vec<OwnedFd>,
    pub cgroups: Vec<PathBuf>,
    pub memory_cgroup: Option<PathBuf>,
    pub pids_cgroup: Option<PathBuf>,
    pub cpu_cgroup: Option<PathBuf>,
    pub read: Vec<PathBuf>,
    pub write: Vec<PathBuf>,
}

fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(part) => out.push(part),
            _ => {}
        }
    }
    out
}

fn landlock_abi() -> i64 {
    // SAFETY: the "version" query takes no attribute and no fd.
    unsafe {
        libc::syscall(
            LANDLOCK_CREATE_RULESET,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    }
}

/// An `O_PATH` fd for a Landlock rule, and whether it is a directory.
fn open_path(path: &Path) -> Option<(OwnedFd, bool)> {
    let cpath = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: a valid NUL-terminated path.
    let fd = unsafe { libc::open(cpath.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return None; // a missing path grants nothing
    }
    // SAFETY: a fresh fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let is_dir = std::fs::metadata(path).is_ok_and(|m| m.is_dir());
    Some((fd, is_dir))
}

/// Landlock's ABI version here (0 = unavailable).
pub fn landlock_version() -> i64 {
    landlock_abi().max(0)
}

fn landlock_ruleset(read: &[PathBuf], write: &[PathBuf]) -> Result<OwnedFd, String> {
    let abi = landlock_abi();
    if abi < 1 {
        return Err("not supported by this kernel".into());
    }
    let mut all: u64 = (1 << 13) - 1; // ABI 1: execute .. make_sym
    if abi >= 2 {
        all |= 1 << 13; // refer
    }
    if abi >= 3 {
        all |= 1 << 14; // truncate
    }
    if abi >= 5 {
        all |= 1 << 15; // ioctl_dev
    }
    // struct landlock_ruleset_attr { handled_access_fs, handled_access_net, scoped }.
    // ABI 6 adds `scoped`: no signals to, and no abstract unix sockets of,
    // processes outside the sandbox (e.g. the Deno process itself).
    let attr: [u64; 3] = [all, 0, if abi >= 6 { 0b11 } else { 0 }];
    let size: usize = if abi >= 6 { 24 } else { 8 };
    // SAFETY: the attribute is valid for `size` bytes.
    let fd = unsafe { libc::syscall(LANDLOCK_CREATE_RULESET, attr.as_ptr(), size, 0u32) };
    if fd < 0 {
        return Err(format!(
            "creating the ruleset failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a fresh fd owned by nobody else.
    let ruleset = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let add_fd = |parent: RawFd, is_dir: bool, access: u64| {
        let access = if is_dir {
            access & all
        } else {
            access & (FS_EXECUTE | FS_READ_FILE | (1 << 1) | (1 << 14)) & all
        };
        #[repr(C, packed)]
        struct PathBeneath {
            allowed_access: u64,
            parent_fd: i32,
        }
        let rule = PathBeneath {
            allowed_access: access,
            parent_fd: parent,
        };
        // SAFETY: a valid rule for a valid ruleset fd; errors only skip the rule.
        unsafe {
            libc::syscall(
                LANDLOCK_ADD_RULE,
                ruleset.as_raw_fd(),
                LANDLOCK_RULE_PATH_BENEATH,
                &rule as *const PathBeneath,
                0u32,
            );
        }
    };
    let add_path = |path: &Path, access: u64| {
        if let Some((fd, is_dir)) = open_path(path) {
            add_fd(fd.as_raw_fd(), is_dir, access);
        }
    };
    // The system paths are opened once per process (they are the same for
    // every command); only the policy's own paths are opened per spawn.
    static SYSTEM: OnceLock<Vec<(OwnedFd, bool, bool)>> = OnceLock::new();
    let system = SYSTEM.get_or_init(|| {
        let read = SYSTEM_READ
            .iter()
            .filter_map(|p| open_path(Path::new(p)).map(|(fd, dir)| (fd, dir, false)));
        let write = SYSTEM_WRITE
            .iter()
            .filter_map(|p| open_path(Path::new(p)).map(|(fd, dir)| (fd, dir, true)));
        read.chain(write).collect()
    });
    for (fd, is_dir, writable) in system {
        let access = if *writable {
            all
        } else {
            FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
        };
        add_fd(fd.as_raw_fd(), *is_dir, access);
    }
    for path in read {
        add_path(path, FS_EXECUTE | FS_READ_FILE | FS_READ_DIR);
    }
    for path in write {
        add_path(path, all);
    }
    Ok(ruleset)
}

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

fn seccomp_program(net: bool) -> Vec<libc::sock_filter> {
    let mut program = vec![
        stmt(LD_W_ABS, 4),
        jump(arch::AUDIT, 1, 0),
        stmt(RET_K, SECCOMP_RET_KILL_PROCESS),
        stmt(LD_W_ABS, 0),
    ];
    #[cfg(target_arch = "x86_64")]
    {
        // x32 system calls (numbers with bit 30) would match none of the rules.
        program.push(libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: 0x4000_0000,
        });
        program.push(stmt(RET_K, SECCOMP_RET_KILL_PROCESS));
    }
    for &nr in arch::DENIED {
        program.push(jump(nr as u32, 0, 1));
        program.push(stmt(RET_K, SECCOMP_RET_KILL_PROCESS));
    }
    if !net {
        // socket(AF_INET | AF_INET6, …) kills; AF_UNIX stays allowed.
        program.push(jump(arch::SOCKET as u32, 0, 5));
        program.push(stmt(LD_W_ABS, 16));
        program.push(jump(libc::AF_INET as u32, 2, 0));
        program.push(jump(libc::AF_INET6 as u32, 1, 0));
        program.push(stmt(RET_K, SECCOMP_RET_ALLOW));
        program.push(stmt(RET_K, SECCOMP_RET_KILL_PROCESS));
    }
    for nr in [
        arch::OPEN,
        arch::CREAT,
        Some(arch::OPENAT),
        Some(arch::OPENAT2),
    ]
    .into_iter()
    .flatten()
    .chain(tree_changes().map(|&(nr, _)| nr))
    {
        program.push(jump(nr as u32, 0, 1));
        program.push(stmt(RET_K, SECCOMP_RET_USER_NOTIF));
    }
    program.push(stmt(RET_K, SECCOMP_RET_ALLOW));
    program
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

impl Sandbox {
    /// Decides and prepares every layer for `policy`.
    pub fn prepare(policy: &GuardPolicy, id: u64) -> Sandbox {
        let mut sandbox = Sandbox {
            applied: vec!["session".into(), "no_new_privs".into()],
            not_applied: vec![
                "pid_namespace: not implemented (the process group and cgroups bound the tree)"
                    .into(),
                "mount_namespace: not needed (Landlock restricts the file system)".into(),
            ],
            landlock: None,
            filter: seccomp_program(policy.net),
            listener_tx: None,
            listener_rx: None,
            unshare_net: !policy.net,
            netns: if policy.net { None } else { netns_pool::take() },
            failed: std::sync::atomic::AtomicU32::new(0),
            drop_capabilities: false,
            rlimits: Vec::new(),
            cgroup_procs: Vec::new(),
            cgroups: Vec::new(),
            memory_cgroup: None,
            pids_cgroup: None,
            cpu_cgroup: None,
            read: policy
                .read
                .iter()
                .map(|p| normalize(Path::new(p)))
                .collect(),
            write: policy
                .write
                .iter()
                .map(|p| normalize(Path::new(p)))
                .collect(),
        };
        let name = format!("krepis-guard-{}-{id}", std::process::id());
        // A pids cgroup always, when possible: it tracks the whole tree, even
        // processes that leave the process group with setsid.
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
        match make_cgroup(own_pids.as_ref(), &name, &settings, &sandbox.cgroups) {
            Ok(dir) => {
                sandbox.applied.push("process_tree".into());
                if policy.max_processes > 0 {
                    sandbox.applied.push("cgroup_pids".into());
                }
                sandbox.pids_cgroup = Some(dir.clone());
                sandbox.cgroups.push(dir);
            }
            Err(why) => {
                sandbox.not_applied.push(format!(
                    "process_tree: {why}; a process that calls setsid escapes the group kill"
                ));
                if policy.max_processes > 0 {
                    sandbox.not_applied.push(format!("cgroup_pids: {why}"));
                }
            }
        }
        if policy.max_cpu_ms > 0 {
            // v1 accounts CPU in `cpuacct`; v2 has one hierarchy.
            let own_cpu = own_cgroup("cpuacct")
                .filter(|(_, v2)| !v2)
                .or_else(|| own_cgroup("cpu"));
            match make_cgroup(own_cpu.as_ref(), &name, &[], &sandbox.cgroups) {
                Ok(dir) => {
                    sandbox.applied.push("cgroup_cpu".into());
                    sandbox.cpu_cgroup = Some(dir.clone());
                    if !sandbox.cgroups.contains(&dir) {
                        sandbox.cgroups.push(dir);
                    }
                }
                Err(why) => sandbox.not_applied.push(format!(
                    "cgroup_cpu: {why}; maxCpuMs counts the first process only"
                )),
            }
        }
        if policy.max_memory_bytes > 0 {
            let own_memory = own_cgroup("memory");
            let v1 = own_memory.as_ref().is_some_and(|(_, v2)| !v2);
            let limit = if v1 {
                "memory.limit_in_bytes"
            } else {
                "memory.max"
            };
            match make_cgroup(
                own_memory.as_ref(),
                &name,
                &[(limit, policy.max_memory_bytes.to_string())],
                &sandbox.cgroups,
            ) {
                Ok(dir) => {
                    if v1 {
                        let _ = std::fs::write(
                            dir.join("memory.memsw.limit_in_bytes"),
                            policy.max_memory_bytes.to_string(),
                        );
                    } else {
                        let _ = std::fs::write(dir.join("memory.swap.max"), "0");
                    }
                    sandbox.applied.push("cgroup_memory".into());
                    sandbox.memory_cgroup = Some(dir.clone());
                    if !sandbox.cgroups.contains(&dir) {
                        sandbox.cgroups.push(dir);
                    }
                }
                Err(why) => {
                    sandbox
                        .not_applied
                        .push(format!("cgroup_memory: {why}; using RLIMIT_AS"));
                    sandbox
                        .rlimits
                        .push((libc::RLIMIT_AS, policy.max_memory_bytes));
                }
            }
        }
        if policy.max_cpu_ms > 0 {
            sandbox
                .rlimits
                .push((libc::RLIMIT_CPU, policy.max_cpu_ms.div_ceil(1000)));
        }
        sandbox.rlimits.push((libc::RLIMIT_CORE, 0));
        sandbox.applied.push("rlimits".into());
        for dir in &sandbox.cgroups {
            let procs = dir.join("cgroup.procs");
            match std::fs::OpenOptions::new().write(true).open(&procs) {
                Ok(file) => sandbox.cgroup_procs.push(OwnedFd::from(file)),
                // Without a way in, the cgroup tracks nothing: same as failing.
                Err(_) => {
                    sandbox.failed.fetch_or(FAILED_CGROUP, Ordering::SeqCst);
                }
            }
        }
        match landlock_ruleset(&sandbox.read, &sandbox.write) {
            Ok(fd) => {
                sandbox.landlock = Some(fd);
                sandbox.applied.push("landlock".into());
                if landlock_version() >= 6 {
                    sandbox.applied.push("signal_scope".into());
                } else {
                    sandbox.not_applied.push(
                        "signal_scope: needs Landlock ABI 6 (the command can signal processes of its user)"
                            .into(),
                    );
                }
            }
            Err(why) => sandbox.not_applied.push(format!("landlock: {why}")),
        }
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
                sandbox.listener_rx = Some(OwnedFd::from_raw_fd(pair[0]));
                sandbox.listener_tx = Some(OwnedFd::from_raw_fd(pair[1]));
            }
            sandbox.applied.push("seccomp".into());
        } else {
            sandbox
                .not_applied
                .push("seccomp: no socket pair for the supervisor".into());
        }
        if sandbox.unshare_net {
            sandbox.applied.push("net_namespace".into());
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            sandbox.drop_capabilities = true;
        }
        sandbox.applied.push("no_capabilities".into());
        sandbox
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
        // SAFETY: plain system calls on values prepared in the parent; no
        // allocation or locking happens between fork and exec.
        unsafe {
            fail(libc::setsid())?;
            for fd in &self.cgroup_procs {
                let mut digits = [0u8; 12];
                let mut pid = libc::getpid() as u32;
                let mut at = digits.len();
                loop {
                    at -= 1;
                    digits[at] = b'0' + (pid % 10) as u8;
                    pid /= 10;
                    if pid == 0 {
                        break;
                    }
                }
                let length = digits.len() - at;
                if libc::write(fd.as_raw_fd(), digits[at..].as_ptr().cast(), length)
                    != length as isize
                {
                    self.failed.fetch_or(FAILED_CGROUP, Ordering::SeqCst);
                }
            }
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
                fail(libc::setrlimit(resource, &value))?;
            }
            // A ready namespace if there is one; else a new one (unprivileged:
            // a user namespace makes the network one possible).
            let entered = match &self.netns {
                Some(netns) => libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) == 0,
                None => false,
            };
            // Optional layers that fail here are recorded (the parent shares
            // this memory until exec) and reported as not applied, never claimed.
            if self.unshare_net
                && !entered
                && libc::unshare(libc::CLONE_NEWNET) != 0
                && libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) != 0
            {
                self.failed.fetch_or(FAILED_NETNS, Ordering::SeqCst);
            }
            // Descriptors inherited without CLOEXEC must not reach the command.
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 1u32 << 2);
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            );
            {
                if self.drop_capabilities {
                    // An empty bounding set means exec grants root nothing either.
                    for capability in 0..=63 {
                        libc::prctl(libc::PR_CAPBSET_DROP, capability, 0, 0, 0);
                    }
                }
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
                if libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) != 0 {
                    self.failed.fetch_or(FAILED_CAPABILITIES, Ordering::SeqCst);
                }
            }
            fail(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            if let Some(ruleset) = &self.landlock {
                if libc::syscall(LANDLOCK_RESTRICT_SELF, ruleset.as_raw_fd(), 0u32) != 0 {
                    self.failed.fetch_or(FAILED_LANDLOCK, Ordering::SeqCst);
                }
            }
            if let Some(tx) = &self.listener_tx {
                let program = libc::sock_fprog {
                    len: self.filter.len() as u16,
                    filter: self.filter.as_ptr() as *mut _,
                };
                let listener = libc::syscall(
                    libc::SYS_seccomp,
                    SECCOMP_SET_MODE_FILTER,
                    SECCOMP_FILTER_FLAG_NEW_LISTENER,
                    &program as *const libc::sock_fprog,
                ) as i32;
                if listener < 0 {
                    // The parent's receive sees the socket close at exec.
                    self.failed.fetch_or(FAILED_SECCOMP, Ordering::SeqCst);
                } else {
                    send_fd(tx.as_raw_fd(), listener)?;
                    libc::close(listener);
                }
            }
        }
        Ok(())
    }

    /// Moves the layers the child could not apply from applied to not applied.
    pub fn settle(&mut self) -> Vec<String> {
        let failed = self.failed.load(Ordering::SeqCst);
        if failed & FAILED_CGROUP != 0 {
            // The command is not in them: nothing read from them is true.
            self.pids_cgroup = None;
            self.cpu_cgroup = None;
            self.memory_cgroup = None;
        }
        let mut lost = Vec::new();
        for (bit, name) in [
            (FAILED_NETNS, "net_namespace"),
            (FAILED_LANDLOCK, "landlock"),
            (FAILED_LANDLOCK, "signal_scope"),
            (FAILED_SECCOMP, "seccomp"),
            (FAILED_CAPABILITIES, "no_capabilities"),
            (FAILED_CGROUP, "cgroup_pids"),
            (FAILED_CGROUP, "cgroup_memory"),
            (FAILED_CGROUP, "cgroup_cpu"),
            (FAILED_CGROUP, "process_tree"),
        ] {
            if failed & bit != 0 && self.applied.iter().any(|applied| applied == name) {
                self.applied.retain(|applied| applied != name);
                self.not_applied.push(format!(
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
        self.cgroup_procs.clear();
    }

    /// A violation recorded by the cgroups (read after the command stopped).
    pub fn cgroup_violations(&self) -> Vec<GuardViolation> {
        let mut found = Vec::new();
        if let Some(dir) = &self.pids_cgroup {
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
        if let Some(dir) = &self.memory_cgroup {
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
        let dir = self.cpu_cgroup.as_ref()?;
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
    pub fn kill_cgroups(&self) -> usize {
        let mut killed = 0;
        for dir in &self.cgroups {
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
    pub fn cleanup(&self) {
        for dir in &self.cgroups {
            for _ in 0..100 {
                if std::fs::remove_dir(dir).is_ok() {
                    break;
                }
                self.kill_cgroups();
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }

    /// True when `path` may be opened with this intent.
    pub fn allows(&self, path: &Path, write: bool) -> bool {
        let user = if write {
            &self.write[..]
        } else {
            &self.read[..]
        };
        let system = if write { SYSTEM_WRITE } else { SYSTEM_READ };
        user.iter().any(|root| path.starts_with(root))
            || (!write && self.write.iter().any(|root| path.starts_with(root)))
            || system.iter().any(|root| path.starts_with(root))
    }
}

fn send_fd(socket: RawFd, fd: RawFd) -> std::io::Result<()> {
    // SAFETY: builds a one-fd SCM_RIGHTS message in stack buffers.
    unsafe {
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut control = [0u64; 4];
        let mut message: libc::msghdr = std::mem::zeroed();
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = libc::CMSG_SPACE(4) as _;
        let header = libc::CMSG_FIRSTHDR(&message);
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = libc::CMSG_LEN(4) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(header).cast::<i32>(), fd);
        if libc::sendmsg(socket, &message, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receives the seccomp listener the child sends (blocks until it does).
pub fn receive_fd(socket: &OwnedFd) -> Option<OwnedFd> {
    // SAFETY: receives into stack buffers sized for one fd.
    unsafe {
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut control = [0u64; 4];
        let mut message: libc::msghdr = std::mem::zeroed();
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = libc::CMSG_SPACE(4) as _;
        if libc::recvmsg(socket.as_raw_fd(), &mut message, libc::MSG_CMSG_CLOEXEC) <= 0 {
            return None;
        }
        let header = libc::CMSG_FIRSTHDR(&message);
        if header.is_null() || (*header).cmsg_type != libc::SCM_RIGHTS {
            return None;
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(header).cast::<i32>());
        Some(OwnedFd::from_raw_fd(fd))
    }
}

#[repr(C)]
#[derive(Default)]
struct SeccompData {
    nr: i32,
    arch: u32,
    instruction_pointer: u64,
    args: [u64; 6],
}

#[repr(C)]
#[derive(Default)]
struct Notification {
    id: u64,
    pid: u32,
    flags: u32,
    data: SeccompData,
}

#[repr(C)]
struct Response {
    id: u64,
    val: i64,
    error: i32,
    flags: u32,
}

fn read_string(pid: u32, address: u64) -> Option<String> {
    use std::os::unix::fs::FileExt;
    let memory = std::fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut buffer = vec![0u8; 4096];
    let read = memory.read_at(&mut buffer, address).ok()?;
    let end = buffer[..read].iter().position(|&b| b == 0)?;
    Some(String::from_utf8_lossy(&buffer[..end]).into_owned())
}

fn read_u64(pid: u32, address: u64) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let memory = std::fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut buffer = [0u8; 8];
    memory.read_exact_at(&mut buffer, address).ok()?;
    Some(u64::from_ne_bytes(buffer))
}

/// The paths a notified call would touch, as the command sees them, each
/// with whether it writes. An argument that cannot be read yields nothing:
/// the kernel (and Landlock) decide alone.
fn requested_accesses(pid: u32, nr: i64, args: &[u64; 6]) -> Vec<(PathBuf, bool)> {
    let resolve = |dirfd: i64, address: u64| -> Option<PathBuf> {
        let raw = read_string(pid, address)?;
        let base = if raw.starts_with('/') {
            PathBuf::new()
        } else if dirfd == libc::AT_FDCWD as i64 {
            std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default()
        } else {
            std::fs::read_link(format!("/proc/{pid}/fd/{dirfd}")).unwrap_or_default()
        };
        Some(normalize(&base.join(&raw)))
    };
    let cwd = libc::AT_FDCWD as i64;
    let fd = |index: usize| args[index] as i32 as i64;
    if let Some(&(_, paths)) = tree_changes().find(|(call, _)| *call == nr) {
        return paths
            .iter()
            .filter_map(|arg| {
                let path = resolve(arg.dir.map_or(cwd, fd), args[arg.path])?;
                let exists = path.symlink_metadata().is_ok();
                let changes_something = match arg.role {
                    PathRole::Creates => !exists,
                    PathRole::Changes => exists,
                    PathRole::Replaces => true,
                };
                changes_something.then_some((path, true))
            })
            .collect();
    }
    let (dirfd, path_at, flags) = if Some(nr) == arch::OPEN {
        (cwd, args[0], args[1])
    } else if Some(nr) == arch::CREAT {
        (
            cwd,
            args[0],
            (libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC) as u64,
        )
    } else if nr == arch::OPENAT2 {
        (fd(0), args[1], read_u64(pid, args[2]).unwrap_or(0))
    } else {
        (fd(0), args[1], args[2])
    };
    let flags = flags as i32;
    let write =
        flags & libc::O_ACCMODE != libc::O_RDONLY || flags & (libc::O_CREAT | libc::O_TRUNC) != 0;
    resolve(dirfd, path_at)
        .map(|path| (path, write))
        .into_iter()
        .collect()
}

/// The command's own descriptors (/dev/stdout, /proc/self/fd/N…): Landlock
/// decides, there is nothing path-based to report.
fn is_own_descriptor(path: &Path) -> bool {
    path.starts_with("/dev/fd")
        || path.starts_with("/proc/self/fd")
        || path.starts_with("/proc/thread-self/fd")
        || ["/dev/stdin", "/dev/stdout", "/dev/stderr", "/dev/tty"]
            .iter()
            .any(|special| path == Path::new(special))
}

/// Answers the command's `open` calls and the calls that change the file
/// tree (mkdir, unlink, rename, link, symlink, truncate, mknod): continues
/// those the policy allows (Landlock still enforces them) and refuses the
/// rest with EACCES, recording a violation. Returns when the command and every child of it are gone.
pub fn supervise(
    listener: OwnedFd,
    sandbox: Arc<Sandbox>,
    violations: Arc<Mutex<Vec<GuardViolation>>>,
) {
    loop {
        let mut notification = Notification::default();
        // SAFETY: the ioctl fills a correctly sized seccomp_notif.
        if unsafe {
            libc::ioctl(
                listener.as_raw_fd(),
                SECCOMP_IOCTL_NOTIF_RECV,
                &mut notification,
            )
        } != 0
        {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return; // ENOENT: no process uses the filter any more
        }
        let accesses = requested_accesses(
            notification.pid,
            i64::from(notification.data.nr),
            &notification.data.args,
        );
        let denied: Vec<&(PathBuf, bool)> = accesses
            .iter()
            .filter(|(path, write)| !is_own_descriptor(path) && !sandbox.allows(path, *write))
            .collect();
        let allowed = denied.is_empty();
        // SAFETY: checks that the notification still refers to a live syscall.
        let valid = unsafe {
            libc::ioctl(
                listener.as_raw_fd(),
                SECCOMP_IOCTL_NOTIF_ID_VALID,
                &notification.id,
            )
        } == 0;
        if !valid {
            continue;
        }
        if !allowed {
            let mut list = violations.lock().unwrap_or_else(|p| p.into_inner());
            for (path, write) in denied {
                // Bounded: a command that hammers the policy must not make
                // its own result unreadable.
                if list.len() < MAX_REPORTED_VIOLATIONS {
                    list.push(GuardViolation {
                        kind: if *write { "write" } else { "read" }.into(),
                        detail: path.display().to_string().chars().take(512).collect(),
                    });
                }
            }
        }
        let response = Response {
            id: notification.id,
            val: 0,
            error: if allowed { 0 } else { -libc::EACCES },
            flags: if allowed {
                SECCOMP_USER_NOTIF_FLAG_CONTINUE
            } else {
                0
            },
        };
        // SAFETY: sends a correctly sized seccomp_notif_resp.
        unsafe { libc::ioctl(listener.as_raw_fd(), SECCOMP_IOCTL_NOTIF_SEND, &response) };
    }
}

/// A child started by [`spawn`]: its pid and the parent's ends of its pipes.
pub struct RawChild {
    pub pid: i32,
    pub stdin: std::fs::File,
    pub stdout: std::fs::File,
    pub stderr: std::fs::File,
}

struct ChildArgs<'a> {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    fds: [RawFd; 3],
    error: RawFd,
    sandbox: &'a Sandbox,
}

extern "C" fn child_main(argument: *mut libc::c_void) -> libc::c_int {
    // SAFETY: runs in the vfork-style child, which shares the parent's memory
    // while the parent is suspended; `argument` points to the parent's
    // `ChildArgs`, alive until exec. Only system calls follow: no allocation,
    // no locks.
    unsafe {
        let args = &*(argument as *const ChildArgs<'_>);
        let fail = |code: i32| -> libc::c_int {
            libc::write(args.error, (&code as *const i32).cast(), 4);
            libc::_exit(127)
        };
        // Deno's handlers must not run here (this child shares the parent's
        // memory): every caught signal goes back to its default while all
        // are still blocked, then the mask is cleared (what posix_spawn does).
        for signal in 1..=libc::SIGRTMAX() {
            let mut current: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut current) == 0
                && current.sa_sigaction != libc::SIG_IGN
                && current.sa_sigaction != libc::SIG_DFL
            {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(signal, &default, std::ptr::null_mut());
            }
        }
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        for (target, &fd) in args.fds.iter().enumerate() {
            if libc::dup2(fd, target as i32) < 0 {
                return fail(*libc::__errno_location());
            }
        }
        if !args.cwd.is_null() && libc::chdir(args.cwd) != 0 {
            return fail(*libc::__errno_location());
        }
        if let Err(error) = args.sandbox.enter() {
            return fail(error.raw_os_error().unwrap_or(libc::EPERM));
        }
        libc::execve(args.path, args.argv, args.envp);
        fail(*libc::__errno_location())
    }
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for both ends.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh fds owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Starts `path` like `posix_spawn` does: a `CLONE_VM | CLONE_VFORK` child
/// that shares the parent's memory until it execs, so starting a command
/// from a large process costs no page-table copy. The child sets up its
/// stdio, enters the sandbox and execs; an error before exec comes back
/// through a pipe.
pub fn spawn(
    path: &CString,
    argv: &[CString],
    envp: &[CString],
    cwd: Option<&CString>,
    sandbox: &Sandbox,
) -> std::io::Result<RawChild> {
    let (stdin_read, stdin_write) = pipe()?;
    let (stdout_read, stdout_write) = pipe()?;
    let (stderr_read, stderr_write) = pipe()?;
    let (error_read, error_write) = pipe()?;
    let pointers = |strings: &[CString]| {
        let mut list: Vec<*const libc::c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        list.push(std::ptr::null());
        list
    };
    let argv = pointers(argv);
    let envp = pointers(envp);
    let args = ChildArgs {
        path: path.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: cwd.map_or(std::ptr::null(), |cwd| cwd.as_ptr()),
        fds: [
            stdin_read.as_raw_fd(),
            stdout_write.as_raw_fd(),
            stderr_write.as_raw_fd(),
        ],
        error: error_write.as_raw_fd(),
        sandbox,
    };
    let mut stack = vec![0u8; 256 * 1024];
    // Block every signal around the clone (the child restores defaults first).
    // SAFETY: sigset operations on local values.
    let previous = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous);
        previous
    };
    // SAFETY: the stack grows down from its (16-byte aligned) top; the
    // child only touches `args` and its own stack before exec; CLONE_VFORK
    // keeps this frame (and `stack`) alive until then.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(stack.len()) as usize & !15;
        libc::clone(
            child_main,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &args as *const ChildArgs<'_> as *mut libc::c_void,
        )
    };
    let clone_error = std::io::Error::last_os_error();
    // SAFETY: restores this thread's mask.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut()) };
    if pid < 0 {
        return Err(clone_error);
    }
    drop((stdin_read, stdout_write, stderr_write, error_write));
    let mut code = [0u8; 4];
    let read = std::io::Read::read(&mut std::fs::File::from(error_read), &mut code).unwrap_or(0);
    if read == 4 {
        let mut status = 0;
        // SAFETY: reaps the child that failed before exec.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        return Err(std::io::Error::from_raw_os_error(i32::from_ne_bytes(code)));
    }
    Ok(RawChild {
        pid,
        stdin: stdin_write.into(),
        stdout: stdout_read.into(),
        stderr: stderr_read.into(),
    })
}

/// Waits for a child started by [`spawn`]: its wait status, rusage, and
/// whether processes of its group were still alive when it exited (they are
/// killed before the child is reaped, while its zombie still holds the pid
/// and the group id, so no recycled pid can be hit).
pub fn wait(
    pid: i32,
    tracked: Option<&Path>,
    reaped: &Mutex<bool>,
) -> std::io::Result<(i32, libc::rusage, bool)> {
    // SAFETY: waitid with WNOWAIT leaves the zombie in place.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        while libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOWAIT,
        ) != 0
        {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EINTR) {
                return Err(error);
            }
        }
    }
    let orphans = match tracked {
        // The tracking cgroup lists the tree (a cheap read), including
        // processes that left the group.
        Some(procs) => std::fs::read_to_string(procs)
            .unwrap_or_default()
            .lines()
            .any(|line| line.trim().parse::<i32>().is_ok_and(|member| member != pid)),
        None => group_members(pid) > 0,
    };
    if orphans {
        // SAFETY: the group id cannot be recycled while the leader's zombie exists.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    // Reap under the lock that killers check: no signal can reach a recycled pid.
    let mut flag = reaped.lock().unwrap_or_else(|p| p.into_inner());
    let (status, usage) = reap(pid)?;
    *flag = true;
    Ok((status, usage, orphans))
}

/// Processes of process group `leader` other than the leader itself.
fn group_members(leader: i32) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != leader)
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(2)?.parse::<i32>().ok())
                    == Some(leader)
            })
        })
        .count()
}

fn reap(pid: i32) -> std::io::Result<(i32, libc::rusage)> {
    let mut status = 0;
    // SAFETY: rusage is plain data, filled by wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waits for our own child.
        let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if reaped == pid {
            return Ok((status, usage));
        }
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EINTR) {
            return Err(error);
        }
    }
}
