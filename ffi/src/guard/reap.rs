//! Waiting for a raw child (Linux) without ever signalling a recycled pid:
//! once the command exits its zombie is kept (`waitid(WNOWAIT)`), which
//! pins both its pid and its process-group id, while the rest of its group
//! (or of its tracking cgroup) is found and killed; only then is it reaped,
//! under the lock that every killer checks first.

use super::spawned::Exit;
use std::path::Path;
use std::sync::Mutex;

/// Waits for the child `pid` started by [`super::child::spawn`]: how it
/// ended, its usage, and whether processes of its group (or of the cgroup
/// whose `cgroup.procs` is `tracked`) were still alive when it exited (they
/// are killed before the child is reaped). Sets `reaped` once it is.
pub fn wait(pid: i32, tracked: Option<&Path>, reaped: &Mutex<bool>) -> std::io::Result<Exit> {
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
    drop(flag);
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    let signal = libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status));
    let ms = |time: libc::timeval| time.tv_sec as u64 * 1000 + time.tv_usec as u64 / 1000;
    Ok(Exit {
        code,
        signal,
        cpu_ms: ms(usage.ru_utime) + ms(usage.ru_stime),
        max_rss_bytes: usage.ru_maxrss as u64 * 1024,
        left_orphans: orphans,
    })
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
