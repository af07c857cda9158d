//! Network namespaces for commands without `net` (Linux), created ahead of
//! time: `unshare(CLONE_NEWNET)` costs ~0.4 ms, so a background thread keeps
//! a few fresh ones ready ([`take`]) and the child enters its own with a
//! cheap `setns` ([`enter`]), falling back to creating one. Never shared:
//! each namespace is handed out once.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
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

/// Moves the calling process into `ready` if there is one, else into a new
/// network namespace (unprivileged: a user namespace makes the network one
/// possible); false when nothing worked. Meant for the child between fork
/// and exec: only system calls, no allocation.
pub fn enter(ready: Option<&OwnedFd>) -> bool {
    // SAFETY: plain system calls on a valid fd; they touch no memory of ours.
    unsafe {
        let entered = match ready {
            Some(netns) => libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) == 0,
            None => false,
        };
        entered
            || libc::unshare(libc::CLONE_NEWNET) == 0
            || libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) == 0
    }
}
