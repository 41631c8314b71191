"""``python -m tests.bench [--quick]``: every benchmark, ours and a baseline side by side.

Each measurement interleaves ours and its baseline in blocks, in one run, and prints p50/p90 and
the ratio. Exits non-zero only when a measurement fails (or the server misbehaves); a missed
target shows as MISSED in the table, never as a failure.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path

import anyio

from agentfense.testing import start_server_process

from ._baselines import open_echo, raw_bwrap, raw_lifecycle
from ._ours import get_sandbox, lifecycle, open_sandbox, run_true
from ._stats import Row, Summary, Target, render
from ._timing import interleaved

EXEC_TARGET = Target(max_ratio=1.5)
LIFECYCLE_TARGET = Target(max_p50=0.200)
INFORMATIVE = Target()
IDLE = 0.2  # seconds of idleness before each "after idle" iteration

Samples = tuple[list[float], list[float]]


@dataclass(frozen=True, slots=True)
class Sizes:
    """Iterations per measurement (ours, baseline) and warm-ups."""

    exec: int = 200
    raw_bwrap: int = 100
    idle: int = 20
    unary: int = 1000
    lifecycle: int = 20
    warmup: int = 10
    lifecycle_warmup: int = 2

    def quick(self) -> Sizes:
        """Five times fewer iterations: a smoke run."""
        return Sizes(
            exec=self.exec // 5,
            raw_bwrap=self.raw_bwrap // 5,
            idle=self.idle // 5,
            unary=self.unary // 5,
            lifecycle=self.lifecycle // 5,
            warmup=self.warmup // 5,
            lifecycle_warmup=1,
        )


def make_project(root: Path, files: int) -> Path:
    """A project of ``files`` small Python files, ten to a directory."""
    for index in range(files):
        path = root / f"pkg{index // 10}" / f"module{index % 10}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f'"""Module {index}."""\n\nVALUE = {index}\n\n\ndef f(x):\n    return x\n')
    return root


def _mounts_under(directory: Path) -> list[str]:
    """Mount points at or below ``directory`` (dead FUSE mounts included, unlike ismount)."""
    prefix = str(directory)
    with open("/proc/self/mounts") as mounts:
        points = [line.split(" ")[1].encode().decode("unicode_escape") for line in mounts]
    return [point for point in points if point == prefix or point.startswith(prefix + "/")]


def _remove_state(state_dir: Path) -> None:
    """Delete the stopped server's state directory (it lives outside our temporary one)."""
    if "agentfense" not in state_dir.name or not state_dir.is_dir():
        return  # not a directory the test server made for itself: leave it alone
    mounted = _mounts_under(state_dir)
    if mounted:
        print(f"left {state_dir} in place: {', '.join(mounted)} still mounted", file=sys.stderr)
        return
    shutil.rmtree(state_dir, ignore_errors=True)


def cpu_reference(samples: int = 30) -> list[float]:
    """Timings of a fixed pure-Python loop: how much CPU this run actually got."""
    timings = []
    for _ in range(samples):
        started = time.perf_counter()
        sum(range(200_000))
        timings.append(time.perf_counter() - started)
    return timings


def _progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def _attempt(
    label: str, measurement: Awaitable[Samples], reference: list[float]
) -> Samples | Exception:
    """Run one measurement (errors are returned, not raised), then sample the CPU reference."""
    _progress(label)
    try:
        return await measurement
    except Exception as exc:
        _progress("".join(traceback.format_exception(exc)).rstrip())
        return exc
    finally:
        reference += cpu_reference(10)


def _row(
    name: str, backend: str, result: Samples | Exception, base_name: str, target: Target
) -> Row:
    if isinstance(result, Exception):
        return Row(
            name, backend, None, None, base_name, target, f"{type(result).__name__}: {result}"
        )
    ours, base = result
    return Row(
        name, backend, Summary.of(ours), Summary.of(base) if base else None, base_name, target
    )


async def suite(
    backend: str, endpoint: str, work: Path, sizes: Sizes, reference: list[float]
) -> list[Row]:
    """Every measurement on the current async backend, as table rows.

    ``reference`` collects CPU reference timings taken between the measurements.
    """
    small, hundred = work / "project-small", work / "project-100"
    etc = work / "raw-etc"
    scratch = work / f"scratch-{backend}"
    scratch.mkdir()
    bwrap = raw_bwrap(etc, small)
    exec_result: Samples | Exception
    idle_result: Samples | Exception
    unary_result: Samples | Exception
    try:
        async with await open_sandbox(endpoint, small) as sandbox:
            exec_result = await _attempt(
                f"{backend}: run('true') vs raw bwrap",
                interleaved(
                    run_true(sandbox),
                    bwrap,
                    n_ours=sizes.exec,
                    n_base=sizes.raw_bwrap,
                    warmup=sizes.warmup,
                ),
                reference,
            )
            idle_result = await _attempt(
                f"{backend}: run('true') vs raw bwrap, after {IDLE:g} s idle",
                interleaved(
                    run_true(sandbox),
                    bwrap,
                    n_ours=sizes.idle,
                    n_base=sizes.idle,
                    warmup=1,
                    block_warmup=0,
                    pause=IDLE,
                ),
                reference,
            )
            async with open_echo(work / f"echo-{backend}.sock") as echo:
                unary_result = await _attempt(
                    f"{backend}: get_sandbox RPC vs loopback echo",
                    interleaved(
                        get_sandbox(sandbox),
                        echo,
                        n_ours=sizes.unary,
                        n_base=sizes.unary,
                        warmup=sizes.warmup * 5,
                    ),
                    reference,
                )
    except Exception as exc:
        _progress("".join(traceback.format_exception(exc)).rstrip())
        exec_result = idle_result = unary_result = exc
    lifecycle_result = await _attempt(
        f"{backend}: lifecycle of a 100-file project vs raw copy+bwrap+rm",
        interleaved(
            lifecycle(endpoint, hundred),
            raw_lifecycle(etc, hundred, scratch),
            n_ours=sizes.lifecycle,
            n_base=sizes.lifecycle,
            warmup=sizes.lifecycle_warmup,
            blocks=5,
            block_warmup=0,
        ),
        reference,
    )
    return [
        _row('run("true")', backend, exec_result, "raw bwrap true", EXEC_TARGET),
        _row(
            f'run("true") after {IDLE:g}s idle',
            backend,
            idle_result,
            "raw bwrap true, idle",
            INFORMATIVE,
        ),
        _row("get_sandbox RPC", backend, unary_result, f"{backend} uds echo", INFORMATIVE),
        _row(
            "from_local(100 files)+run+destroy",
            backend,
            lifecycle_result,
            "raw cp+bwrap+rm",
            LIFECYCLE_TARGET,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5x fewer iterations (a smoke run)")
    args = parser.parse_args(argv)
    sizes = Sizes().quick() if args.quick else Sizes()
    started = time.perf_counter()
    rows: list[Row] = []
    server_failed = False
    reference = cpu_reference()
    with tempfile.TemporaryDirectory(prefix="agentfense-bench-") as tmp:
        work = Path(tmp)
        make_project(work / "project-small", 3)
        make_project(work / "project-100", 100)
        (work / "server").mkdir()
        _progress("starting the server")
        server = start_server_process(work / "server")
        try:
            for backend in ("asyncio", "trio"):
                rows += anyio.run(
                    suite, backend, server.endpoint, work, sizes, reference, backend=backend
                )
        finally:
            code = server.stop()
            _remove_state(server.state_dir)
        if code != 0:
            server_failed = True
            print(f"the server exited with {code}:\n{server.log()[-4000:]}", file=sys.stderr)
    # The asyncio and trio rows of one benchmark next to each other.
    order = {name: i for i, name in enumerate(dict.fromkeys(r.name for r in rows))}
    rows.sort(key=lambda r: order[r.name])
    print()
    print(render(rows))
    mode = " (--quick)" if args.quick else ""
    print(
        "\nratio = ours p50 / baseline p50; ours and its baseline ran interleaved in blocks."
        "\nA MISSED target is reported, not failed: the exit status reflects errors only."
    )
    typical, best = statistics.median(reference), min(reference)
    print(
        f"CPU reference loop (between measurements): p50 {typical * 1000:.2f} ms, best "
        f"{best * 1000:.2f} ms; p50/best {typical / best:.2f} (well above 1: other load on "
        "this machine inflated absolute timings; ratios are measured side by side)"
    )
    print(f"total {time.perf_counter() - started:.1f} s{mode}")
    return 1 if server_failed or any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
