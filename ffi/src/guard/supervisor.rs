//! The supervisor (Linux): a thread that answers the seccomp user
//! notifications of one command. For every `open*` and every call that
//! changes the file tree it reads the path arguments from the command's
//! memory, resolves them as the command sees them, and checks them against
//! the policy's [`FileAccess`]: allowed calls continue (Landlock still
//! enforces them), the rest fail with `EACCES` and are recorded as `read` or
//! `write` violations, at most [`MAX_REPORTED_VIOLATIONS`] per command.

use super::access::{normalize, FileAccess};
use super::seccomp::{arch, tree_changes, PathRole};
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
        let accesses = requested_accesses(
            notification.pid,
            i64::from(notification.data.nr),
            &notification.data.args,
        );
        let denied: Vec<&(PathBuf, bool)> = accesses
            .iter()
            .filter(|(path, write)| !is_own_descriptor(path) && !access.allows(path, *write))
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
