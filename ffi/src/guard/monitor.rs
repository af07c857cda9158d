//! The monitor: a thread (from the kernel's blocking pool) that checks a
//! running command every 10 ms and kills its tree, recording why, when it
//! runs past `timeoutMs`, has used more than `maxCpuMs` of CPU (the whole
//! tree's where a cpu cgroup measures it), or hits a cgroup limit. It ends
//! with the first kill or once the waiter says the command is gone.

use super::stopper::Stopper;
use super::tree::Tree;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The limits the monitor enforces (0 = none).
#[derive(Clone, Copy)]
pub struct Limits {
    pub timeout_ms: u64,
    pub max_cpu_ms: u64,
}

/// Starts monitoring the command started at `started` until `done`.
pub fn start(
    runtime: &tokio::runtime::Handle,
    limits: Limits,
    started: Instant,
    tree: Arc<Tree>,
    stop: Arc<Stopper>,
    done: Arc<AtomicBool>,
) {
    runtime.spawn_blocking(move || {
        while !done.load(Ordering::SeqCst) {
            let elapsed = started.elapsed();
            if limits.timeout_ms > 0 && elapsed >= Duration::from_millis(limits.timeout_ms) {
                stop.kill(Some((
                    "timeout",
                    format!("still running after timeoutMs ({} ms)", limits.timeout_ms),
                )));
                return;
            }
            if limits.max_cpu_ms > 0 {
                if let Some(used) = tree.cpu_ms() {
                    if used > limits.max_cpu_ms {
                        stop.kill(Some((
                            "cpu",
                            format!("used {used} ms of CPU, maxCpuMs is {}", limits.max_cpu_ms),
                        )));
                        return;
                    }
                }
            }
            if let Some(first) = tree.limit_hit() {
                stop.kill(Some((first.kind.as_str(), first.detail)));
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
}
