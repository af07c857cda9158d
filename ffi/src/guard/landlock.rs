//! Landlock (Linux): the file-system rules a guarded command restricts itself
//! to before `exec`. The ruleset is built in the parent from a
//! [`FileAccess`] (opening paths allocates and may fail); the child only
//! calls [`restrict_self`], a single system call. The system paths are
//! opened once per process, since they are the same for every command.

use super::access::{FileAccess, SYSTEM_READ, SYSTEM_WRITE};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::OnceLock;

const LANDLOCK_CREATE_RULESET: libc::c_long = 444;
const LANDLOCK_ADD_RULE: libc::c_long = 445;
const LANDLOCK_RESTRICT_SELF: libc::c_long = 446;
const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
const LANDLOCK_RULE_PATH_BENEATH: u32 = 1;
const FS_EXECUTE: u64 = 1 << 0;
const FS_READ_FILE: u64 = 1 << 2;
const FS_READ_DIR: u64 = 1 << 3;

fn abi() -> i64 {
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

/// Landlock's ABI version here (0 = unavailable).
pub fn version() -> i64 {
    abi().max(0)
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

/// A ruleset that allows the system paths and `access`'s roots and handles
/// every file-system right this kernel's Landlock knows (so anything else
/// is denied), or why there is none.
pub fn ruleset(access: &FileAccess) -> Result<OwnedFd, String> {
    let abi = abi();
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
    for path in &access.read {
        add_path(path, FS_EXECUTE | FS_READ_FILE | FS_READ_DIR);
    }
    for path in &access.write {
        add_path(path, all);
    }
    Ok(ruleset)
}

/// Restricts the calling process to `ruleset`, for good; false when the
/// kernel refused. Meant for the child between fork and exec: one system
/// call, no allocation.
pub fn restrict_self(ruleset: &OwnedFd) -> bool {
    // SAFETY: a plain system call on a valid ruleset fd; it touches no memory
    // of ours.
    unsafe { libc::syscall(LANDLOCK_RESTRICT_SELF, ruleset.as_raw_fd(), 0u32) == 0 }
}
