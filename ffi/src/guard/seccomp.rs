//! The seccomp filter of a guarded command (Linux): the classic-BPF program
//! ([`program`]), the per-architecture system-call tables it is built from,
//! and [`install`], which the child calls before `exec`.
//!
//! The program kills the command only on a foreign architecture or an x32
//! call (nothing to report but the signal). Everything else the guard
//! refuses goes to the supervisor through user notification, which answers
//! with an error and reports exactly what was tried (a refused call never
//! runs: a notification is answered before the kernel looks further, and a
//! listener that is gone answers `ENOSYS`):
//! - [`REFUSED`]: keyrings, SysV IPC and POSIX message queues, mounting and
//!   namespaces (`setns`, the `fsopen` family), ptrace and other processes'
//!   memory, bpf, perf, userfaultfd, io_uring, kexec, the kernel log;
//! - `clone` and `unshare` with namespace flags (a register: the filter
//!   decides); `clone3` answers `ENOSYS` at once (its flags are in memory, which
//!   a filter cannot read; libc falls back to `clone`);
//! - `socket`: with `net` only unix, IPv4/IPv6 and route netlink sockets;
//!   without, only unix stream/seqpacket sockets, and every `connect`
//!   (datagram unix sockets are refused: their `sendto`/`sendmsg` could name
//!   any socket on the host); `socketpair` of datagram sockets likewise;
//! - the calls that change modes and owners (`chmod`, `fchmod*`, `chown*`):
//!   the supervisor refuses set-id bits and paths outside `write`;
//! - every `open*` and every call that changes the file tree.
//!
//! [`tree_changes`] and [`attribute_changes`] tell the supervisor where each
//! such call keeps its path arguments.

use std::os::fd::RawFd;

const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;
const SECCOMP_FILTER_FLAG_NEW_LISTENER: libc::c_ulong = 1 << 3;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;

/// `clone`/`unshare` flags that make a namespace (`CLONE_NEWTIME` is 0x80,
/// which `clone` reads as part of its exit signal: `unshare` only).
pub const NAMESPACE_FLAGS: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u32;
pub const CLONE_NEWTIME: u32 = 0x80;
/// `socket()`'s type without `SOCK_NONBLOCK`/`SOCK_CLOEXEC`.
pub const SOCK_TYPE_MASK: u32 = 0xf;
/// `fchmodat2` (Linux 6.6; the same number everywhere).
pub const SYS_FCHMODAT2: i64 = 452;

#[cfg(target_arch = "x86_64")]
pub(super) mod arch {
    pub(crate) const AUDIT: u32 = 0xc000_003e;
    pub(crate) const OPEN: Option<i64> = Some(2);
    pub(crate) const CREAT: Option<i64> = Some(85);
    pub(crate) const OPENAT: i64 = 257;
    pub(crate) const OPENAT2: i64 = 437;
    /// The legacy (non-`*at`) calls that change the file tree; the `*at`
    /// forms every architecture has are in [`super::TREE_CHANGES`].
    pub(crate) const LEGACY_TREE_CHANGES: &[(i64, &[super::PathArg])] = {
        use super::PathArg as A;
        &[
            (libc::SYS_mkdir, &[A::creates(None, 0)]),
            (libc::SYS_mknod, &[A::creates(None, 0)]),
            (libc::SYS_symlink, &[A::creates(None, 1)]),
            (libc::SYS_rmdir, &[A::changes(None, 0)]),
            (libc::SYS_unlink, &[A::changes(None, 0)]),
            (
                libc::SYS_rename,
                &[A::changes(None, 0), A::replaces(None, 1)],
            ),
            (libc::SYS_link, &[A::changes(None, 0), A::creates(None, 1)]),
        ]
    };
    /// The legacy calls that change a path's mode or owner: (call, path
    /// argument, mode argument for chmod).
    pub(crate) const LEGACY_ATTRIBUTE_CHANGES: &[super::AttributeChange] = &[
        super::AttributeChange::path(libc::SYS_chmod, None, 0, Some(1)),
        super::AttributeChange::path(libc::SYS_chown, None, 0, None),
        super::AttributeChange::path(libc::SYS_lchown, None, 0, None),
    ];
    /// Refused calls only this architecture has.
    pub(crate) const LEGACY_REFUSED: &[super::Refused] = &[];
}
#[cfg(target_arch = "aarch64")]
pub(super) mod arch {
    pub(crate) const AUDIT: u32 = 0xc000_00b7;
    pub(crate) const OPEN: Option<i64> = None;
    pub(crate) const CREAT: Option<i64> = None;
    pub(crate) const OPENAT: i64 = 56;
    pub(crate) const OPENAT2: i64 = 437;
    /// arm64 has only the `*at` forms.
    pub(crate) const LEGACY_TREE_CHANGES: &[(i64, &[super::PathArg])] = &[];
    pub(crate) const LEGACY_ATTRIBUTE_CHANGES: &[super::AttributeChange] = &[];
    pub(crate) const LEGACY_REFUSED: &[super::Refused] = &[];
}

/// A call the guard always refuses (`EPERM`), reported as a `syscall`
/// violation naming it and what it would reach.
pub struct Refused {
    pub nr: i64,
    pub name: &'static str,
    pub reaches: &'static str,
}

const fn refused(nr: i64, name: &'static str, reaches: &'static str) -> Refused {
    Refused { nr, name, reaches }
}

/// Every call refused outright, on every architecture (plus
/// `arch::LEGACY_REFUSED`). Docker's default profile, flatpak/bubblewrap's
/// blocklist and minijail's policies refuse the same classes.
pub const REFUSED: &[Refused] = &[
    refused(libc::SYS_ptrace, "ptrace", "other processes"),
    refused(
        libc::SYS_process_vm_readv,
        "process_vm_readv",
        "other processes' memory",
    ),
    refused(
        libc::SYS_process_vm_writev,
        "process_vm_writev",
        "other processes' memory",
    ),
    refused(libc::SYS_kexec_load, "kexec_load", "the kernel"),
    refused(libc::SYS_kexec_file_load, "kexec_file_load", "the kernel"),
    refused(libc::SYS_bpf, "bpf", "the kernel's BPF"),
    refused(
        libc::SYS_perf_event_open,
        "perf_event_open",
        "kernel performance counters",
    ),
    refused(libc::SYS_userfaultfd, "userfaultfd", "page-fault handling"),
    refused(libc::SYS_io_uring_setup, "io_uring_setup", "io_uring"),
    refused(libc::SYS_io_uring_enter, "io_uring_enter", "io_uring"),
    refused(libc::SYS_io_uring_register, "io_uring_register", "io_uring"),
    refused(libc::SYS_syslog, "syslog", "the kernel log"),
    refused(libc::SYS_keyctl, "keyctl", "the kernel keyrings"),
    refused(libc::SYS_add_key, "add_key", "the kernel keyrings"),
    refused(libc::SYS_request_key, "request_key", "the kernel keyrings"),
    refused(libc::SYS_shmget, "shmget", "SysV shared memory"),
    refused(libc::SYS_shmat, "shmat", "SysV shared memory"),
    refused(libc::SYS_shmctl, "shmctl", "SysV shared memory"),
    refused(libc::SYS_shmdt, "shmdt", "SysV shared memory"),
    refused(libc::SYS_semget, "semget", "SysV semaphores"),
    refused(libc::SYS_semop, "semop", "SysV semaphores"),
    refused(libc::SYS_semtimedop, "semtimedop", "SysV semaphores"),
    refused(libc::SYS_semctl, "semctl", "SysV semaphores"),
    refused(libc::SYS_msgget, "msgget", "SysV message queues"),
    refused(libc::SYS_msgsnd, "msgsnd", "SysV message queues"),
    refused(libc::SYS_msgrcv, "msgrcv", "SysV message queues"),
    refused(libc::SYS_msgctl, "msgctl", "SysV message queues"),
    refused(libc::SYS_mq_open, "mq_open", "POSIX message queues"),
    refused(libc::SYS_mq_unlink, "mq_unlink", "POSIX message queues"),
    refused(libc::SYS_setns, "setns", "other namespaces"),
    refused(libc::SYS_mount, "mount", "mounts"),
    refused(libc::SYS_umount2, "umount2", "mounts"),
    refused(libc::SYS_pivot_root, "pivot_root", "mounts"),
    refused(libc::SYS_chroot, "chroot", "mounts"),
    refused(libc::SYS_open_tree, "open_tree", "mounts"),
    refused(libc::SYS_move_mount, "move_mount", "mounts"),
    refused(libc::SYS_fsopen, "fsopen", "mounts"),
    refused(libc::SYS_fsconfig, "fsconfig", "mounts"),
    refused(libc::SYS_fsmount, "fsmount", "mounts"),
    refused(libc::SYS_fspick, "fspick", "mounts"),
    refused(libc::SYS_mount_setattr, "mount_setattr", "mounts"),
    refused(
        libc::SYS_open_by_handle_at,
        "open_by_handle_at",
        "files by handle",
    ),
];

/// Every call refused outright on this architecture.
pub fn refused_calls() -> impl Iterator<Item = &'static Refused> {
    REFUSED.iter().chain(arch::LEGACY_REFUSED)
}

/// A call that changes a mode or an owner: where its path is (a directory
/// fd and a path argument, or only an fd for `fchmod`/`fchown`) and, for
/// the chmod family, which argument is the mode.
#[derive(Clone, Copy)]
pub struct AttributeChange {
    pub nr: i64,
    pub dir: Option<usize>,
    /// `None`: the call acts on the fd in `dir`.
    pub path: Option<usize>,
    pub mode: Option<usize>,
}

impl AttributeChange {
    const fn path(nr: i64, dir: Option<usize>, path: usize, mode: Option<usize>) -> Self {
        Self {
            nr,
            dir,
            path: Some(path),
            mode,
        }
    }
    const fn fd(nr: i64, mode: Option<usize>) -> Self {
        Self {
            nr,
            dir: Some(0),
            path: None,
            mode,
        }
    }
}

const ATTRIBUTE_CHANGES: &[AttributeChange] = &[
    AttributeChange::fd(libc::SYS_fchmod, Some(1)),
    AttributeChange::path(libc::SYS_fchmodat, Some(0), 1, Some(2)),
    AttributeChange::path(SYS_FCHMODAT2, Some(0), 1, Some(2)),
    AttributeChange::fd(libc::SYS_fchown, None),
    AttributeChange::path(libc::SYS_fchownat, Some(0), 1, None),
];

/// Every call that changes a mode or an owner on this architecture.
pub fn attribute_changes() -> impl Iterator<Item = &'static AttributeChange> {
    ATTRIBUTE_CHANGES
        .iter()
        .chain(arch::LEGACY_ATTRIBUTE_CHANGES)
}

/// Calls that change the file tree, sent to the supervisor so an
/// out-of-policy one is reported (Landlock alone would deny silently). Each
/// architecture adds its legacy forms (`arch::LEGACY_TREE_CHANGES`).
const TREE_CHANGES: &[(i64, &[PathArg])] = {
    use PathArg as A;
    &[
        (libc::SYS_truncate, &[A::changes(None, 0)]),
        (libc::SYS_mkdirat, &[A::creates(Some(0), 1)]),
        (libc::SYS_mknodat, &[A::creates(Some(0), 1)]),
        (libc::SYS_symlinkat, &[A::creates(Some(1), 2)]),
        (libc::SYS_unlinkat, &[A::changes(Some(0), 1)]),
        (
            libc::SYS_renameat,
            &[A::changes(Some(0), 1), A::replaces(Some(2), 3)],
        ),
        (
            libc::SYS_renameat2,
            &[A::changes(Some(0), 1), A::replaces(Some(2), 3)],
        ),
        (
            libc::SYS_linkat,
            &[A::changes(Some(0), 1), A::creates(Some(2), 3)],
        ),
    ]
};

/// Every call that changes the file tree on this architecture.
pub fn tree_changes() -> impl Iterator<Item = &'static (i64, &'static [PathArg])> {
    TREE_CHANGES.iter().chain(arch::LEGACY_TREE_CHANGES)
}

/// A path argument of a call that changes the file tree: where it is (an
/// optional directory-fd argument, the path argument) and what the call does
/// to it. For `symlink` only the new link counts: its target is just text.
#[derive(Clone, Copy)]
pub struct PathArg {
    pub dir: Option<usize>,
    pub path: usize,
    pub role: PathRole,
}

/// Decides when an out-of-policy path is worth a violation: only when the
/// call would otherwise have changed something. `mkdir -p` meeting an
/// existing `/tmp` gets its EEXIST (from the kernel), not a false report.
#[derive(Clone, Copy, PartialEq)]
pub enum PathRole {
    /// Made by the call (fails with EEXIST when present).
    Creates,
    /// Removed or modified (fails with ENOENT when absent).
    Changes,
    /// A rename's target: written either way.
    Replaces,
}

impl PathArg {
    const fn creates(dir: Option<usize>, path: usize) -> Self {
        Self {
            dir,
            path,
            role: PathRole::Creates,
        }
    }
    const fn changes(dir: Option<usize>, path: usize) -> Self {
        Self {
            dir,
            path,
            role: PathRole::Changes,
        }
    }
    const fn replaces(dir: Option<usize>, path: usize) -> Self {
        Self {
            dir,
            path,
            role: PathRole::Replaces,
        }
    }
}

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
const AND_K: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
const JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;

/// Loads the low 32 bits of argument `index` (little-endian `seccomp_data`).
fn load_arg(index: u32) -> libc::sock_filter {
    stmt(LD_W_ABS, 16 + 8 * index)
}

/// Appends `block` (which ends in a return) for the call `nr`: the rest of
/// the program is skipped when the call is `nr`.
fn when(program: &mut Vec<libc::sock_filter>, nr: i64, block: &[libc::sock_filter]) {
    program.push(jump(nr as u32, 0, block.len() as u8));
    program.extend_from_slice(block);
}

/// Notifies the supervisor when any bit of `mask` is set in argument 0.
fn notify_if_flags(mask: u32) -> [libc::sock_filter; 4] {
    [
        load_arg(0),
        libc::sock_filter {
            code: JSET_K,
            jt: 0,
            jf: 1,
            k: mask,
        },
        stmt(RET_K, SECCOMP_RET_USER_NOTIF),
        stmt(RET_K, SECCOMP_RET_ALLOW),
    ]
}

/// Allows unix stream/seqpacket sockets (the type in argument `type_arg`),
/// notifies the rest.
fn unix_stream_only(type_arg: u32) -> [libc::sock_filter; 6] {
    [
        load_arg(type_arg),
        stmt(AND_K, SOCK_TYPE_MASK),
        jump(libc::SOCK_STREAM as u32, 2, 0),
        jump(libc::SOCK_SEQPACKET as u32, 1, 0),
        stmt(RET_K, SECCOMP_RET_USER_NOTIF),
        stmt(RET_K, SECCOMP_RET_ALLOW),
    ]
}

/// The filter for a command with (`net`) or without network access.
pub fn program(net: bool) -> Vec<libc::sock_filter> {
    let mut program = vec![
        stmt(LD_W_ABS, 4),
        jump(arch::AUDIT, 1, 0),
        stmt(RET_K, SECCOMP_RET_KILL_PROCESS),
        stmt(LD_W_ABS, 0),
    ];
    #[cfg(target_arch = "x86_64")]
    {
        // x32 system calls (numbers with bit 30) would match none of the rules.
        program.push(libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: 0x4000_0000,
        });
        program.push(stmt(RET_K, SECCOMP_RET_KILL_PROCESS));
    }
    // clone3 keeps its flags in memory: "not implemented", and libc falls
    // back to clone, whose flags the filter reads.
    when(
        &mut program,
        libc::SYS_clone3,
        &[stmt(RET_K, SECCOMP_RET_ERRNO | libc::ENOSYS as u32)],
    );
    // Plain notifications: refused calls, modes and owners, opens and tree
    // changes, and (without net) every connect.
    let notified = refused_calls()
        .map(|call| call.nr)
        .chain(attribute_changes().map(|change| change.nr))
        .chain(
            [
                arch::OPEN,
                arch::CREAT,
                Some(arch::OPENAT),
                Some(arch::OPENAT2),
            ]
            .into_iter()
            .flatten(),
        )
        .chain(tree_changes().map(|&(nr, _)| nr))
        .chain((!net).then_some(libc::SYS_connect));
    for nr in notified {
        program.push(jump(nr as u32, 0, 1));
        program.push(stmt(RET_K, SECCOMP_RET_USER_NOTIF));
    }
    // On x86_64 and arm64 clone's flags are its first argument.
    when(
        &mut program,
        libc::SYS_clone,
        &notify_if_flags(NAMESPACE_FLAGS),
    );
    when(
        &mut program,
        libc::SYS_unshare,
        &notify_if_flags(NAMESPACE_FLAGS | CLONE_NEWTIME),
    );
    if net {
        // Unix, IPv4/IPv6 and route netlink (getaddrinfo asks it for the
        // host's addresses); every other family is notified.
        when(
            &mut program,
            libc::SYS_socket,
            &[
                load_arg(0),
                jump(libc::AF_UNIX as u32, 5, 0),
                jump(libc::AF_INET as u32, 4, 0),
                jump(libc::AF_INET6 as u32, 3, 0),
                jump(libc::AF_NETLINK as u32, 0, 3),
                load_arg(2),
                jump(libc::NETLINK_ROUTE as u32, 0, 1),
                stmt(RET_K, SECCOMP_RET_ALLOW),
                stmt(RET_K, SECCOMP_RET_USER_NOTIF),
            ],
        );
    } else {
        let unix_only = unix_stream_only(1);
        let mut block = vec![load_arg(0), jump(libc::AF_UNIX as u32, 0, 6)];
        block.extend_from_slice(&unix_only);
        block.push(stmt(RET_K, SECCOMP_RET_USER_NOTIF));
        when(&mut program, libc::SYS_socket, &block);
        when(&mut program, libc::SYS_socketpair, &unix_stream_only(1));
    }
    program.push(stmt(RET_K, SECCOMP_RET_ALLOW));
    program
}

/// Installs `filter` on the calling process with a user-notification
/// listener; returns the listener's fd, or a negative number when the
/// kernel refused. Meant for the child between fork and exec: one system
/// call, no allocation.
pub fn install(filter: &[libc::sock_filter]) -> RawFd {
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut _,
    };
    // SAFETY: `program` points to `filter`, valid for its length during the
    // call; the kernel copies it.
    unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &program as *const libc::sock_fprog,
        ) as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `program` decides for a call: a minimal interpreter of the
    /// instructions it uses, over a `seccomp_data` with `args`.
    fn decide(program: &[libc::sock_filter], arch: u32, nr: i64, args: &[u64]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&(nr as u32).to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (index, arg) in args.iter().enumerate() {
            data[16 + 8 * index..24 + 8 * index].copy_from_slice(&arg.to_ne_bytes());
        }
        let (mut pc, mut accumulator) = (0usize, 0u32);
        loop {
            let instruction = program[pc];
            pc += 1;
            match instruction.code {
                LD_W_ABS => {
                    let at = instruction.k as usize;
                    accumulator = u32::from_ne_bytes(data[at..at + 4].try_into().unwrap());
                }
                RET_K => return instruction.k,
                AND_K => accumulator &= instruction.k,
                code => {
                    let taken = if code == (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16 {
                        accumulator == instruction.k
                    } else if code == (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16 {
                        accumulator >= instruction.k
                    } else if code == JSET_K {
                        accumulator & instruction.k != 0
                    } else {
                        panic!("unexpected instruction {code:#x}");
                    };
                    pc += usize::from(if taken {
                        instruction.jt
                    } else {
                        instruction.jf
                    });
                }
            }
        }
    }

    #[test]
    fn every_jump_lands_inside_the_program_which_ends_in_allow() {
        for net in [false, true] {
            let program = program(net);
            assert!(program.len() < usize::from(u16::MAX));
            for (at, instruction) in program.iter().enumerate() {
                if instruction.code & 0x07 == libc::BPF_JMP as u16 {
                    let furthest = at + 1 + usize::from(instruction.jt.max(instruction.jf));
                    assert!(furthest < program.len(), "jump at {at} leaves the program");
                }
            }
            let last = program.last().unwrap();
            assert_eq!((last.code, last.k), (RET_K, SECCOMP_RET_ALLOW));
        }
    }

    const NOTIFY: u32 = SECCOMP_RET_USER_NOTIF;
    const ALLOW: u32 = SECCOMP_RET_ALLOW;

    #[test]
    fn decides_each_kind_of_call() {
        let (strict, open) = (program(false), program(true));
        let arch = arch::AUDIT;
        for call in refused_calls() {
            assert_eq!(decide(&open, arch, call.nr, &[]), NOTIFY, "{}", call.name);
            assert_eq!(decide(&strict, arch, call.nr, &[]), NOTIFY, "{}", call.name);
        }
        for change in attribute_changes() {
            assert_eq!(decide(&open, arch, change.nr, &[]), NOTIFY);
        }
        assert_eq!(
            decide(&open, arch ^ 1, libc::SYS_getpid, &[]),
            SECCOMP_RET_KILL_PROCESS
        );
        assert_eq!(decide(&open, arch, libc::SYS_getpid, &[]), ALLOW);
        assert_eq!(decide(&open, arch, arch::OPENAT, &[]), NOTIFY);
        for &(nr, _) in tree_changes() {
            assert_eq!(decide(&strict, arch, nr, &[]), NOTIFY);
        }
        assert_eq!(
            decide(&open, arch, libc::SYS_clone3, &[]),
            SECCOMP_RET_ERRNO | libc::ENOSYS as u32
        );
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            decide(&open, arch, 0x4000_0000 | libc::SYS_getpid, &[]),
            SECCOMP_RET_KILL_PROCESS
        );
    }

    #[test]
    fn namespaces_are_notified_plain_clones_and_unshares_allowed() {
        let program = program(true);
        let arch = arch::AUDIT;
        let thread = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;
        let fork = libc::SIGCHLD as u64;
        assert_eq!(decide(&program, arch, libc::SYS_clone, &[thread]), ALLOW);
        assert_eq!(decide(&program, arch, libc::SYS_clone, &[fork]), ALLOW);
        for flag in [libc::CLONE_NEWUSER, libc::CLONE_NEWNS, libc::CLONE_NEWNET] {
            let flags = fork | flag as u64;
            assert_eq!(decide(&program, arch, libc::SYS_clone, &[flags]), NOTIFY);
            assert_eq!(
                decide(&program, arch, libc::SYS_unshare, &[flag as u64]),
                NOTIFY
            );
        }
        let files = libc::CLONE_FILES as u64;
        assert_eq!(decide(&program, arch, libc::SYS_unshare, &[files]), ALLOW);
        let time = u64::from(CLONE_NEWTIME);
        assert_eq!(decide(&program, arch, libc::SYS_unshare, &[time]), NOTIFY);
    }

    #[test]
    fn socket_families_follow_net() {
        let (strict, open) = (program(false), program(true));
        let arch = arch::AUDIT;
        let socket = |program: &[libc::sock_filter], family: i32, kind: i32, protocol: i32| {
            let args = [family as u64, kind as u64, protocol as u64];
            decide(program, arch, libc::SYS_socket, &args)
        };
        let nonblocking_stream = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        // Without net: unix stream/seqpacket only.
        assert_eq!(socket(&strict, libc::AF_UNIX, nonblocking_stream, 0), ALLOW);
        assert_eq!(
            socket(&strict, libc::AF_UNIX, libc::SOCK_SEQPACKET, 0),
            ALLOW
        );
        for (family, kind) in [
            (libc::AF_UNIX, libc::SOCK_DGRAM),
            (libc::AF_INET, libc::SOCK_STREAM),
            (libc::AF_INET6, libc::SOCK_DGRAM),
            (libc::AF_NETLINK, libc::SOCK_RAW),
            (libc::AF_VSOCK, libc::SOCK_STREAM),
        ] {
            assert_eq!(socket(&strict, family, kind, 0), NOTIFY, "{family}/{kind}");
        }
        let pair = |program: &[libc::sock_filter], kind: i32| {
            decide(program, arch, libc::SYS_socketpair, &[1, kind as u64])
        };
        assert_eq!(pair(&strict, libc::SOCK_STREAM | libc::SOCK_CLOEXEC), ALLOW);
        assert_eq!(pair(&strict, libc::SOCK_DGRAM), NOTIFY);
        assert_eq!(decide(&strict, arch, libc::SYS_connect, &[]), NOTIFY);
        // With net: unix, IP and route netlink.
        for family in [libc::AF_UNIX, libc::AF_INET, libc::AF_INET6] {
            assert_eq!(socket(&open, family, libc::SOCK_DGRAM, 0), ALLOW);
        }
        let route = libc::NETLINK_ROUTE;
        assert_eq!(
            socket(&open, libc::AF_NETLINK, libc::SOCK_RAW, route),
            ALLOW
        );
        let audit = libc::NETLINK_AUDIT;
        assert_eq!(
            socket(&open, libc::AF_NETLINK, libc::SOCK_RAW, audit),
            NOTIFY
        );
        assert_eq!(socket(&open, libc::AF_VSOCK, libc::SOCK_STREAM, 0), NOTIFY);
        assert_eq!(pair(&open, libc::SOCK_DGRAM), ALLOW);
        assert_eq!(decide(&open, arch, libc::SYS_connect, &[]), ALLOW);
    }
}
