"""``python -m tests.bench [--quick] [--only GROUP ...]``: every benchmark (or the groups named),
ours and a baseline side by side.

Each measurement interleaves ours and its baseline in blocks, in one run, and prints p50/p90 and
the ratio. Exits non-zero only when a measurement fails (or the server misbehaves); a missed
target shows as MISSED in the table, never as a failure. The permission filesystem's
benchmarks (``_fs.py``) time commands inside the sandbox, and measure a dedicated server's
memory with many sandboxes running. The concurrency benchmarks (``_concurrency.py``) run
sandboxes at once against one after another, and the client's memory and threads with many
sandboxes at once, each in a fresh process (``_fanout.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import anyio

from agentfense.testing import start_server_process

from . import _fs
from ._baselines import open_echo, raw_bwrap, raw_lifecycle
from ._concurrency import Fanout, fanout, sleepers_at_once, sleepers_in_turn
from ._ours import get_sandbox, lifecycle, open_sandbox, run_true
from ._sessions import session_vs_run
from ._stats import MB, MIB, SECONDS, THREADS, Row, Summary, Target, render
from ._timing import interleaved

EXEC_TARGET = Target(max_ratio=1.5)
LIFECYCLE_TARGET = Target(max_p50=0.200)
GREP_TARGET = Target(max_ratio=2.0)
READ_TARGET = Target(max_ratio=2.0)  # at least half the host's throughput
MEMORY_TARGET = Target(max_p50=5 * 2**20)  # bytes of server + fs memory per running sandbox
CLIENT_MEMORY_TARGET = Target(max_p50=100e6)  # bytes of client memory, sandboxes at once
THREADS_TARGET = Target(max_ratio=1.0)  # as many threads for many sandboxes as for a few
SLEEP_SLACK = 0.5  # seconds over one sleep that sandboxes sleeping at once may take in all
INFORMATIVE = Target()
IDLE = 0.2  # seconds of idleness before each "after idle" iteration
FS_BACKEND = "asyncio"  # the fs benchmarks time commands inside the sandbox: one backend

Samples = tuple[list[float], list[float]]
R = TypeVar("R")


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
    grep: int = 20
    read: int = 20
    create: int = 10
    sandboxes: int = 100  # running at once, for the memory per sandbox
    fs_warmup: int = 1
    session: int = 200
    sleepers: int = 10  # sandboxes sleeping at once, and in turn
    sleep: float = 10.0  # seconds each sleeps
    fanout: int = 100  # sandboxes at once, for the client's memory and threads
    fanout_small: int = 10  # the same with fewer: threads must not grow with the number

    def quick(self) -> Sizes:
        """Five times fewer iterations (and sandboxes), shorter sleeps: a smoke run."""
        return Sizes(
            exec=self.exec // 5,
            raw_bwrap=self.raw_bwrap // 5,
            idle=self.idle // 5,
            unary=self.unary // 5,
            lifecycle=self.lifecycle // 5,
            warmup=self.warmup // 5,
            lifecycle_warmup=1,
            grep=self.grep // 5,
            read=self.read // 5,
            create=self.create // 5,
            sandboxes=self.sandboxes // 5,
            fs_warmup=1,
            session=self.session // 5,
            sleepers=self.sleepers,
            sleep=1.0,
            fanout=self.fanout // 5,
            fanout_small=self.fanout_small // 2,
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


async def _attempt(label: str, measurement: Awaitable[R], reference: list[float]) -> R | Exception:
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


def _p50(samples: list[float]) -> float:
    return Summary.of(samples).p50


def _error_rows(names: list[str], backend: str, error: Exception) -> list[Row]:
    return [Row(name, backend, None, error=f"{type(error).__name__}: {error}") for name in names]


def _create_rows(result: _fs.CreateSamples | Exception) -> list[Row]:
    n = _fs.CREATE_FILES
    names = [
        f"create {n} files (write sandbox, in-sandbox time)",
        f"exec round trip - in-sandbox time, {n} new files (~commit)",
        f'run("true") right after creating {n} files',
    ]
    if isinstance(result, Exception):
        return _error_rows(names, FS_BACKEND, result)
    commit = _p50(result.overhead) - _p50(result.true_idle)
    inside, host = _p50(result.inside) / n, _p50(result.host) / n
    return [
        Row(
            names[0],
            FS_BACKEND,
            Summary.of(result.inside),
            Summary.of(result.host),
            "host tmp dir",
            INFORMATIVE,
            note=f"{inside * 1e6:.0f} us per file in the sandbox, {host * 1e6:.0f} us on the "
            "host (on a journal-less ext4, creating a file gets slower with every file deleted "
            "nearby in the last minute or more: both sides vary with other work's churn)",
        ),
        Row(
            names[1],
            FS_BACKEND,
            Summary.of(result.overhead),
            Summary.of(result.true_idle),
            'run("true"), nothing pending',
            INFORMATIVE,
            note=f"commit of {n} new files ~ ours p50 - base p50 = {commit * 1000:.1f} ms "
            f"({commit / n * 1e6:.0f} us per file)",
        ),
        Row(
            names[2],
            FS_BACKEND,
            Summary.of(result.true_after),
            Summary.of(result.true_idle),
            'run("true"), nothing pending',
            INFORMATIVE,
        ),
    ]


def _read_note(result: Samples | Exception) -> str:
    if isinstance(result, Exception):
        return ""
    ours, base = (_fs.BIG_SIZE / 2**20 / _p50(samples) for samples in result)
    return (
        f"throughput at p50: sandbox {ours:.0f} MiB/s, host {base:.0f} MiB/s "
        f"({ours / base:.2f} of native; target >= 0.5)"
    )


async def fs_suite(
    endpoint: str, state_dir: Path, work: Path, sizes: Sizes, reference: list[float]
) -> list[Row]:
    """``grep -r`` and a sequential read, on the suite's server (one backend)."""
    files = _fs.GREP_DIRS * _fs.GREP_FILES_PER_DIR
    grep_result = await _attempt(
        f"grep -r over {files} files: read-only sandbox vs host",
        _fs.grep(endpoint, state_dir, work / "grep-tree", sizes.grep, sizes.fs_warmup),
        reference,
    )
    read_result = await _attempt(
        "sequential read of 256 MiB: read-only sandbox vs host",
        _fs.sequential_read(endpoint, state_dir, work / "big", sizes.read, sizes.fs_warmup),
        reference,
    )
    read_row = _row(
        "dd bs=1M of a 256 MiB file (in-sandbox time)",
        FS_BACKEND,
        read_result,
        "host dd",
        READ_TARGET,
    )
    return [
        _row(
            f"grep -r over {files} files (in-sandbox time)",
            FS_BACKEND,
            grep_result,
            "host grep -r",
            GREP_TARGET,
        ),
        dataclasses.replace(read_row, note=_read_note(read_result)),
    ]


async def create_suite(
    endpoint: str, state_dir: Path, work: Path, sizes: Sizes, reference: list[float]
) -> list[Row]:
    """Creating files in a sandbox, and the commit: first of all (see ``_fs.create_files``)."""
    result = await _attempt(
        f"creating {_fs.CREATE_FILES} files: write sandbox vs host, and the commit",
        _fs.create_files(endpoint, state_dir, work / "project-small", sizes.create),
        reference,
    )
    return _create_rows(result)


def _mib(value: float) -> str:
    return f"{value / 2**20:.1f} MiB"


def _kib(value: float) -> str:
    return f"{value / 2**10:.0f} KiB"


def _memory_rows(result: _fs.MemoryResult | Exception, count: int) -> list[Row]:
    names = [
        f"server+fs RSS per running sandbox ({count})",
        f"sandbox processes' RSS per sandbox ({count})",
    ]
    if isinstance(result, Exception):
        return _error_rows(names, "-", result)
    before, after, destroyed = result.before, result.after, result.destroyed
    server = (after.server - before.server) / count
    fs = (after.fs - before.fs) / count
    processes = (after.sandbox_processes - before.sandbox_processes) / count
    pss = (after.sandboxes_pss - before.sandboxes_pss) / count
    return [
        Row(
            names[0],
            "-",
            Summary.single(server + fs),
            target=MEMORY_TARGET,
            unit=MIB,
            note=f"server {_kib(server)} + fs process {_kib(fs)} per sandbox; server+fs "
            f"{_mib(before.server + before.fs)} before, {_mib(after.server + after.fs)} with "
            f"{count} running, {_mib(destroyed.server + destroyed.fs)} after destroying them",
        ),
        Row(
            names[1],
            "-",
            Summary.single((after.sandboxes - before.sandboxes) / count),
            target=INFORMATIVE,
            unit=MIB,
            note=f"{processes:g} processes per sandbox (bwrap and the agent), outside the "
            f"server's memory; proportional (PSS) {_mib(pss)} per sandbox",
        ),
    ]


async def memory_suite(work: Path, count: int, reference: list[float]) -> list[Row]:
    """Server memory per running sandbox, on a dedicated server."""
    (work / "server-memory").mkdir()
    try:
        server = start_server_process(work / "server-memory")
    except RuntimeError as exc:
        _progress(str(exc))
        return _memory_rows(exc, count)
    try:
        result = await _attempt(
            f"server memory with {count} running sandboxes",
            _fs.memory(server, work / "project-small", count),
            reference,
        )
    finally:
        code = server.stop()
        _remove_state(server.state_dir)
    if code != 0 and not isinstance(result, Exception):
        result = RuntimeError(f"the memory server exited with {code}: {server.log()[-2000:]}")
    return _memory_rows(result, count)


async def session_suite(
    backend: str, endpoint: str, work: Path, sizes: Sizes, reference: list[float]
) -> list[Row]:
    """``session.exec("true")`` vs ``run("true")`` in one sandbox, on the current backend."""
    name = 'session.exec("true")'
    result = await _attempt(
        f"{backend}: session.exec('true') vs run('true')",
        session_vs_run(endpoint, work / "project-small", sizes.session, sizes.warmup),
        reference,
    )
    if result is None:
        _progress(f"{backend}: the server answers sessions with UNIMPLEMENTED")
        return [Row(name, backend, None, unavailable="server lacks sessions")]
    return [_row(name, backend, result, 'run("true")', INFORMATIVE)]


def _seconds_row(name: str, backend: str, ours: float, base: float, base_name: str) -> Row:
    return Row(name, backend, Summary.single(ours), Summary.single(base), base_name)


def _sleep_rows(
    count: int, seconds: float, at_once: dict[str, float | Exception], in_turn: float | Exception
) -> list[Row]:
    name = f"{count} x from_local+run('sleep {seconds:g}') at once: wall"
    rows = []
    for backend, ours in at_once.items():
        if isinstance(ours, Exception):
            rows += _error_rows([name], backend, ours)
        elif isinstance(in_turn, Exception):
            rows += _error_rows([name], backend, in_turn)
        else:
            rows.append(
                Row(
                    name,
                    backend,
                    Summary.single(ours),
                    Summary.single(in_turn),
                    "one after another",
                    Target(max_p50=seconds + SLEEP_SLACK),
                    unit=SECONDS,
                    note=f"{ours - seconds:.2f} s over one sleep; one after another (measured "
                    f"once, on asyncio, between the two backends' runs) "
                    f"{in_turn - count * seconds:.2f} s over {count} sleeps",
                )
            )
    return rows


async def _sleepers(
    measure: Callable[[str, Path, int, float], Awaitable[float]],
    label: str,
    endpoint: str,
    work: Path,
    sizes: Sizes,
    reference: list[float],
) -> float | Exception:
    project = work / "project-small"
    return await _attempt(label, measure(endpoint, project, sizes.sleepers, sizes.sleep), reference)


def sleep_suite(endpoint: str, work: Path, sizes: Sizes, reference: list[float]) -> list[Row]:
    """Sandboxes sleeping at once on each backend, and one after another (once) in between."""
    what = f"{sizes.sleepers} sandboxes running 'sleep {sizes.sleep:g}'"
    args = (endpoint, work, sizes, reference)
    at_once: dict[str, float | Exception] = {}
    at_once["asyncio"] = anyio.run(_sleepers, sleepers_at_once, f"asyncio: {what} at once", *args)
    in_turn = anyio.run(_sleepers, sleepers_in_turn, f"asyncio: {what} one after another", *args)
    at_once["trio"] = anyio.run(
        _sleepers, sleepers_at_once, f"trio: {what} at once", *args, backend="trio"
    )
    return _sleep_rows(sizes.sleepers, sizes.sleep, at_once, in_turn)


async def _fanouts(
    backend: str, endpoint: str, project: Path, sizes: Sizes
) -> tuple[Fanout, Fanout]:
    """The small and the large fan-out (the large one's heap peak from a traced run)."""
    small = await fanout(backend, endpoint, project, sizes.fanout_small)
    large = await fanout(backend, endpoint, project, sizes.fanout)
    traced = await fanout(backend, endpoint, project, sizes.fanout, tracemalloc=True)
    return small, dataclasses.replace(large, heap_peak=traced.heap_peak)


def _fanout_rows(
    backend: str, sizes: Sizes, result: tuple[Fanout, Fanout] | Exception
) -> list[Row]:
    many, few = sizes.fanout, sizes.fanout_small
    names = [
        f"{many} x from_local+run('echo done') at once: wall",
        f"client peak RSS increase, {many} sandboxes at once",
        f"client peak threads, {many} sandboxes at once",
    ]
    if isinstance(result, Exception):
        return _error_rows(names, backend, result)
    small, large = result
    heap = "-" if large.heap_peak is None else _mib(large.heap_peak)
    return [
        dataclasses.replace(
            _seconds_row(names[0], backend, large.wall, small.wall, f"{few} at once"),
            unit=SECONDS,
        ),
        Row(
            names[1],
            backend,
            Summary.single(large.rss_increase),
            Summary.single(small.rss_increase),
            f"{few} at once",
            CLIENT_MEMORY_TARGET,
            unit=MB,
            note=f"fresh client process: RSS {_mib(large.start_rss)} at start, peak (VmHWM"
            f"{'' if large.peak_reset else ', not reset'}) {_mib(large.peak_rss)} with {many} "
            f"({_mib(small.peak_rss)} with {few}); ru_maxrss {_mib(large.ru_maxrss)} (includes "
            f"the parent's peak); Python heap peak (tracemalloc, a separate run) {heap}",
        ),
        Row(
            names[2],
            backend,
            Summary.single(large.threads_peak),
            Summary.single(small.threads_peak),
            f"{few} at once",
            THREADS_TARGET,
            unit=THREADS,
            note=f"OS threads (/proc Threads) {large.threads_start} at start, peak "
            f"{large.threads_peak} with {many}, {small.threads_peak} with {few}; "
            f"threading.active_count() peak {large.py_threads_peak} / {small.py_threads_peak}",
        ),
    ]


async def fanout_suite(
    endpoint: str, work: Path, sizes: Sizes, reference: list[float]
) -> list[Row]:
    """Many sandboxes at once, each backend's client in a fresh process of its own."""
    rows = []
    for backend in ("asyncio", "trio"):
        result = await _attempt(
            f"{backend}: {sizes.fanout_small}, then {sizes.fanout} sandboxes running "
            "'echo done' at once (fresh client processes)",
            _fanouts(backend, endpoint, work / "project-small", sizes),
            reference,
        )
        rows += _fanout_rows(backend, sizes, result)
    return rows


GROUPS = ("create", "exec", "fs", "session", "sleep", "fanout", "memory")


def shared_server_suites(
    groups: set[str], work: Path, sizes: Sizes, reference: list[float]
) -> tuple[list[Row], bool]:
    """The selected groups that share one server (every group but ``memory``), and whether
    that server failed (exited with an error)."""
    rows: list[Row] = []
    create_rows: list[Row] = []
    (work / "server").mkdir()
    _progress("starting the server")
    server = start_server_process(work / "server")
    endpoint = server.endpoint
    fs_args = (endpoint, server.state_dir, work, sizes, reference)
    try:
        if "create" in groups:  # first of all (see _fs.create_files); listed after fs
            create_rows = anyio.run(create_suite, *fs_args, backend=FS_BACKEND)
        for backend in ("asyncio", "trio") if "exec" in groups else ():
            rows += anyio.run(suite, backend, endpoint, work, sizes, reference, backend=backend)
        for backend in ("asyncio", "trio") if "session" in groups else ():
            rows += anyio.run(
                session_suite, backend, endpoint, work, sizes, reference, backend=backend
            )
        if "fs" in groups:
            rows += anyio.run(fs_suite, *fs_args, backend=FS_BACKEND)
        rows += create_rows
        if "sleep" in groups:
            rows += sleep_suite(endpoint, work, sizes, reference)
        if "fanout" in groups:
            rows += anyio.run(fanout_suite, endpoint, work, sizes, reference)
    finally:
        code = server.stop()
        _remove_state(server.state_dir)
    if code != 0:
        print(f"the server exited with {code}:\n{server.log()[-4000:]}", file=sys.stderr)
    return rows, code != 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5x fewer iterations (a smoke run)")
    parser.add_argument(
        "--only",
        action="append",
        choices=GROUPS,
        metavar="GROUP",
        help=f"run only this group of benchmarks (repeatable): {', '.join(GROUPS)}",
    )
    args = parser.parse_args(argv)
    sizes = Sizes().quick() if args.quick else Sizes()
    groups = set(args.only or GROUPS)
    started = time.perf_counter()
    rows: list[Row] = []
    server_failed = False
    reference = cpu_reference()
    with tempfile.TemporaryDirectory(prefix="agentfense-bench-") as tmp:
        work = Path(tmp)
        make_project(work / "project-small", 3)
        if "exec" in groups:
            make_project(work / "project-100", 100)
        if "fs" in groups:
            _fs.make_grep_tree(work / "grep-tree")
        if groups - {"memory"}:
            rows, server_failed = shared_server_suites(groups, work, sizes, reference)
        if "memory" in groups:
            rows += anyio.run(memory_suite, work, sizes.sandboxes, reference, backend=FS_BACKEND)
    # The asyncio and trio rows of one benchmark next to each other.
    order = {name: i for i, name in enumerate(dict.fromkeys(r.name for r in rows))}
    rows.sort(key=lambda r: order[r.name])
    print()
    print(render(rows))
    mode = " (--quick)" if args.quick else ""
    print(
        "\nratio = ours p50 / baseline p50; ours and its baseline ran interleaved in blocks"
        "\n(n 1/1: one measurement each, taken one right after the other in this run)."
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
