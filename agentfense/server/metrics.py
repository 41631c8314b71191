"""The server's Prometheus metrics, in a registry of its own (never the process-global one).

Counters are moved where the work happens (``commands``, ``fs_supervisor``, the gRPC
listener); the gauges are read from the sandbox table and the session registry when scraped,
so they cannot drift from what the server holds. Every label takes a small, fixed set of
values: never an id, an owner or a path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..types import RuntimeType, SandboxStatus

# An exec's outcome, as the ``outcome`` label says it.
EXIT_ZERO = "exit_zero"
EXIT_NONZERO = "exit_nonzero"
TIMEOUT = "timeout"
ERROR = "error"  # refused or failed: a typed error went back instead of a result
CANCELLED = "cancelled"  # the caller went away or cancelled it

SandboxStates = Callable[[], Iterable[tuple[SandboxStatus, RuntimeType]]]
OpenSessions = Callable[[], int]

_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600)


class _Held(Collector):
    """The gauges of what the server holds now, read at each scrape."""

    def __init__(self, sandboxes: SandboxStates, sessions: OpenSessions) -> None:
        self._sandboxes = sandboxes
        self._sessions = sessions

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = {(state, runtime): 0 for state in SandboxStatus for runtime in RuntimeType}
        for key in self._sandboxes():
            counts[key] += 1
        family = GaugeMetricFamily(
            "agentfense_sandboxes",
            "Sandboxes the server holds, by state and runtime.",
            labels=["state", "runtime"],
        )
        for (state, runtime), count in counts.items():
            family.add_metric([state.value, runtime.value], count)
        yield family
        yield GaugeMetricFamily(
            "agentfense_sessions", "Open sessions, in every sandbox.", value=self._sessions()
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())  # (described when collected: nothing to read at registration)


class ServerMetrics:
    """Every metric of one server."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.execs = Counter(
            "agentfense_execs",
            "Commands run (plain and session ones), by kind and outcome.",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.exec_seconds = Histogram(
            "agentfense_exec_duration_seconds",
            "How long commands ran, from their start to their result (commit included).",
            ["kind"],
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.fs_control = Counter(
            "agentfense_fs_control_requests",
            "Requests of the server to the permission filesystem process over its control "
            "channel, by op and result.",
            ["op", "result"],
            registry=self.registry,
        )
        self.fs_requests = Counter(
            "agentfense_fs_requests",
            "FUSE requests the permission filesystem answered for sandboxes' views, by op "
            "(reported with each commit).",
            ["op"],
            registry=self.registry,
        )
        self.commits = Counter(
            "agentfense_commits",
            "Commits of what sandboxes wrote into their codebases, by result "
            "(changed, unchanged, failed).",
            ["result"],
            registry=self.registry,
        )
        self.committed_entries = Counter(
            "agentfense_commit_entries",
            "Entries (files, directories, links, deletions) commits applied to codebases.",
            registry=self.registry,
        )
        self.committed_bytes = Counter(
            "agentfense_commit_bytes",
            "Bytes of the regular files commits moved into codebases.",
            registry=self.registry,
        )
        self.rpcs = Counter(
            "agentfense_grpc_requests",
            "gRPC calls answered, by method and status code (OK included).",
            ["method", "code"],
            registry=self.registry,
        )
        self.lifecycle = Counter(
            "agentfense_lifecycle_events",
            "Lifecycle events of sandboxes (created, started, start failed, stopped, "
            "expired, destroyed) and sessions (opened, closed).",
            ["event"],
            registry=self.registry,
        )

    def watch(self, sandboxes: SandboxStates, sessions: OpenSessions) -> None:
        """Report the gauges from these (called once, by the sandbox manager)."""
        self.registry.register(_Held(sandboxes, sessions))

    def exposition(self) -> bytes:
        """Every metric in Prometheus's text format."""
        return generate_latest(self.registry)
