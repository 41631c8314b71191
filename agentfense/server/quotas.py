"""What one tenant may hold at once: sandboxes, open sessions, codebases, and the files of
its codebases (bytes, and entries: files, directories, links).

Every tenant has the server's default quota (``quota_*`` settings) unless the config file
gives it its own (``[server.quotas.<tenant>]``). A call that would go beyond is refused
RESOURCE_EXHAUSTED with a sentence naming the quota; what the tenant already holds stays.

A call that makes something (a sandbox, a session, a codebase, a file) awaits before what it
makes is counted where the tenant's holdings are counted, so it *reserves* its share first
(:meth:`Quotas.reserve`): calls racing each other each count what the others are making, and
together never go beyond the quota.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from ..errors import InvalidConfigurationError, ResourceLimitExceededError
from .tokens import check_tenant


@dataclass(frozen=True, slots=True)
class Quota:
    """The most a tenant may hold (0: no limit)."""

    sandboxes: int = 1000
    sessions: int = 4000
    codebases: int = 1000
    codebase_bytes: int = 256 * 1024**3
    codebase_entries: int = 10_000_000

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidConfigurationError(f"quota {field.name} must be an integer >= 0")


DEFAULT_QUOTA = Quota()
QUOTA_NAMES = tuple(field.name for field in dataclasses.fields(Quota))


def parse_quotas(value: object) -> dict[str, dict[str, int]]:
    """``[server.quotas.<tenant>]`` tables: each tenant's own limits, for the names it gives
    (the others are the server's default)."""
    if not isinstance(value, Mapping):
        raise InvalidConfigurationError(
            "quotas must be a table of tenants in the config file ([server.quotas.<tenant>])"
        )
    parsed: dict[str, dict[str, int]] = {}
    for tenant, limits in value.items():
        try:  # (a name no token can have would silently apply to no one)
            check_tenant(str(tenant))
        except InvalidConfigurationError as exc:
            raise InvalidConfigurationError(f"quotas.{tenant}: {exc.message}") from None
        if not isinstance(limits, Mapping):
            raise InvalidConfigurationError(f"quotas.{tenant} must be a table")
        for name, number in limits.items():
            if name not in QUOTA_NAMES:
                raise InvalidConfigurationError(
                    f"quotas.{tenant}: unknown quota {name!r}; known: {', '.join(QUOTA_NAMES)}"
                )
            if not isinstance(number, int) or isinstance(number, bool) or number < 0:
                raise InvalidConfigurationError(
                    f"quotas.{tenant}.{name} must be an integer >= 0, not {number!r}"
                )
        parsed[str(tenant)] = dict(limits)
    return parsed


class Quotas:
    """The server's default quota and each tenant's own."""

    def __init__(self, default: Quota, own: Mapping[str, Mapping[str, int]]) -> None:
        self._default = default
        self._own = {tenant: dataclasses.replace(default, **given) for tenant, given in own.items()}
        self._pending: dict[tuple[str, str], int] = {}  # (tenant, name): reserved, not yet held

    def of(self, tenant: str) -> Quota:
        return self._own.get(tenant, self._default)

    def check(self, tenant: str, name: str, held: int, adding: int = 1) -> None:
        """Refuse ``adding`` more of ``name`` to a tenant holding ``held`` (and what calls
        under way have reserved), beyond its quota."""
        most = getattr(self.of(tenant), name)
        if most and held + self._pending.get((tenant, name), 0) + adding > most:
            raise ResourceLimitExceededError(
                f"tenant {tenant[:64]!r} would exceed its quota of {most} "
                f"{_UNITS[name]} (quota_{name}); {_REMEDY[name]}"
            )

    @contextlib.contextmanager
    def reserve(self, tenant: str, name: str, held: int, adding: int = 1) -> Iterator[None]:
        """:meth:`check`, then hold ``adding`` of ``name`` for the tenant until the block
        ends. The block makes it and, before it ends and with no await between, puts it
        where ``held`` is counted from."""
        self.check(tenant, name, held, adding)
        key = (tenant, name)
        self._pending[key] = self._pending.get(key, 0) + adding
        try:
            yield
        finally:
            left = self._pending.pop(key, 0) - adding  # (the sum of those under way)
            if left:
                self._pending[key] = left


_UNITS = {
    "sandboxes": "sandboxes",
    "sessions": "open sessions",
    "codebases": "codebases",
    "codebase_bytes": "bytes of codebase files",
    "codebase_entries": "codebase entries (files, directories, links)",
}
_REMEDY = {
    "sandboxes": "destroy one first",
    "sessions": "close one first",
    "codebases": "delete one first",
    "codebase_bytes": "delete files or codebases first",
    "codebase_entries": "delete files or codebases first",
}
