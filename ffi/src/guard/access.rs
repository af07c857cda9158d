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

#[cfg(test)]
mod tests {
    use super::*;

    fn access(read: &[&str], write: &[&str]) -> FileAccess {
        FileAccess::of(&GuardPolicy {
            read: read.iter().map(|p| p.to_string()).collect(),
            write: write.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        })
    }

    #[test]
    fn normalize_resolves_dots_lexically_and_stays_below_root() {
        let cases = [
            ("/a/b/../c", "/a/c"),
            ("/a/./b/", "/a/b"),
            ("/../../etc", "/etc"),
            ("/", "/"),
            ("relative/x", "/relative/x"),
            ("/a//b", "/a/b"),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize(Path::new(input)), Path::new(expected), "{input}");
        }
    }

    #[test]
    fn policy_roots_are_normalised() {
        let rules = access(&["/data/../srv/"], &["/tmp/./work"]);
        assert_eq!(rules.read, [PathBuf::from("/srv")]);
        assert_eq!(rules.write, [PathBuf::from("/tmp/work")]);
    }

    #[test]
    fn allows_follows_roots_by_component() {
        let rules = access(&["/srv/data"], &["/tmp/work"]);
        assert!(rules.allows(Path::new("/srv/data/file"), false));
        assert!(!rules.allows(Path::new("/srv/data/file"), true));
        // Writable implies readable.
        assert!(rules.allows(Path::new("/tmp/work/out"), false));
        assert!(rules.allows(Path::new("/tmp/work/out"), true));
        // A root is a path prefix by component, not by text.
        assert!(!rules.allows(Path::new("/srv/database"), false));
        // What every program needs, and nothing more.
        assert!(rules.allows(Path::new("/usr/bin/env"), false));
        assert!(!rules.allows(Path::new("/usr/bin/env"), true));
        assert!(rules.allows(Path::new("/dev/null"), true));
        assert!(!rules.allows(Path::new("/etc/shadow"), false));
    }
}
