"""``python -m tests.bench [--quick] [--only GROUP ...]``: every benchmark (or the groups named),
ours and a baseline side by side.

Each measurement interleaves ours and its baseline in blocks, in one run, and prints p50/p90 and
the ratio. Exits non-zero only when a measurement fails (or the server misbehaves); a missed
target shows as MISSED in the table, never as a failure. The permission filesystem's benchmarks
(``_fs.py``) time commands inside the sandbox, and measure a dedicated server's memory with many
sandboxes running. The authentication benchmark (``_auth.py``) times calls to a server that
checks tokens against one that does not. The concurrency benchmarks (``_concurrency.py``) run
sandboxes at once against one after another, and the client's memory and threads with many
sandboxes at once, each in a fresh process (``_fanout.py``); their suites are in
``_concurrency_suites.py``. The Docker benchmarks (``_docker.py``) time a docker sandbox's
create+start, exec round trip and destroy against the raw Docker Engine API, and bwrap against
Docker on the same commands; without a Docker engine their rows show n/a. The TLS benchmark
(``_tls.py``) times ``run("true")`` over TLS against plain TCP, on two servers of its own. The
trust benchmark (``_trust.py``) times ``run("true")`` and one unary RPC with auth and TLS on
against both off (issue 12's target), on two servers of its own. The start benchmark
(``_start.py``, issue 16's targets) times ``StartSandbox`` and the first command of 100
sandboxes created one after another, 10 ms apart and all at once (p95 and p99 too) against raw
bwrap spawns, ``run("true")`` against a raw bwrap spawn, and the memory per idle sandbox of a
server's whole process tree at 100 and 1,000 (``_idle.py``), on servers of its own. The review
benchmark (``_review.py``, issue 14's targets) times ``fork()``, ``checkpoint()``,
``restore()``, ``changes()`` and ``diff()`` of a manual sandbox, on a server of its own. The
network benchmark (``_network.py``, issue 13's targets) times a 100 MiB download and a small
request through a sandbox's proxy against curl on the host, on a server of its own.
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
from pathlib import Path

import anyio

from agentfense.testing import start_server_process

from . import _fs
from ._auth import auth_suite
from ._baselines import open_echo, raw_bwrap, raw_lifecycle
from ._common import (
    INFORMATIVE,
    Samples,
    Sizes,
    attempt,
    cpu_reference,
    error_rows,
    kib,
    mib,
    p50,
    progress,
    row,
)
from ._concurrency_suites import fanout_suite, sleep_suite
from ._docker import docker_suite, engine_host, skipped_rows
from ._network import network_suite
from ._ours import get_sandbox, lifecycle, open_sandbox, run_true
from ._review import review_suite
from ._sessions import session_vs_run
from ._start import start_suite
from ._stats import MIB, Row, Summary, Target, render
from ._timing import interleaved
from ._tls import tls_servers, tls_vs_plain
from ._trust import trust_suite

EXEC_TARGET = Target(max_ratio=1.5)
TLS_TARGET = Target(max_ratio=1.1)  # issue 12: auth and TLS on against off, at most 1.1x
LIFECYCLE_TARGET = Target(max_p50=0.200)
GREP_TARGET = Target(max_ratio=1.5)
READ_TARGET = Target(max_ratio=2.0)  # at least half the host's throughput
MEMORY_TARGET = Target(max_p50=5 * 2**20)  # bytes of server + fs memory per running sandbox
IDLE = 0.2  # seconds of idleness before each "after idle" iteration
FS_BACKEND = "asyncio"  # the fs benchmarks time commands inside the sandbox: one backend


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
            exec_result = await attempt(
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
            idle_result = await attempt(
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
                unary_result = await attempt(
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
        progress("".join(traceback.format_exception(exc)).rstrip())
        exec_result = idle_result = unary_result = exc
    lifecycle_result = await attempt(
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
        row('run("true")', backend, exec_result, "raw bwrap true", EXEC_TARGET),
        row(
            f'run("true") after {IDLE:g}s idle',
            backend,
            idle_result,
            "raw bwrap true, idle",
            INFORMATIVE,
        ),
        row("get_sandbox RPC", backend, unary_result, f"{backend} uds echo", INFORMATIVE),
        row(
            "from_local(100 files)+run+destroy",
            backend,
            lifecycle_result,
            "raw cp+bwrap+rm",
            LIFECYCLE_TARGET,
        ),
    ]


def _create_rows(result: _fs.CreateSamples | Exception) -> list[Row]:
    n = _fs.CREATE_FILES
    names = [
        f"create {n} files (write sandbox, in-sandbox time)",
        f"exec round trip - in-sandbox time, {n} new files (~commit)",
        f'run("true") right after creating {n} files',
    ]
    if isinstance(result, Exception):
        return error_rows(names, FS_BACKEND, result)
    commit = p50(result.overhead) - p50(result.true_idle)
    inside, host = p50(result.inside) / n, p50(result.host) / n
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
    ours, base = (_fs.BIG_SIZE / 2**20 / p50(samples) for samples in result)
    return (
        f"throughput at p50: sandbox {ours:.0f} MiB/s, host {base:.0f} MiB/s "
        f"({ours / base:.2f} of native; target >= 0.5)"
    )


async def fs_suite(
    endpoint: str, state_dir: Path, work: Path, sizes: Sizes, reference: list[float]
) -> list[Row]:
    """``grep -r`` and a sequential read, on the suite's server (one backend): under
    ``read-only`` (the codebase bound read-only, the kernel's fast path), ``agent-safe``
    (which hides secrets) and a policy with view and write rules (both through the permission
    filesystem); the first grep of a new view; the commit of many files."""
    files = _fs.GREP_DIRS * _fs.GREP_FILES_PER_DIR
    rows: list[Row] = []
    tree = work / "grep-tree"
    for policy, how in (
        ("read-only", "read-only bind"),
        ("agent-safe", "permission fs"),
        ("view+write", "permission fs"),
    ):
        grep_result = await attempt(
            f"grep -r over {files} files: {policy} sandbox vs host",
            _fs.grep(endpoint, state_dir, tree, sizes.grep, sizes.fs_warmup, policy),
            reference,
        )
        rows.append(
            row(
                f"grep -r over {files} files, {policy} ({how})",
                FS_BACKEND,
                grep_result,
                "host grep -r",
                GREP_TARGET,
            )
        )
        if policy == "view+write":
            continue
        read_result = await attempt(
            f"sequential read of 256 MiB: {policy} sandbox vs host",
            _fs.sequential_read(
                endpoint, state_dir, work / f"big-{policy}", sizes.read, sizes.fs_warmup, policy
            ),
            reference,
        )
        read_row = row(
            f"dd bs=1M of a 256 MiB file, {policy} ({how})",
            FS_BACKEND,
            read_result,
            "host dd",
            READ_TARGET,
        )
        rows.append(dataclasses.replace(read_row, note=_read_note(read_result)))
    first = await attempt(
        f"first grep -r over {files} files of a new agent-safe view vs host",
        _fs.first_grep(endpoint, state_dir, tree, sizes.first_grep),
        reference,
    )
    rows.append(
        row(
            f"first grep -r over {files} files, new agent-safe view",
            FS_BACKEND,
            first,
            "host grep -r (warm)",
            INFORMATIVE,
        )
    )
    return rows


async def create_suite(
    endpoint: str, state_dir: Path, work: Path, sizes: Sizes, reference: list[float]
) -> list[Row]:
    """Creating files in a sandbox, and the commit: first of all (see ``_fs.create_files``)."""
    result = await attempt(
        f"creating {_fs.CREATE_FILES} files: write sandbox vs host, and the commit",
        _fs.create_files(endpoint, state_dir, work / "project-small", sizes.create),
        reference,
    )
    commit = await attempt(
        f"committing {_fs.COMMIT_FILES} new files",
        _fs.commit_many(endpoint, work / "project-small", sizes.commit),
        reference,
    )
    return _create_rows(result) + _commit_row(commit)


def _commit_row(result: _fs.CommitSamples | Exception) -> list[Row]:
    n = _fs.COMMIT_FILES
    name = f"exec round trip - in-sandbox time, {n} new files (~commit)"
    if isinstance(result, Exception):
        return error_rows([name], FS_BACKEND, result)
    commit = p50(result.overhead) - p50(result.true_idle)
    return [
        Row(
            name,
            FS_BACKEND,
            Summary.of(result.overhead),
            Summary.of(result.true_idle),
            'run("true"), nothing pending',
            INFORMATIVE,
            note=f"commit of {n} new files in 100 new directories ~ {commit * 1000:.0f} ms "
            f"({commit / n * 1e6:.0f} us per file); making them took "
            f"{p50(result.inside):.2f} s inside the sandbox",
        )
    ]


def _memory_rows(result: _fs.MemoryResult | Exception, count: int) -> list[Row]:
    names = [
        f"server+fs RSS per running agent-safe sandbox ({count})",
        f"sandbox processes' RSS per sandbox ({count})",
    ]
    if isinstance(result, Exception):
        return error_rows(names, "-", result)
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
            note=f"server {kib(server)} + fs process {kib(fs)} per sandbox; server+fs "
            f"{mib(before.server + before.fs)} before, {mib(after.server + after.fs)} with "
            f"{count} running, {mib(destroyed.server + destroyed.fs)} after destroying them",
        ),
        Row(
            names[1],
            "-",
            Summary.single((after.sandboxes - before.sandboxes) / count),
            target=INFORMATIVE,
            unit=MIB,
            note=f"{processes:g} processes per sandbox (bwrap and the agent), outside the "
            f"server's memory; proportional (PSS) {mib(pss)} per sandbox",
        ),
    ]


async def memory_suite(work: Path, count: int, reference: list[float]) -> list[Row]:
    """Server memory per running sandbox, on a dedicated server."""
    (work / "server-memory").mkdir()
    try:
        server = start_server_process(work / "server-memory")
    except RuntimeError as exc:
        progress(str(exc))
        return _memory_rows(exc, count)
    try:
        result = await attempt(
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
    result = await attempt(
        f"{backend}: session.exec('true') vs run('true')",
        session_vs_run(endpoint, work / "project-small", sizes.session, sizes.warmup),
        reference,
    )
    if result is None:
        progress(f"{backend}: the server answers sessions with UNIMPLEMENTED")
        return [Row(name, backend, None, unavailable="server lacks sessions")]
    return [row(name, backend, result, 'run("true")', INFORMATIVE)]


GROUPS = (
    "create",
    "exec",
    "auth",
    "fs",
    "session",
    "sleep",
    "fanout",
    "docker",
    "memory",
    "tls",
    "trust",
    "start",
    "review",
    "network",
)
OWN_SERVERS = {
    "memory",
    "tls",
    "trust",
    "start",
    "review",
    "network",
}  # groups that start servers of their own


def tls_suite(work: Path, sizes: Sizes, reference: list[float]) -> list[Row]:
    """``run("true")`` over TLS against plain TCP, on both backends, on servers of their own."""
    name = 'run("true") over TLS'
    progress("starting a plain and a TLS server on 127.0.0.1")
    try:
        with tls_servers(work) as servers:
            return [
                row(
                    name,
                    backend,
                    anyio.run(
                        attempt,
                        f"{backend}: run('true') over TLS vs plain TCP",
                        tls_vs_plain(servers, work / "project-small", sizes),
                        reference,
                        backend=backend,
                    ),
                    'run("true") over plain TCP',
                    TLS_TARGET,
                )
                for backend in ("asyncio", "trio")
            ]
    except RuntimeError as exc:
        progress(str(exc))
        return error_rows([name], "-", exc)


def shared_server_suites(
    groups: set[str], work: Path, sizes: Sizes, reference: list[float]
) -> tuple[list[Row], bool]:
    """The selected groups that share one server (every group but ``memory``), and whether
    that server failed (exited with an error)."""
    rows: list[Row] = []
    create_rows: list[Row] = []
    (work / "server").mkdir()
    progress("starting the server")
    # The docker group's raw side and the server's containers: one engine.
    settings = {"docker_host": engine_host()} if "docker" in groups else None
    server = start_server_process(work / "server", settings=settings)
    endpoint = server.endpoint
    fs_args = (endpoint, server.state_dir, work, sizes, reference)
    try:
        if "create" in groups:  # first of all (see _fs.create_files); listed after fs
            create_rows = anyio.run(create_suite, *fs_args, backend=FS_BACKEND)
        for backend in ("asyncio", "trio") if "exec" in groups else ():
            rows += anyio.run(suite, backend, endpoint, work, sizes, reference, backend=backend)
        if "auth" in groups:
            rows += anyio.run(auth_suite, endpoint, work, sizes, reference, backend="asyncio")
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
        if "docker" in groups:
            rows += docker_suite(endpoint, work, sizes, reference)
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
    docker_skipped = skipped_rows() if "docker" in groups else []
    if docker_skipped:  # no Docker engine here: its rows say so, with no server for them
        groups.discard("docker")
    started = time.perf_counter()
    rows: list[Row] = []
    server_failed = False
    reference = cpu_reference()
    with tempfile.TemporaryDirectory(prefix="agentfense-bench-") as tmp:
        work = Path(tmp)
        make_project(work / "project-small", 3)
        if groups & {"exec", "start"}:
            make_project(work / "project-100", 100)
        if "fs" in groups:
            _fs.make_grep_tree(work / "grep-tree")
        if groups - OWN_SERVERS:
            rows, server_failed = shared_server_suites(groups, work, sizes, reference)
        if "tls" in groups:
            rows += tls_suite(work, sizes, reference)
        if "trust" in groups:
            rows += trust_suite(work, sizes, reference)
        if "start" in groups:
            rows += start_suite(work, sizes, reference)
        if "review" in groups:
            rows += review_suite(work, sizes, reference)
        if "network" in groups:
            rows += network_suite(work, sizes, reference)
        rows += docker_skipped
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
