//! The seccomp filter of a guarded command (Linux): the classic-BPF program
//! ([`program`]), the per-architecture system-call tables it is built from,
//! and [`install`], which the child calls before `exec`. The program kills
//! the command on a foreign architecture or x32 call, on
//! ptrace/mount/kexec/bpf/io_uring and (with `net` off) on IPv4/IPv6
//! `socket()`; it sends every `open*` and every call that changes the file
//! tree to the supervisor (user notification), and allows the rest.
//! [`tree_changes`] also tells the supervisor where each such call keeps its
//! path arguments.

use std::os::fd::RawFd;

const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;
const SECCOMP_FILTER_FLAG_NEW_LISTENER: libc::c_ulong = 1 << 3;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;

#[cfg(target_arch = "x86_64")]
pub(super) mod arch {
    pub(crate) const AUDIT: u32 = 0xc000_003e;
    // ptrace mount umount2 kexec_load kexec_file_load bpf io_uring_setup/enter/register
    pub(crate) const DENIED: &[i64] = &[101, 165, 166, 246, 320, 321, 425, 426, 427];
    pub(crate) const SOCKET: i64 = 41;
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
}
#[cfg(target_arch = "aarch64")]
pub(super) mod arch {
    pub(crate) const AUDIT: u32 = 0xc000_00b7;
    pub(crate) const DENIED: &[i64] = &[117, 40, 39, 104, 294, 280, 425, 426, 427];
    pub(crate) const SOCKET: i64 = 198;
    pub(crate) const OPEN: Option<i64> = None;
    pub(crate) const CREAT: Option<i64> = None;
    pub(crate) const OPENAT: i64 = 56;
    pub(crate) const OPENAT2: i64 = 437;
    /// arm64 has only the `*at` forms.
    pub(crate) const LEGACY_TREE_CHANGES: &[(i64, &[super::PathArg])] = &[];
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
    for &nr in arch::DENIED {
        program.push(jump(nr as u32, 0, 1));
        program.push(stmt(RET_K, SECCOMP_RET_KILL_PROCESS));
    }
    if !net {
        // socket(AF_INET | AF_INET6, …) kills; AF_UNIX stays allowed.
        program.push(jump(arch::SOCKET as u32, 0, 5));
        program.push(stmt(LD_W_ABS, 16));
        program.push(jump(libc::AF_INET as u32, 2, 0));
        program.push(jump(libc::AF_INET6 as u32, 1, 0));
        program.push(stmt(RET_K, SECCOMP_RET_ALLOW));
        program.push(stmt(RET_K, SECCOMP_RET_KILL_PROCESS));
    }
    for nr in [
        arch::OPEN,
        arch::CREAT,
        Some(arch::OPENAT),
        Some(arch::OPENAT2),
    ]
    .into_iter()
    .flatten()
    .chain(tree_changes().map(|&(nr, _)| nr))
    {
        program.push(jump(nr as u32, 0, 1));
        program.push(stmt(RET_K, SECCOMP_RET_USER_NOTIF));
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
    /// instructions it uses, over a `seccomp_data` with `arg0` in args[0].
    fn decide(program: &[libc::sock_filter], arch: u32, nr: i64, arg0: u64) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&(nr as u32).to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        data[16..24].copy_from_slice(&arg0.to_ne_bytes());
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
                code => {
                    let taken = if code == (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16 {
                        accumulator == instruction.k
                    } else if code == (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16 {
                        accumulator >= instruction.k
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

    #[test]
    fn decides_each_kind_of_call() {
        let (strict, open) = (program(false), program(true));
        let arch = arch::AUDIT;
        for &nr in arch::DENIED {
            assert_eq!(decide(&open, arch, nr, 0), SECCOMP_RET_KILL_PROCESS);
        }
        assert_eq!(
            decide(&open, arch ^ 1, libc::SYS_getpid, 0),
            SECCOMP_RET_KILL_PROCESS
        );
        assert_eq!(decide(&open, arch, libc::SYS_getpid, 0), SECCOMP_RET_ALLOW);
        assert_eq!(decide(&open, arch, arch::OPENAT, 0), SECCOMP_RET_USER_NOTIF);
        for &(nr, _) in tree_changes() {
            assert_eq!(decide(&strict, arch, nr, 0), SECCOMP_RET_USER_NOTIF);
        }
        for family in [libc::AF_INET, libc::AF_INET6] {
            let family = family as u64;
            assert_eq!(
                decide(&strict, arch, arch::SOCKET, family),
                SECCOMP_RET_KILL_PROCESS
            );
            assert_eq!(decide(&open, arch, arch::SOCKET, family), SECCOMP_RET_ALLOW);
        }
        let unix = libc::AF_UNIX as u64;
        assert_eq!(decide(&strict, arch, arch::SOCKET, unix), SECCOMP_RET_ALLOW);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            decide(&open, arch, 0x4000_0000 | libc::SYS_getpid, 0),
            SECCOMP_RET_KILL_PROCESS
        );
    }
}
