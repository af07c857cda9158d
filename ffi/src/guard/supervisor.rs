//! The supervisor (Linux): a thread that answers the seccomp user
//! notifications of one command ([`verdict`] decides each one):
//! - every `open*` and every call that changes the file tree: it reads the
//!   path arguments from the command's memory, resolves them as the command
//!   sees them, and checks them against the policy's [`FileAccess`]: allowed
//!   calls continue (Landlock still enforces them), the rest fail with
//!   `EACCES` and are recorded as `read` or `write` violations;
//! - modes and owners (`chmod`, `fchmod*`, `chown*`): set-id bits are refused
//!   (`EPERM`, a `privilege` violation; also when a file is created with
//!   them), a path outside `write` like a tree change;
//! - calls the filter refuses (keyrings, SysV IPC, mounts, namespaces, …):
//!   `EPERM` and a `syscall` violation naming the call;
//! - sockets the policy does not allow and (without `net`) every `connect`:
//!   `EACCES` and a `net` violation, except a connect to a unix socket path
//!   that does not exist (glibc probes nscd's), which gets `ENOENT` silently.
//!
//! Refusals are decided on the call's registers or on a copy of its memory
//! and never continue, so a command changing its memory meanwhile gains
//! nothing; a continued call is re-checked by Landlock. At most
//! [`MAX_REPORTED_VIOLATIONS`] violations are kept per command.

use super::access::{normalize, FileAccess};
use super::seccomp::{
    arch, attribute_changes, refused_calls, tree_changes, PathRole, CLONE_NEWTIME, NAMESPACE_FLAGS,
    SOCK_TYPE_MASK,
};
use crate::proto::GuardViolation;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const SECCOMP_IOCTL_NOTIF_RECV: libc::c_ulong = 0xc050_2100;
const SECCOMP_IOCTL_NOTIF_SEND: libc::c_ulong = 0xc018_2101;
const SECCOMP_IOCTL_NOTIF_ID_VALID: libc::c_ulong = 0x4008_2102;
const SECCOMP_USER_NOTIF_FLAG_CONTINUE: u32 = 1;
/// Most file violations reported per command (the first ones).
pub const MAX_REPORTED_VIOLATIONS: usize = 64;

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
        Some(resolve_at(pid, dirfd, &read_string(pid, address)?))
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

/// How the supervisor answers one notification.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// The call goes on (Landlock still enforces it).
    Continue,
    /// The call fails with `errno`; `report` holds the violations (kind,
    /// detail) it is worth, if any.
    Refuse {
        errno: i32,
        report: Vec<(&'static str, String)>,
    },
}

fn refuse(errno: i32, kind: &'static str, detail: String) -> Verdict {
    Verdict::Refuse {
        errno,
        report: vec![(kind, detail)],
    }
}

/// Fails with `errno`, reporting nothing (what the kernel would have said).
fn fail_quietly(errno: i32) -> Verdict {
    Verdict::Refuse {
        errno,
        report: Vec::new(),
    }
}

/// Set-id bits: a file with them runs with its owner's (or group's) ids.
const SET_ID_BITS: u64 = (libc::S_ISUID | libc::S_ISGID) as u64;

fn family_name(family: i32) -> String {
    match family {
        libc::AF_UNIX => "AF_UNIX".into(),
        libc::AF_INET => "AF_INET".into(),
        libc::AF_INET6 => "AF_INET6".into(),
        libc::AF_NETLINK => "AF_NETLINK".into(),
        libc::AF_VSOCK => "AF_VSOCK".into(),
        libc::AF_PACKET => "AF_PACKET".into(),
        other => format!("family {other}"),
    }
}

fn type_name(kind: u64) -> &'static str {
    match kind as i32 & SOCK_TYPE_MASK as i32 {
        libc::SOCK_STREAM => "SOCK_STREAM",
        libc::SOCK_DGRAM => "SOCK_DGRAM",
        libc::SOCK_SEQPACKET => "SOCK_SEQPACKET",
        libc::SOCK_RAW => "SOCK_RAW",
        _ => "another type",
    }
}

/// Reads `len` bytes of the command's memory at `address`.
fn read_bytes(pid: u32, address: u64, len: usize) -> Option<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let memory = std::fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut buffer = vec![0u8; len];
    let read = memory.read_at(&mut buffer, address).ok()?;
    buffer.truncate(read);
    Some(buffer)
}

/// A path of the command, as it sees it: `raw` relative to the directory
/// fd `dirfd` (or its cwd).
fn resolve_at(pid: u32, dirfd: i64, raw: &str) -> PathBuf {
    let base = if raw.starts_with('/') {
        PathBuf::new()
    } else if dirfd == libc::AT_FDCWD as i64 {
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default()
    } else {
        std::fs::read_link(format!("/proc/{pid}/fd/{dirfd}")).unwrap_or_default()
    };
    normalize(&base.join(raw))
}

/// `connect` without `net`: never continued. A unix socket path that does
/// not exist is the kernel's `ENOENT` (glibc probes nscd's socket), any
/// other address is refused and reported.
fn connect_verdict(pid: u32, args: &[u64; 6]) -> Verdict {
    let len = (args[2] as usize).min(std::mem::size_of::<libc::sockaddr_un>());
    let address = read_bytes(pid, args[1], len).unwrap_or_default();
    if address.len() < 2 {
        return fail_quietly(libc::EINVAL);
    }
    let family = i32::from(u16::from_ne_bytes([address[0], address[1]]));
    let path = &address[2..];
    if family != libc::AF_UNIX {
        return refuse(
            libc::EACCES,
            "net",
            format!(
                "connect to an {} address (net is false)",
                family_name(family)
            ),
        );
    }
    match path.first() {
        None => fail_quietly(libc::EINVAL),
        Some(0) => {
            let name = String::from_utf8_lossy(&path[1..]).replace('\0', "@");
            refuse(
                libc::EACCES,
                "net",
                format!("connect to the abstract unix socket @{name} (net is false)"),
            )
        }
        Some(_) => {
            let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
            let raw = String::from_utf8_lossy(&path[..end]).into_owned();
            let resolved = resolve_at(pid, libc::AT_FDCWD as i64, &raw);
            if resolved.symlink_metadata().is_err() {
                return fail_quietly(libc::ENOENT);
            }
            refuse(
                libc::EACCES,
                "net",
                format!(
                    "connect to the unix socket {} (net is false)",
                    resolved.display()
                ),
            )
        }
    }
}

/// A mode or owner change: set-id bits are refused; a path outside `write`
/// is refused like a tree change (only when it exists).
fn attribute_verdict(pid: u32, nr: i64, args: &[u64; 6], access: &FileAccess) -> Option<Verdict> {
    let change = attribute_changes().find(|change| change.nr == nr)?;
    if let Some(mode) = change.mode {
        if args[mode] & SET_ID_BITS != 0 {
            return Some(refuse(
                libc::EPERM,
                "privilege",
                format!("setting set-id bits (mode {:o})", args[mode] & 0o7777),
            ));
        }
    }
    let fd = |index: usize| args[index] as i32 as i64;
    let path = match change.path {
        Some(at) => resolve_at(
            pid,
            change.dir.map_or(libc::AT_FDCWD as i64, fd),
            &read_string(pid, args[at])?,
        ),
        None => normalize(&std::fs::read_link(format!("/proc/{pid}/fd/{}", fd(0))).ok()?),
    };
    if path.symlink_metadata().is_err() || is_own_descriptor(&path) || access.allows(&path, true) {
        return Some(Verdict::Continue);
    }
    let what = if change.mode.is_some() {
        "changing the mode of"
    } else {
        "changing the owner of"
    };
    Some(refuse(
        libc::EACCES,
        "write",
        format!("{what} {}", path.display()),
    ))
}

/// The mode a notified call would create a file with (open with O_CREAT,
/// creat, mknod), when it has set-id bits.
fn creates_set_id(pid: u32, nr: i64, args: &[u64; 6]) -> Option<u64> {
    let (flags, mode) = if Some(nr) == arch::OPEN {
        (args[1], args[2])
    } else if Some(nr) == arch::CREAT {
        (libc::O_CREAT as u64, args[1])
    } else if nr == arch::OPENAT {
        (args[2], args[3])
    } else if nr == arch::OPENAT2 {
        // struct open_how { u64 flags; u64 mode; u64 resolve; }
        let how = read_bytes(pid, args[2], 16)?;
        let word = |at: usize| -> Option<u64> {
            Some(u64::from_ne_bytes(how.get(at..at + 8)?.try_into().ok()?))
        };
        (word(0)?, word(8)?)
    } else if nr == libc::SYS_mknodat {
        (libc::O_CREAT as u64, args[2])
    } else {
        #[cfg(target_arch = "x86_64")]
        if nr == libc::SYS_mknod {
            return (args[1] & SET_ID_BITS != 0).then_some(args[1]);
        }
        return None;
    };
    (flags & libc::O_CREAT as u64 != 0 && mode & SET_ID_BITS != 0).then_some(mode)
}

/// Decides one notification of the command `pid` under `access`.
pub fn verdict(pid: u32, nr: i64, args: &[u64; 6], access: &FileAccess) -> Verdict {
    if let Some(call) = refused_calls().find(|call| call.nr == nr) {
        return refuse(
            libc::EPERM,
            "syscall",
            format!(
                "{}: {} are not reachable from the guard",
                call.name, call.reaches
            ),
        );
    }
    if nr == libc::SYS_clone || nr == libc::SYS_unshare {
        let name = if nr == libc::SYS_clone {
            "clone"
        } else {
            "unshare"
        };
        let flags = args[0] & u64::from(NAMESPACE_FLAGS | CLONE_NEWTIME);
        return refuse(
            libc::EPERM,
            "syscall",
            format!("{name} with namespace flags {flags:#x}: new namespaces are not available"),
        );
    }
    if nr == libc::SYS_socket || nr == libc::SYS_socketpair {
        let call = if nr == libc::SYS_socket {
            "socket"
        } else {
            "socketpair"
        };
        return refuse(
            libc::EACCES,
            "net",
            format!(
                "{call}({}, {}) refused by the policy",
                family_name(args[0] as i32),
                type_name(args[1])
            ),
        );
    }
    if nr == libc::SYS_connect {
        return connect_verdict(pid, args);
    }
    if let Some(verdict) = attribute_verdict(pid, nr, args, access) {
        return verdict;
    }
    if let Some(mode) = creates_set_id(pid, nr, args) {
        return refuse(
            libc::EPERM,
            "privilege",
            format!(
                "creating a file with set-id bits (mode {:o})",
                mode & 0o7777
            ),
        );
    }
    let denied: Vec<(&'static str, String)> = requested_accesses(pid, nr, args)
        .into_iter()
        .filter(|(path, write)| !is_own_descriptor(path) && !access.allows(path, *write))
        .map(|(path, write)| {
            let kind = if write { "write" } else { "read" };
            (kind, path.display().to_string())
        })
        .collect();
    if denied.is_empty() {
        Verdict::Continue
    } else {
        Verdict::Refuse {
            errno: libc::EACCES,
            report: denied,
        }
    }
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

/// Answers the command's notifications (see [`verdict`]): continues what
/// the policy allows and refuses the rest, recording the violations.
/// Returns when the command and every child of it are gone.
pub fn supervise(
    listener: OwnedFd,
    access: Arc<FileAccess>,
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
        let verdict = verdict(
            notification.pid,
            i64::from(notification.data.nr),
            &notification.data.args,
            &access,
        );
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
        let response = match verdict {
            Verdict::Continue => Response {
                id: notification.id,
                val: 0,
                error: 0,
                flags: SECCOMP_USER_NOTIF_FLAG_CONTINUE,
            },
            Verdict::Refuse { errno, report } => {
                let mut list = violations.lock().unwrap_or_else(|p| p.into_inner());
                for (kind, detail) in report {
                    // Bounded: a command that hammers the policy must not make
                    // its own result unreadable.
                    if list.len() < MAX_REPORTED_VIOLATIONS {
                        list.push(GuardViolation {
                            kind: kind.into(),
                            detail: detail.chars().take(512).collect(),
                        });
                    }
                }
                Response {
                    id: notification.id,
                    val: 0,
                    error: -errno,
                    flags: 0,
                }
            }
        };
        // SAFETY: sends a correctly sized seccomp_notif_resp.
        unsafe { libc::ioctl(listener.as_raw_fd(), SECCOMP_IOCTL_NOTIF_SEND, &response) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_structures_have_the_sizes_the_ioctls_encode() {
        // The size is part of each ioctl number (bits 16..30).
        let size = |request: libc::c_ulong| ((request >> 16) & 0x3fff) as usize;
        assert_eq!(
            std::mem::size_of::<Notification>(),
            size(SECCOMP_IOCTL_NOTIF_RECV)
        );
        assert_eq!(
            std::mem::size_of::<Response>(),
            size(SECCOMP_IOCTL_NOTIF_SEND)
        );
        assert_eq!(
            std::mem::size_of::<u64>(),
            size(SECCOMP_IOCTL_NOTIF_ID_VALID)
        );
    }

    #[test]
    fn own_descriptors_are_not_judged_by_path() {
        for path in ["/dev/fd/3", "/proc/self/fd/1", "/dev/stdout", "/dev/tty"] {
            assert!(is_own_descriptor(Path::new(path)), "{path}");
        }
        for path in ["/dev/sda", "/proc/1/fd/1", "/dev/stdout2"] {
            assert!(!is_own_descriptor(Path::new(path)), "{path}");
        }
    }

    #[test]
    fn reads_an_open_of_this_process_as_the_kernel_would_report_it() {
        // The supervisor reads another process's memory; its own works the same.
        let path = c"/tmp/./krepis/../probe";
        let args = [
            libc::AT_FDCWD as u64,
            path.as_ptr() as u64,
            (libc::O_WRONLY | libc::O_CREAT) as u64,
            0,
            0,
            0,
        ];
        let found = requested_accesses(std::process::id(), arch::OPENAT, &args);
        assert_eq!(found, [(PathBuf::from("/tmp/probe"), true)]);
    }
}
