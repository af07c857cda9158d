//! The waiter: a thread (from the kernel's blocking pool) that blocks until
//! the command exits, stops what is left of its tree, gathers the exit
//! status, usage, violations, output and isolation into one `GuardResult`,
//! and publishes it, encoded once, in the command's [`Outcome`], where
//! `krepis_guard_result` finds it, then posts an `EVENT_GUARD` with the
//! command's handle on the kernel's event queue (after publishing, so JS
//! never wakes to a result that is not there). Finally it removes the
//! command's cgroups.

use super::output::Output;
use super::spawned::{Exit, Waiter};
use super::stopper::Stopper;
use super::tree::Tree;
use crate::events::{EventQueue, EVENT_GUARD};
use crate::proto::{GuardIsolation, GuardResult, GuardUsage};
use prost::Message;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The result of a command once it ended.
#[derive(Default)]
pub struct Outcome {
    /// The encoded `GuardResult`: encoded once, since JS may read it twice
    /// (a first buffer too small for collected output).
    result: Mutex<Option<Vec<u8>>>,
}

impl Outcome {
    fn publish(&self, result: &GuardResult) {
        *self.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(result.encode_to_vec());
    }

    /// Whether the command ended (and its result is published).
    pub fn is_published(&self) -> bool {
        self.result
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Hands the encoded result to `read` once it is published (`None`:
    /// still running). Never blocks on the command.
    pub fn read<T>(&self, read: impl FnOnce(&[u8]) -> T) -> Option<T> {
        let result = self.result.lock().unwrap_or_else(|p| p.into_inner());
        result.as_deref().map(read)
    }
}

/// What the waiter needs of a started command.
pub struct Waiting {
    pub wait: Waiter,
    pub tree: Arc<Tree>,
    pub stop: Arc<Stopper>,
    pub output: Output,
    pub isolation: GuardIsolation,
    pub started: Instant,
    /// Set once the command exited: the monitor's signal to end.
    pub done: Arc<AtomicBool>,
    /// From the policy: what a SIGXCPU means.
    pub max_cpu_ms: u64,
    pub outcome: Arc<Outcome>,
    /// Where JS learns that the command ended, and its handle there.
    pub events: Arc<EventQueue>,
    pub handle: u32,
}

/// Starts the waiter of a command.
pub fn start(runtime: &tokio::runtime::Handle, waiting: Waiting) {
    runtime.spawn_blocking(move || finish(waiting));
}

fn finish(waiting: Waiting) {
    let Waiting {
        wait,
        tree,
        stop,
        output,
        isolation,
        started,
        done,
        max_cpu_ms,
        outcome,
        events,
        handle,
    } = waiting;
    // Whatever happens below (even a panic), the cgroups are removed, after
    // the result is published.
    let _cleanup = tree.cleanup_on_drop();
    let status = wait();
    done.store(true, Ordering::SeqCst);
    let wall_ms = started.elapsed().as_millis() as u64;
    let mut result = GuardResult::default();
    let (mut cpu_ms, mut max_rss_bytes) = (0, 0);
    let left_orphans = matches!(
        &status,
        Ok(Exit {
            left_orphans: true,
            ..
        })
    );
    match &status {
        Ok(exit) => {
            result.code = exit.code.unwrap_or(-1);
            (cpu_ms, max_rss_bytes) = (exit.cpu_ms, exit.max_rss_bytes);
            #[cfg(unix)]
            if let Some(signal) = exit.signal {
                result.signal = signal_name(signal);
                record_signal(signal, &stop, max_cpu_ms);
            }
        }
        Err(error) => result.signal = format!("wait failed: {error}"),
    }
    #[cfg(not(unix))]
    let _ = max_cpu_ms;
    // Anything of the tree still alive is an orphan: stop it.
    if tree.stop_leftovers(left_orphans, &stop) {
        stop.record(
            "orphans",
            "processes were left running after the command exited; they were killed",
        );
    }
    for violation in tree.final_violations() {
        stop.record_kind_once(violation);
    }
    output.complete(&mut result, &stop);
    result.usage = Some(GuardUsage {
        wall_ms,
        cpu_ms,
        max_rss_bytes,
        rss_bytes: 0,
    });
    result.violations = stop.violations().clone();
    result.isolation = Some(isolation);
    outcome.publish(&result);
    events.push(EVENT_GUARD, handle);
}

/// The violation a fatal signal stands for, if any.
#[cfg(unix)]
fn record_signal(signal: i32, stop: &Stopper, max_cpu_ms: u64) {
    // Every call the policy refuses is refused (and reported) by the
    // supervisor; the filter kills only on a call it cannot judge.
    if signal == libc::SIGSYS {
        stop.record(
            "syscall",
            "killed by seccomp: a system call of another architecture (x32 or 32-bit)",
        );
    }
    if signal == libc::SIGXCPU && !stop.was_killed() {
        stop.record("cpu", format!("exceeded maxCpuMs ({max_cpu_ms} ms)"));
    }
}

#[cfg(unix)]
fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGSYS => "SIGSYS".into(),
        libc::SIGXCPU => "SIGXCPU".into(),
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGABRT => "SIGABRT".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGPIPE => "SIGPIPE".into(),
        other => format!("SIG{other}"),
    }
}
