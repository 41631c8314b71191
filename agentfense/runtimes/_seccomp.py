"""The seccomp filter of bwrap sandboxes, as the classic-BPF program ``bwrap --seccomp`` loads.

It refuses (EPERM) the system calls by which one process of a sandbox reaches into another's
memory or files: ``ptrace``, ``process_vm_readv``, ``process_vm_writev`` and ``pidfd_getfd``.
Every process of a sandbox runs as the same uid, so without it a process left behind by one
command could attach to a later one and change what it does, reads or reports. io_uring is
not there (ENOSYS: programs fall back to ordinary calls): it is a large part of the kernel
for a sandbox to reach, and its requests (a socket opened, a file read) are made where no
seccomp filter sees them. Everything else is allowed. The filter knows x86_64 and aarch64
system call numbers; a call made with any other convention (32-bit x86, x32 on x86_64,
another architecture) kills the process, so that no numbering the filter does not know can
slip through.
"""

from __future__ import annotations

import errno
import platform
import struct

# struct seccomp_data: nr at 0, arch at 4, args[0] at 16 (its low half, little-endian).
_NR, _ARCH, _ARG0_LOW = 0, 4, 16
_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K
RET_ALLOW = 0x7FFF0000
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
X32_SYSCALL_BIT = 0x40000000

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
# ptrace, process_vm_readv, process_vm_writev, pidfd_getfd
REFUSED: dict[int, tuple[int, ...]] = {
    AUDIT_ARCH_X86_64: (101, 310, 311, 438),
    AUDIT_ARCH_AARCH64: (117, 270, 271, 438),
}
# clone, unshare (clone3 is 435 everywhere)
USERNS_CALLS: dict[int, tuple[int, int]] = {
    AUDIT_ARCH_X86_64: (56, 272),
    AUDIT_ARCH_AARCH64: (220, 97),
}
CLONE3 = 435
# io_uring_setup, io_uring_enter, io_uring_register (the same numbers everywhere)
UNAVAILABLE = (425, 426, 427)
CLONE_NEWUSER = 0x10000000
_MACHINES = {"x86_64": AUDIT_ARCH_X86_64, "aarch64": AUDIT_ARCH_AARCH64}

_Instruction = tuple[int, int, int, int]  # code, jt, jf, k


def native_arch() -> int | None:
    """The audit arch of this machine's system calls, if the filter knows it."""
    return _MACHINES.get(platform.machine())


def _program(arch: int, new_user_namespaces: bool) -> list[_Instruction]:
    # (label, instruction) pairs; a jump names its targets, resolved below.
    code: list[tuple[str, tuple[int, str | int, str | int, int]]] = [
        ("", (_LD_W_ABS, 0, 0, _ARCH)),
        ("", (_JEQ_K, "nr", "kill", arch)),
        ("nr", (_LD_W_ABS, 0, 0, _NR)),
    ]
    if arch == AUDIT_ARCH_X86_64:  # x32 calls share the arch, with this bit in their number
        code.append(("", (_JGE_K, "kill", 0, X32_SYSCALL_BIT)))
    for number in REFUSED[arch]:
        code.append(("", (_JEQ_K, "eperm", 0, number)))
    for number in UNAVAILABLE:
        code.append(("", (_JEQ_K, "enosys", 0, number)))
    if not new_user_namespaces:
        clone, unshare = USERNS_CALLS[arch]
        code += [
            # clone3's flags are behind a pointer, which a filter cannot read: ENOSYS, and
            # the C library falls back to clone (as Docker's profile does).
            ("", (_JEQ_K, "enosys", 0, CLONE3)),
            ("", (_JEQ_K, "flags", 0, clone)),
            ("", (_JEQ_K, "flags", 0, unshare)),
        ]
    code.append(("", (_RET_K, 0, 0, RET_ALLOW)))
    if not new_user_namespaces:
        code += [
            ("flags", (_LD_W_ABS, 0, 0, _ARG0_LOW)),
            ("", (_JSET_K, "eperm", 0, CLONE_NEWUSER)),
            ("", (_RET_K, 0, 0, RET_ALLOW)),
        ]
    code += [
        ("enosys", (_RET_K, 0, 0, RET_ERRNO | errno.ENOSYS)),
        ("eperm", (_RET_K, 0, 0, RET_ERRNO | errno.EPERM)),
        ("kill", (_RET_K, 0, 0, RET_KILL_PROCESS)),
    ]
    at = {label: index for index, (label, _) in enumerate(code) if label}

    def offset(index: int, target: str | int) -> int:
        return target if isinstance(target, int) else at[target] - index - 1

    return [
        (op, offset(index, jt), offset(index, jf), k)
        for index, (_, (op, jt, jf, k)) in enumerate(code)
    ]


def compile_filter(arch: int, *, new_user_namespaces: bool = True) -> bytes:
    """The filter for system calls of ``arch``, as the ``struct sock_filter`` array the kernel
    (and ``bwrap --seccomp``) takes; without ``new_user_namespaces``, it also refuses to make
    user namespaces (``clone`` and ``unshare`` with CLONE_NEWUSER: EPERM; ``clone3``:
    ENOSYS), where no user namespace of the sandbox's own seals that (bwrap's
    ``--disable-userns`` does, for a sandbox whose processes it starts)."""
    program = _program(arch, new_user_namespaces)
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in program)
