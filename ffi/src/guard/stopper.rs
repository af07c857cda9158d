//! The kill switch of a guarded command: kills its whole tree once (the
//! process group on Unix, the job object on Windows), never after the
//! command was reaped (its pid may be recycled by then), and keeps the
//! violations that say why (and whatever else went wrong) for the result.

use crate::proto::GuardViolation;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[cfg(windows)]
use super::job::Job;

/// The violations of one command, shared with whoever finds them.
pub type Violations = Arc<Mutex<Vec<GuardViolation>>>;

/// Kills the whole tree, once, remembering why.
pub struct Stopper {
    #[cfg_attr(windows, allow(dead_code))]
    pid: u32,
    killed: AtomicBool,
    /// Set (under the lock) once the command's pid has been reaped.
    reaped: Arc<Mutex<bool>>,
    violations: Violations,
    #[cfg(windows)]
    job: Option<Job>,
}

impl Stopper {
    pub fn new(
        pid: u32,
        reaped: Arc<Mutex<bool>>,
        violations: Violations,
        #[cfg(windows)] job: Option<Job>,
    ) -> Stopper {
        Stopper {
            pid,
            killed: AtomicBool::new(false),
            reaped,
            violations,
            #[cfg(windows)]
            job,
        }
    }

    /// Adds a violation to the command's result.
    pub fn record(&self, kind: &str, detail: impl Into<String>) {
        self.violations().push(GuardViolation {
            kind: kind.into(),
            detail: detail.into(),
        });
    }

    /// Adds `violation` unless one of its kind is already recorded.
    pub fn record_kind_once(&self, violation: GuardViolation) {
        let mut list = self.violations();
        if !list.iter().any(|v| v.kind == violation.kind) {
            list.push(violation);
        }
    }

    /// The violations recorded so far (locked).
    pub fn violations(&self) -> std::sync::MutexGuard<'_, Vec<GuardViolation>> {
        self.violations.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether [`Stopper::kill`] was called.
    #[cfg_attr(not(unix), allow(dead_code))]
    pub fn was_killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    /// Kills the tree (once), recording `kind` and its detail as a violation.
    pub fn kill(&self, kind: Option<(&str, String)>) {
        if let Some((kind, detail)) = kind {
            self.record(kind, detail);
        }
        if self.killed.swap(true, Ordering::SeqCst) {
            return;
        }
        // Held while signalling: once the command is reaped its pid may be
        // recycled, and the reaper sets the flag under this same lock.
        let reaped = self.reaped.lock().unwrap_or_else(|p| p.into_inner());
        if *reaped {
            return;
        }
        #[cfg(unix)]
        // SAFETY: signalling a process group has no memory-safety preconditions.
        unsafe {
            libc::kill(-(self.pid as i32), libc::SIGKILL);
            libc::kill(self.pid as i32, libc::SIGKILL);
        }
        #[cfg(windows)]
        self.terminate_job();
    }

    /// Terminates the job object, whether or not the command was reaped
    /// (the job, unlike a pid, cannot be recycled).
    #[cfg(windows)]
    pub fn terminate_job(&self) {
        if let Some(job) = &self.job {
            job.terminate();
        }
    }
}
