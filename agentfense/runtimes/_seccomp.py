"""The seccomp filter of bwrap sandboxes, as the classic-BPF program ``bwrap --seccomp`` loads.

It refuses (EPERM) the system calls by which one process of a sandbox reaches into another's
memory or files: ``ptrace``, ``process_vm_readv``, ``process_vm_writev`` and ``pidfd_getfd``.
Every process of a sandbox runs as the same uid, so without it a process left behind by one
command could attach to a later one and change what it does, reads or reports. Everything
else is allowed. The filter knows x86_64 and aarch64 system call numbers; a call made with
any other convention (32-bit x86, x32 on x86_64, another architecture) kills the process, so
that no numbering the filter does not know can slip through.
"""

from __future__ import annotations

import errno
import platform
import struct

# struct seccomp_data: nr at 0, arch at 4.
_NR, _ARCH = 0, 4
_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
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
_MACHINES = {"x86_64": AUDIT_ARCH_X86_64, "aarch64": AUDIT_ARCH_AARCH64}

_Instruction = tuple[int, int, int, int]  # code, jt, jf, k


def native_arch() -> int | None:
    """The audit arch of this machine's system calls, if the filter knows it."""
    return _MACHINES.get(platform.machine())


def _program(arch: int) -> list[_Instruction]:
    refused = REFUSED[arch]
    checks: list[_Instruction] = []
    # After the loads and the checks: [allow, eperm, kill].
    for index, number in enumerate(refused):
        to_eperm = len(refused) - index  # skips the remaining checks and the allow
        checks.append((_JEQ_K, to_eperm, 0, number))
    x32: list[_Instruction] = []
    if arch == AUDIT_ARCH_X86_64:  # x32 calls share the arch, with this bit in their number
        x32 = [(_JGE_K, len(refused) + 2, 0, X32_SYSCALL_BIT)]  # -> kill
    return [
        (_LD_W_ABS, 0, 0, _ARCH),
        (_JEQ_K, 1, 0, arch),
        (_RET_K, 0, 0, RET_KILL_PROCESS),
        (_LD_W_ABS, 0, 0, _NR),
        *x32,
        *checks,
        (_RET_K, 0, 0, RET_ALLOW),
        (_RET_K, 0, 0, RET_ERRNO | errno.EPERM),
        (_RET_K, 0, 0, RET_KILL_PROCESS),
    ]


def compile_filter(arch: int) -> bytes:
    """The filter for system calls of ``arch``, as the ``struct sock_filter`` array the kernel
    (and ``bwrap --seccomp``) takes."""
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in _program(arch))
