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
    REFUSED,
    RET_ALLOW,
    RET_ERRNO,
    RET_KILL_PROCESS,
    X32_SYSCALL_BIT,
    compile_filter,
)

AUDIT_ARCH_I386 = 0x40000003
EPERM = RET_ERRNO | errno.EPERM


def run_filter(program: bytes, arch: int, number: int) -> int:
    """What ``program`` returns for system call ``number`` made with ``arch``."""
    instructions = [struct.unpack_from("=HBBI", program, at) for at in range(0, len(program), 8)]
    data = {0: number, 4: arch}
    accumulator, pc = 0, 0
    for _ in range(len(instructions)):  # classic BPF jumps only forward
        code, jt, jf, k = instructions[pc]
        if code == 0x20:  # ld [k]
            accumulator = data[k]
        elif code == 0x06:  # ret k
            return int(k)
        elif code in (0x15, 0x35):  # jeq k, jge k
            taken = accumulator == k if code == 0x15 else accumulator >= k
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
    for ordinary in (0, 1, 56, 59, 221, 435):  # read, write, clone, execve...
        assert run_filter(program, arch, ordinary) == RET_ALLOW


@given(st.integers(min_value=0, max_value=X32_SYSCALL_BIT - 1))
def test_every_other_x86_64_call_is_allowed(number: int) -> None:
    expected = EPERM if number in REFUSED[AUDIT_ARCH_X86_64] else RET_ALLOW
    assert run_filter(compile_filter(AUDIT_ARCH_X86_64), AUDIT_ARCH_X86_64, number) == expected


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_other_conventions_kill(number: int) -> None:
    program = compile_filter(AUDIT_ARCH_X86_64)
    assert run_filter(program, AUDIT_ARCH_I386, number) == RET_KILL_PROCESS
    assert run_filter(program, AUDIT_ARCH_AARCH64, number) == RET_KILL_PROCESS
    x32 = X32_SYSCALL_BIT | (number & (X32_SYSCALL_BIT - 1))
    assert run_filter(program, AUDIT_ARCH_X86_64, x32) == RET_KILL_PROCESS
