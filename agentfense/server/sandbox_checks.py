"""The checks of what a client asks of a new sandbox, beyond what the wire checks: its labels,
its expiry and its resource limits, each refused with a sentence naming the field."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

from ..errors import InvalidConfigurationError
from ..types import ResourceLimits

# The smallest limits a sandbox can start and run a shell under.
_RESOURCE_MINIMA = {
    "memory_bytes": (16 * 1024 * 1024, "16 MiB"),
    "cpu_quota": (1000, "1000 microseconds per 100 ms period"),
    "cpu_shares": (2, "2"),
    "pids_limit": (8, "8"),
}


# The most labels a sandbox may carry, and how long their keys and values may be.
MAX_LABELS = 64
MAX_LABEL_KEY = 256
MAX_LABEL_VALUE = 1024
MOST_EXPIRES_IN = timedelta(days=3650)


def check_labels(labels: Mapping[str, str]) -> None:
    if len(labels) > MAX_LABELS:
        raise InvalidConfigurationError(
            f"labels: {len(labels)} of them; at most {MAX_LABELS} are allowed"
        )
    for key, value in labels.items():
        if not key or len(key) > MAX_LABEL_KEY or len(value) > MAX_LABEL_VALUE:
            raise InvalidConfigurationError(
                f"labels keys must be 1-{MAX_LABEL_KEY} characters and values at most "
                f"{MAX_LABEL_VALUE}"
            )
        if "\x00" in key or "\x00" in value:
            raise InvalidConfigurationError(f"label {key[:64]!r} must not contain NUL")


# The largest limits the kernel takes (cpu_quota: 10,000 CPUs' worth of a 100 ms period).
_RESOURCE_MAXIMA = {
    "cpu_quota": (10**9, "1000000000 microseconds per 100 ms period"),
    "cpu_shares": (262144, "262144"),
    "pids_limit": (4194304, "4194304 (the kernel's largest pid)"),
}


def check_resources(resources: ResourceLimits) -> None:
    for name, (least, said) in _RESOURCE_MINIMA.items():
        value = getattr(resources, name)
        if value and value < least:
            raise InvalidConfigurationError(f"resources.{name} must be at least {said}")
    for name, (most, said) in _RESOURCE_MAXIMA.items():
        value = getattr(resources, name)
        if value and value > most:
            raise InvalidConfigurationError(f"resources.{name} must be at most {said}")
