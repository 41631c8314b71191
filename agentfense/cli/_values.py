"""The values of the CLI's flags: sizes, CPUs, rules, variables, counts, seconds. Pure.

Each raises ``ValueError`` with a sentence naming what it expected; argparse turns that into
a usage error.
"""

from __future__ import annotations

import re

from ..types import Permission, PermissionRule

# CPU time per period is what the runtimes limit (Docker's unit: microseconds per 100 ms).
CPU_PERIOD_US = 100_000

_SIZE = re.compile(r"(\d+(?:\.\d+)?)([kmgt]?)(i?b)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Nothing above this is a real host's memory; it also keeps the value an int64 on the wire.
_MAX_BYTES = 1 << 50
_MAX_CPUS = 1024


def parse_size(text: str) -> int:
    """Bytes from ``512m``, ``1g``, ``1.5G``, ``64MiB``, ``1048576`` (binary units, as Docker)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a size: write a number with k, m, g or t, e.g. 512m")
    number, unit, _ = match.groups()
    size = int(float(number) * _UNITS[unit.lower()])
    if size <= 0:
        raise ValueError(f"{text!r} is not a size above zero")
    if size > _MAX_BYTES:
        raise ValueError(f"{text!r} is larger than any machine's memory")
    return size


def parse_cpus(text: str) -> int:
    """The CPU quota (microseconds per 100 ms) for ``0.5``, ``2``: a share of whole CPUs."""
    try:
        cpus = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of CPUs, e.g. 0.5 or 2") from None
    if not 0 < cpus <= _MAX_CPUS:  # also refuses nan and inf
        raise ValueError(f"{text!r} CPUs: give a number above 0 and at most {_MAX_CPUS}")
    quota = round(cpus * CPU_PERIOD_US)
    if quota < 1000:  # the kernel's smallest quota is 1 ms per period
        raise ValueError(f"{text!r} CPUs is below the smallest quota, 0.01")
    return quota


def parse_count(text: str) -> int:
    """A whole number above zero (``--pids``)."""
    try:
        count = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None
    if not 0 < count < 1 << 31:
        raise ValueError(f"{text!r}: give a number above 0 and below 2^31")
    return count


def parse_rule(text: str) -> PermissionRule:
    """``PATTERN=LEVEL`` (``**/*.log=none``, ``/output/**=write``); the last ``=`` splits."""
    pattern, sep, level = text.rpartition("=")
    levels = ", ".join(p.value for p in Permission)
    if not sep or not pattern.strip():
        raise ValueError(f"{text!r} is not PATTERN=LEVEL (a level is one of {levels})")
    try:
        permission = Permission(level.strip().lower())
    except ValueError:
        raise ValueError(f"{level!r} in {text!r} is not a level: use one of {levels}") from None
    if "\x00" in pattern:
        raise ValueError("a rule's pattern must not contain NUL")
    return PermissionRule(pattern, permission)


def parse_env(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` (the value may be empty and may hold ``=``)."""
    name, sep, value = text.partition("=")
    if not sep or not _ENV_NAME.fullmatch(name):
        raise ValueError(f"{text!r} is not NAME=VALUE with a variable name such as MY_VAR")
    if "\x00" in value:
        raise ValueError(f"the value of {name} must not contain NUL")
    return name, value


def parse_seconds(text: str) -> float:
    """A duration in seconds above zero (``--timeout 30``, ``--timeout 0.5``)."""
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of seconds") from None
    if not 0 < seconds < float("inf"):
        raise ValueError(f"{text!r}: give a number of seconds above 0")
    return seconds
