"""The bwrap sandboxes' seccomp filter, run by an interpreter of classic BPF (the kernel's
verdict on it is what tests/integration/test_hostile_agent.py checks)."""

from __future__ import annotations

import errno
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentfense.runtimes._seccomp import (
    AUDIT_ARCH_AARCH64,
    AUDIT_ARCH_X86_64,
    CLONE3,
    CLONE_NEWUSER,
    REFUSED,
    RET_ALLOW,
    RET_ERRNO,
    RET_KILL_PROCESS,
    UNAVAILABLE,
    USERNS_CALLS,
    X32_SYSCALL_BIT,
    compile_filter,
)

AUDIT_ARCH_I386 = 0x40000003
EPERM = RET_ERRNO | errno.EPERM
ENOSYS = RET_ERRNO | errno.ENOSYS


def run_filter(program: bytes, arch: int, number: int, flags: int = 0) -> int:
    """What ``program`` returns for system call ``number`` made with ``arch`` (and ``flags``
    as its first argument)."""
    instructions = [struct.unpack_from("=HBBI", program, at) for at in range(0, len(program), 8)]
    data = {0: number, 4: arch, 16: flags & 0xFFFFFFFF}
    accumulator, pc = 0, 0
    for _ in range(len(instructions)):  # classic BPF jumps only forward
        code, jt, jf, k = instructions[pc]
        if code == 0x20:  # ld [k]
            accumulator = data[k]
        elif code == 0x06:  # ret k
            return int(k)
        elif code in (0x15, 0x35, 0x45):  # jeq k, jge k, jset k
            taken = {0x15: accumulator == k, 0x35: accumulator >= k, 0x45: accumulator & k}[code]
            pc += jt if taken else jf
        else:
            raise AssertionError(f"unexpected instruction {code:#x}")
        pc += 1
    raise AssertionError("the program ran off its end")


@pytest.mark.parametrize("arch", [AUDIT_ARCH_X86_64, AUDIT_ARCH_AARCH64])
def test_ptrace_and_its_kin_are_eperm_and_the_rest_allowed(arch: int) -> None:
    program = compile_filter(arch)
    for number in REFUSED[arch]:
        assert run_filter(program, arch, number) == EPERM
    for number in UNAVAILABLE:  # io_uring
        assert run_filter(program, arch, number) == ENOSYS
    for ordinary in (0, 1, 56, 59, 221, 435):  # read, write, clone, execve...
        assert run_filter(program, arch, ordinary) == RET_ALLOW


def _expected(number: int) -> int:
    if number in REFUSED[AUDIT_ARCH_X86_64]:
        return EPERM
    return ENOSYS if number in UNAVAILABLE else RET_ALLOW


@given(st.integers(min_value=0, max_value=X32_SYSCALL_BIT - 1))
def test_every_other_x86_64_call_is_allowed(number: int) -> None:
    expected = _expected(number)
    assert run_filter(compile_filter(AUDIT_ARCH_X86_64), AUDIT_ARCH_X86_64, number) == expected


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_other_conventions_kill(number: int) -> None:
    program = compile_filter(AUDIT_ARCH_X86_64)
    assert run_filter(program, AUDIT_ARCH_I386, number) == RET_KILL_PROCESS
    assert run_filter(program, AUDIT_ARCH_AARCH64, number) == RET_KILL_PROCESS
    x32 = X32_SYSCALL_BIT | (number & (X32_SYSCALL_BIT - 1))
    assert run_filter(program, AUDIT_ARCH_X86_64, x32) == RET_KILL_PROCESS


@pytest.mark.parametrize("arch", [AUDIT_ARCH_X86_64, AUDIT_ARCH_AARCH64])
def test_without_new_user_namespaces_clone_and_unshare_may_not_make_one(arch: int) -> None:
    program = compile_filter(arch, new_user_namespaces=False)
    clone, unshare = USERNS_CALLS[arch]
    for number in (clone, unshare):
        assert run_filter(program, arch, number, CLONE_NEWUSER) == EPERM
        assert run_filter(program, arch, number, CLONE_NEWUSER | 0x11) == EPERM
        assert run_filter(program, arch, number, 0x01200011) == RET_ALLOW  # a fork's flags
    assert run_filter(program, arch, CLONE3) == RET_ERRNO | errno.ENOSYS  # libc falls back
    for number in REFUSED[arch]:
        assert run_filter(program, arch, number) == EPERM
    assert run_filter(program, AUDIT_ARCH_I386, clone) == RET_KILL_PROCESS
    # The default filter leaves them alone (bwrap's --disable-userns seals its sandboxes).
    default = compile_filter(arch)
    assert run_filter(default, arch, unshare, CLONE_NEWUSER) == RET_ALLOW
    assert run_filter(default, arch, CLONE3) == RET_ALLOW


@given(st.integers(min_value=0, max_value=X32_SYSCALL_BIT - 1), st.integers(0, 2**32 - 1))
def test_without_new_user_namespaces_every_other_call_is_allowed(number: int, flags: int) -> None:
    arch = AUDIT_ARCH_X86_64
    program = compile_filter(arch, new_user_namespaces=False)
    if number == CLONE3:
        expected = ENOSYS
    elif number in USERNS_CALLS[arch] and flags & CLONE_NEWUSER:
        expected = EPERM
    else:
        expected = _expected(number)
    assert run_filter(program, arch, number, flags) == expected
