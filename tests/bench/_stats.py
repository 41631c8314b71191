"""Percentiles of timing samples and the table the suite prints."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Unit:
    """How a row's values are shown: stored values (seconds, bytes) times ``scale``."""

    name: str
    scale: float
    digits: int

    def show(self, value: float | None) -> str:
        return "-" if value is None else f"{value * self.scale:.{self.digits}f}"


MS = Unit("ms", 1000.0, 3)  # values in seconds
MIB = Unit("MiB", 1 / 2**20, 3)  # values in bytes
MB = Unit("MB", 1e-6, 1)  # values in bytes
SECONDS = Unit("s", 1.0, 2)  # values in seconds
THREADS = Unit("threads", 1.0, 0)  # values are counts


@dataclass(frozen=True, slots=True)
class Summary:
    """p50/p90 of a sample (seconds, or bytes for a memory row); a single value has no p90.
    ``p95``/``p99`` only where the tail is asked for (``tails``)."""

    p50: float
    p90: float | None
    n: int
    p95: float | None = None
    p99: float | None = None

    @classmethod
    def of(cls, samples: Sequence[float], *, tails: bool = False) -> Summary:
        if len(samples) < 2:
            raise ValueError("need at least two samples for percentiles")
        cuts = statistics.quantiles(samples, n=100, method="inclusive")
        p95, p99 = (cuts[94], cuts[98]) if tails else (None, None)
        return cls(p50=cuts[49], p90=cuts[89], n=len(samples), p95=p95, p99=p99)

    @classmethod
    def single(cls, value: float) -> Summary:
        """One measured value (shown as the p50)."""
        return cls(p50=value, p90=None, n=1)


@dataclass(frozen=True, slots=True)
class Target:
    """``max_ratio``: ours p50 <= max_ratio x baseline p50; ``max_p50``: ours p50 <= a value
    in the row's stored unit (seconds, or bytes for a memory row); ``no_errors``: none of the
    row's attempts failed (``Row.failed``)."""

    max_ratio: float | None = None
    max_p50: float | None = None
    no_errors: bool = False

    def describe(self, unit: Unit = MS) -> str:
        if self.max_ratio is not None:
            return f"<={self.max_ratio:g}x base"
        if self.max_p50 is not None:
            return f"p50<={self.max_p50 * unit.scale:g}{unit.name}"
        if self.no_errors:
            return "no errors"
        return "-"

    def met(self, ours: Summary, base: Summary | None, failed: int = 0) -> bool | None:
        if self.max_ratio is not None and base is not None:
            return ours.p50 <= self.max_ratio * base.p50
        if self.max_p50 is not None:
            return ours.p50 <= self.max_p50
        if self.no_errors:
            return failed == 0
        return None


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table; ``error`` when the measurement itself failed; ``unavailable``
    when it could not be taken here for a known reason (not an error: e.g. the server lacks
    the feature); ``note`` is printed below the table (derived figures such as a throughput);
    ``failed``: attempts that failed (their times are not in ``ours``)."""

    name: str
    backend: str
    ours: Summary | None
    base: Summary | None = None
    base_name: str = ""
    target: Target = Target()
    error: str = ""
    unit: Unit = MS
    note: str = ""
    unavailable: str = ""
    failed: int = 0

    @property
    def ratio(self) -> float | None:
        if self.ours is None or self.base is None or self.base.p50 <= 0:
            return None
        return self.ours.p50 / self.base.p50

    @property
    def verdict(self) -> str:
        if self.error:
            return "ERROR"
        if self.unavailable:
            return f"n/a ({self.unavailable})"
        assert self.ours is not None
        met = self.target.met(self.ours, self.base, self.failed)
        if met is None:
            return "-"
        return "yes" if met else "MISSED"


def _count(ours: Summary | None, base: Summary | None) -> str:
    if ours is None:
        return "-"
    return str(ours.n) if base is None else f"{ours.n}/{base.n}"


HEADERS = (
    "benchmark",
    "backend",
    "n ours/base",
    "unit",
    "ours p50",
    "ours p90",
    "baseline",
    "base p50",
    "base p90",
    "ratio",
    "target",
    "met?",
)


def _tails(unit: Unit, ours: Summary | None) -> tuple[str, str]:
    if ours is None:
        return "-", "-"
    return unit.show(ours.p95), unit.show(ours.p99)


def render(rows: Sequence[Row]) -> str:
    """The rows as an aligned text table (errors and notes listed below it). The ``ours
    p95``/``ours p99`` columns are there when a row has them."""
    tails = any(row.ours is not None and row.ours.p99 is not None for row in rows)
    headers = (*HEADERS[:6], "ours p95", "ours p99", *HEADERS[6:]) if tails else HEADERS
    lines: list[tuple[str, ...]] = [headers]
    for row in rows:
        ours, base, ratio, unit = row.ours, row.base, row.ratio, row.unit
        lines.append(
            (
                row.name,
                row.backend,
                _count(ours, base),
                unit.name,
                unit.show(None if ours is None else ours.p50),
                unit.show(None if ours is None else ours.p90),
                *(_tails(unit, ours) if tails else ()),
                row.base_name or "-",
                unit.show(None if base is None else base.p50),
                unit.show(None if base is None else base.p90),
                "-" if ratio is None else f"{ratio:.2f}x",
                row.target.describe(unit),
                row.verdict,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    numeric = {2, 4, 5, 6, 7, 9, 10, 11} if tails else {2, 4, 5, 7, 8, 9}
    out = []
    for index, line in enumerate(lines):
        cells = [
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(line)
        ]
        out.append("  ".join(cells).rstrip())
        if index == 0:
            out.append("  ".join("-" * w for w in widths))
    out += [f"ERROR in {row.name} [{row.backend}]: {row.error}" for row in rows if row.error]
    notes = [f"  {row.name} [{row.backend}]: {row.note}" for row in rows if row.note]
    if notes:
        out += ["", "notes:", *notes]
    return "\n".join(out)
