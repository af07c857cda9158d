//! Which paths a guarded command may read and write (Linux): the policy's own
//! `read` and `write` roots, normalised, plus what running any program needs
//! ([`SYSTEM_READ`], [`SYSTEM_WRITE`]). Landlock enforces these rules in the
//! child; the supervisor checks every notified call against the same rules so
//! that what Landlock would refuse silently is refused *and reported*.

use crate::proto::GuardPolicy;
use std::path::{Component, Path, PathBuf};

/// Always readable (and executable): what running a program needs.
pub(super) const SYSTEM_READ: &[&str] = &[
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
pub(super) const SYSTEM_WRITE: &[&str] = &["/dev/null"];

/// The policy's read and write roots, normalised (writable implies readable).
pub struct FileAccess {
    pub read: Vec<PathBuf>,
    pub write: Vec<PathBuf>,
}

impl FileAccess {
    /// The roots of `policy` (whose paths were checked to be absolute).
    pub fn of(policy: &GuardPolicy) -> FileAccess {
        let roots = |paths: &[String]| paths.iter().map(|p| normalize(Path::new(p))).collect();
        FileAccess {
            read: roots(&policy.read),
            write: roots(&policy.write),
        }
    }

    /// True when `path` (absolute, normalised) may be opened with this intent.
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

/// `path` as an absolute path without `.` and `..`, resolved lexically: a
/// symlink is not followed (Landlock judges where it really leads), and `..`
/// never climbs above `/`.
pub fn normalize(path: &Path) -> PathBuf {
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
