"""The seccomp profile of Docker sandboxes (``SecurityOpt: seccomp=<json>``).

Docker's default profile lets a container's processes ``ptrace`` each other (on kernels since
4.8), and a sandbox's processes all run as one uid: a process left behind by one command could
attach to a later one. A profile given to Docker replaces its default, so this one allows every
system call but those it names, which fail with EPERM: ptrace and its kin (one process reaching
into another's memory or files), and the calls with which Docker's default keeps an unprivileged
process from new namespaces (user namespaces above all: a process in one of its own has every
capability there), the kernel keyring, BPF, perf events, userfaultfd and the mount API. The
calls that need a capability (modules, reboot, swap, clock, ...) fail all the same, for the
container has none; they are refused here too, not to depend on that alone. io_uring is not
there (ENOSYS: programs fall back to ordinary calls), as in bwrap sandboxes (``_seccomp.py``).
"""

from __future__ import annotations

import errno
import json
from typing import Any

REFUSED = (
    # one process of the sandbox reaching into another
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "kcmp",
    # namespaces, the keyring, BPF, perf, userfaultfd
    "unshare",
    "setns",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "personality",
    # mounts
    "mount",
    "umount2",
    "pivot_root",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    # what needs a capability anyway
    "open_by_handle_at",
    "name_to_handle_at",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "syslog",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "quotactl",
    "vhangup",
    "iopl",
    "ioperm",
    "lookup_dcookie",
)
UNAVAILABLE = ("io_uring_setup", "io_uring_enter", "io_uring_register")
# clone's first argument: a new namespace of any kind is refused.
_NAMESPACE_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)
_ARCHES = [
    {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
    {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
]


def profile() -> dict[str, Any]:
    """The profile, as Docker's JSON format has it."""
    rules: list[dict[str, Any]] = [
        {"names": list(REFUSED), "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM},
        # clone3's flags are in memory, where seccomp cannot look: "no such call" makes the
        # C library fall back to clone, whose flags it can
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS},
        {"names": list(UNAVAILABLE), "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS},
    ]
    for flag in _NAMESPACE_FLAGS:
        rules.append(
            {
                "names": ["clone"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": errno.EPERM,
                # x86_64 and aarch64 alike pass clone's flags first
                "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
            }
        )
    return {"defaultAction": "SCMP_ACT_ALLOW", "archMap": _ARCHES, "syscalls": rules}


def security_opt() -> str:
    """The ``SecurityOpt`` entry that gives a container this profile."""
    return "seccomp=" + json.dumps(profile(), separators=(",", ":"))
