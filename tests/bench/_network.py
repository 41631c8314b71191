"""Issue 13's rows: what a sandbox's network proxy costs, on a server of the group's own
whose host map names a mirror served on loopback by this process (threads); one backend
(asyncio). Each sample is curl's own ``time_total``: inside a sandbox allowed the mirror's
name, through the proxy; on the host, straight to the mirror.

- A 100 MiB download: throughput through the proxy against the host's (target: at least
  half, so a ratio of at most 2).
- One small request (22 bytes): the latency the proxy adds.
- ``from_codebase`` of a sandbox with a network against one without: what putting the
  proxy in costs a start.
- ``run("true")`` in a sandbox with a network against one without: what a command's watch
  of its raw sockets costs (its seccomp filter, its listener handed to the server).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio

from agentfense import AsyncSandbox, AsyncSandboxClient
from agentfense.testing import start_server_process

from ._common import INFORMATIVE, Sizes, attempt, error_rows, progress, row
from ._stats import Row, Target
from ._timing import interleaved

BACKEND = "asyncio"
MIRROR = "mirror.test"
BIG = 100 * 2**20
DOWNLOAD = "100 MiB download, through the proxy"
SMALL = "one small request, through the proxy"
START = "create + start, with a network"
RUN = "run('true'), with a network"
NAMES = [DOWNLOAD, SMALL, START, RUN]
DOWNLOAD_TARGET = Target(max_ratio=2.0)  # at least half the host's throughput
_CURL = "curl -sS -o /dev/null -w '%{time_total}' "


def _host_curl(url: str) -> float:
    done = subprocess.run(
        ["sh", "-c", _CURL + url], capture_output=True, text=True, check=True, timeout=120
    )
    return float(done.stdout)


async def _measure(
    endpoint: str, project: Path, port: int, sizes: Sizes, reference: list[float]
) -> list[Row]:
    rows: list[Row] = []
    async with await AsyncSandbox.from_local(
        project,
        endpoint=endpoint,
        network=[f"{MIRROR}:{port}"],
    ) as sandbox:
        for name, path, count, target, base_name in (
            (DOWNLOAD, "big.bin", max(5, sizes.idle // 2), DOWNLOAD_TARGET, "curl on the host"),
            (SMALL, "hello.txt", sizes.idle * 5, INFORMATIVE, "curl on the host"),
        ):

            async def ours(path: str = path) -> float:
                url = f"http://{MIRROR}:{port}/{path}"
                result = await sandbox.run(_CURL + url, raise_on_error=True, timeout=120)
                return float(result.stdout)

            async def host(path: str = path) -> float:
                url = f"http://127.0.0.1:{port}/{path}"
                return await anyio.to_thread.run_sync(_host_curl, url)

            result = await attempt(
                name,
                interleaved(
                    ours, host, n_ours=count, n_base=count, warmup=1, blocks=5, self_timed=True
                ),
                reference,
            )
            rows.append(row(name, BACKEND, result, base_name, target))
    async with AsyncSandboxClient(endpoint) as client:
        codebase_id = (await client.create_codebase("network-start", "bench")).id

    async def started(network: list[str] | None) -> float:
        began = time.perf_counter()
        other = await AsyncSandbox.from_codebase(codebase_id, endpoint=endpoint, network=network)
        elapsed = time.perf_counter() - began
        await other.destroy()
        return elapsed

    async def with_network() -> float:
        return await started([f"{MIRROR}:{port}"])

    async def without() -> float:
        return await started(None)

    count = sizes.idle * 2
    result = await attempt(
        START,
        interleaved(with_network, without, n_ours=count, n_base=count, warmup=2, self_timed=True),
        reference,
    )
    rows.append(row(START, BACKEND, result, "without a network", INFORMATIVE))
    networked = await AsyncSandbox.from_codebase(
        codebase_id, endpoint=endpoint, network=[f"{MIRROR}:{port}"]
    )
    isolated = await AsyncSandbox.from_codebase(codebase_id, endpoint=endpoint)
    try:

        async def run_in(sandbox: AsyncSandbox) -> float:
            began = time.perf_counter()
            await sandbox.run("true", raise_on_error=True)
            return time.perf_counter() - began

        count = sizes.idle * 5
        result = await attempt(
            RUN,
            interleaved(
                functools.partial(run_in, networked),
                functools.partial(run_in, isolated),
                n_ours=count,
                n_base=count,
                warmup=2,
                self_timed=True,
            ),
            reference,
        )
        rows.append(row(RUN, BACKEND, result, "without a network", INFORMATIVE))
    finally:
        await networked.destroy()
        await isolated.destroy()
    return rows


@contextlib.contextmanager
def serving_mirror(root: Path) -> Iterator[int]:
    """``root``'s files over HTTP/1.1 on 127.0.0.1 (threads of this process); the port."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def network_suite(work: Path, sizes: Sizes, reference: list[float]) -> list[Row]:
    """Issue 13's rows, on a server of their own."""
    root = work / "network"
    (root / "mirror").mkdir(parents=True)
    (root / "project").mkdir()
    (root / "project" / "README.md").write_text("network benchmark\n")
    progress("writing a 100 MiB file for the network benchmarks")
    block = bytes(range(256)) * 4096
    with (root / "mirror" / "big.bin").open("wb") as out:
        for _ in range(BIG // len(block)):
            out.write(block)
    (root / "mirror" / "hello.txt").write_text("hello from the mirror\n")
    try:
        with serving_mirror(root / "mirror") as port:
            server = start_server_process(
                root / "server", settings={"network_hosts": f"{MIRROR}=127.0.0.1"}
            )
            try:
                return anyio.run(
                    _measure,
                    server.endpoint,
                    root / "project",
                    port,
                    sizes,
                    reference,
                    backend=BACKEND,
                )
            finally:
                server.stop()
    except Exception as exc:
        progress(f"network: {type(exc).__name__}: {exc}")
        return error_rows(NAMES, BACKEND, exc)
