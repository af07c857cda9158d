//! The raw child (Linux): starts a program the way `posix_spawn` does, with a
//! `CLONE_VM | CLONE_VFORK` child that shares the parent's memory until it
//! execs, so starting a command from a large process copies no page tables.
//! Before `exec` the child resets signal handling, sets up its stdio and
//! working directory and runs the caller's `pre_exec` step (entering the
//! sandbox); an error before `exec` comes back through a pipe. Also the
//! passing of a descriptor from the child to the parent over a unix socket
//! (`SCM_RIGHTS`), which carries the seccomp listener out of the child.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A child started by [`spawn`]: its pid and the parent's ends of its pipes.
pub struct RawChild {
    pub pid: i32,
    pub stdin: std::fs::File,
    pub stdout: std::fs::File,
    pub stderr: std::fs::File,
}

/// What runs in the child before `exec`: only system calls, no allocation
/// and no locks (the child shares the parent's memory, and another thread
/// of the parent may hold any lock).
pub type PreExec<'a> = &'a dyn Fn() -> std::io::Result<()>;

struct ChildArgs<'a> {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    fds: [RawFd; 3],
    error: RawFd,
    pre_exec: PreExec<'a>,
}

extern "C" fn child_main(argument: *mut libc::c_void) -> libc::c_int {
    // SAFETY: runs in the vfork-style child, which shares the parent's memory
    // while the parent is suspended; `argument` points to the parent's
    // `ChildArgs`, alive until exec. Only system calls follow: no allocation,
    // no locks.
    unsafe {
        let args = &*(argument as *const ChildArgs<'_>);
        let fail = |code: i32| -> libc::c_int {
            libc::write(args.error, (&code as *const i32).cast(), 4);
            libc::_exit(127)
        };
        // Deno's handlers must not run here (this child shares the parent's
        // memory): every caught signal goes back to its default while all
        // are still blocked, then the mask is cleared (what posix_spawn does).
        for signal in 1..=libc::SIGRTMAX() {
            let mut current: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut current) == 0
                && current.sa_sigaction != libc::SIG_IGN
                && current.sa_sigaction != libc::SIG_DFL
            {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(signal, &default, std::ptr::null_mut());
            }
        }
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        for (target, &fd) in args.fds.iter().enumerate() {
            if libc::dup2(fd, target as i32) < 0 {
                return fail(*libc::__errno_location());
            }
        }
        if !args.cwd.is_null() && libc::chdir(args.cwd) != 0 {
            return fail(*libc::__errno_location());
        }
        if let Err(error) = (args.pre_exec)() {
            return fail(error.raw_os_error().unwrap_or(libc::EPERM));
        }
        libc::execve(args.path, args.argv, args.envp);
        fail(*libc::__errno_location())
    }
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for both ends.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh fds owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Starts `path` like `posix_spawn` does: a `CLONE_VM | CLONE_VFORK` child
/// that shares the parent's memory until it execs, so starting a command
/// from a large process costs no page-table copy. The child sets up its
/// stdio, runs `pre_exec` and execs; an error before exec comes back
/// through a pipe.
pub fn spawn(
    path: &CString,
    argv: &[CString],
    envp: &[CString],
    cwd: Option<&CString>,
    pre_exec: PreExec<'_>,
) -> std::io::Result<RawChild> {
    let (stdin_read, stdin_write) = pipe()?;
    let (stdout_read, stdout_write) = pipe()?;
    let (stderr_read, stderr_write) = pipe()?;
    let (error_read, error_write) = pipe()?;
    let pointers = |strings: &[CString]| {
        let mut list: Vec<*const libc::c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        list.push(std::ptr::null());
        list
    };
    let argv = pointers(argv);
    let envp = pointers(envp);
    let args = ChildArgs {
        path: path.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: cwd.map_or(std::ptr::null(), |cwd| cwd.as_ptr()),
        fds: [
            stdin_read.as_raw_fd(),
            stdout_write.as_raw_fd(),
            stderr_write.as_raw_fd(),
        ],
        error: error_write.as_raw_fd(),
        pre_exec,
    };
    let mut stack = vec![0u8; 256 * 1024];
    // Block every signal around the clone (the child restores defaults first).
    // SAFETY: sigset operations on local values.
    let previous = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous);
        previous
    };
    // SAFETY: the stack grows down from its (16-byte aligned) top; the
    // child only touches `args` and its own stack before exec; CLONE_VFORK
    // keeps this frame (and `stack`) alive until then.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(stack.len()) as usize & !15;
        libc::clone(
            child_main,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &args as *const ChildArgs<'_> as *mut libc::c_void,
        )
    };
    let clone_error = std::io::Error::last_os_error();
    // SAFETY: restores this thread's mask.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut()) };
    if pid < 0 {
        return Err(clone_error);
    }
    drop((stdin_read, stdout_write, stderr_write, error_write));
    let mut code = [0u8; 4];
    let read = std::io::Read::read(&mut std::fs::File::from(error_read), &mut code).unwrap_or(0);
    if read == 4 {
        let mut status = 0;
        // SAFETY: reaps the child that failed before exec.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        return Err(std::io::Error::from_raw_os_error(i32::from_ne_bytes(code)));
    }
    Ok(RawChild {
        pid,
        stdin: stdin_write.into(),
        stdout: stdout_read.into(),
        stderr: stderr_read.into(),
    })
}

/// Sends `fd` over the unix socket `socket` (one `SCM_RIGHTS` message).
/// Usable between fork and exec: stack buffers only, no allocation.
pub fn send_fd(socket: RawFd, fd: RawFd) -> std::io::Result<()> {
    // SAFETY: builds a one-fd SCM_RIGHTS message in stack buffers.
    unsafe {
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut control = [0u64; 4];
        let mut message: libc::msghdr = std::mem::zeroed();
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = libc::CMSG_SPACE(4) as _;
        let header = libc::CMSG_FIRSTHDR(&message);
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = libc::CMSG_LEN(4) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(header).cast::<i32>(), fd);
        if libc::sendmsg(socket, &message, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receives a descriptor [`send_fd`] sent (blocks until it comes, or until
/// every other end of the socket is closed: then `None`).
pub fn receive_fd(socket: &OwnedFd) -> Option<OwnedFd> {
    // SAFETY: receives into stack buffers sized for one fd.
    unsafe {
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut control = [0u64; 4];
        let mut message: libc::msghdr = std::mem::zeroed();
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = libc::CMSG_SPACE(4) as _;
        if libc::recvmsg(socket.as_raw_fd(), &mut message, libc::MSG_CMSG_CLOEXEC) <= 0 {
            return None;
        }
        let header = libc::CMSG_FIRSTHDR(&message);
        if header.is_null() || (*header).cmsg_type != libc::SCM_RIGHTS {
            return None;
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(header).cast::<i32>());
        Some(OwnedFd::from_raw_fd(fd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_descriptor_crosses_a_socket_pair() {
        let mut pair = [0; 2];
        // SAFETY: `pair` has room for the two fds.
        let made = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                pair.as_mut_ptr(),
            )
        };
        assert_eq!(made, 0);
        // SAFETY: fresh fds owned by nobody else.
        let (rx, tx) = unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) };
        let (read_end, write_end) = pipe().unwrap();
        send_fd(tx.as_raw_fd(), write_end.as_raw_fd()).unwrap();
        drop(write_end);
        let received = receive_fd(&rx).expect("a descriptor");
        let mut writer = std::fs::File::from(received);
        std::io::Write::write_all(&mut writer, b"x").unwrap();
        drop(writer);
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(read_end), &mut text).unwrap();
        assert_eq!(text, "x");
        // The other end gone, nothing comes.
        drop(tx);
        assert!(receive_fd(&rx).is_none());
    }

    #[test]
    fn an_error_before_exec_comes_back() {
        let path = CString::new("/bin/true").unwrap();
        let argv = [path.clone()];
        let refuse = || Err(std::io::Error::from_raw_os_error(libc::EXDEV));
        let error = spawn(&path, &argv, &[], None, &refuse)
            .err()
            .expect("refused");
        assert_eq!(error.raw_os_error(), Some(libc::EXDEV));
    }
}
