"""``run("true")`` over TLS against plain TCP: two servers of this build on loopback, one with
a certificate of a test CA (trustme), a sandbox on each, their round trips interleaved."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import trustme

from agentfense import AsyncSandbox, TLSConfig
from agentfense.testing import ServerProcess, start_server_process

from ._common import Sizes
from ._ours import PRESET, run_true
from ._timing import interleaved

Samples = tuple[list[float], list[float]]


@dataclass(frozen=True)
class Servers:
    plain: str  # the plain server's endpoint
    secure: str  # the TLS server's, by the name its certificate lists
    tls: TLSConfig


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def tls_servers(work: Path) -> Iterator[Servers]:
    """A plain and a TLS server on 127.0.0.1, both stopped on the way out."""
    ca = trustme.CA()
    pem, ca_pem = work / "tls-server.pem", work / "tls-ca.pem"
    pem.write_bytes(ca.issue_cert("localhost").private_key_and_cert_chain_pem.bytes())
    ca_pem.write_bytes(ca.cert_pem.bytes())
    started: list[ServerProcess] = []
    try:
        plain_port, tls_port = _free_port(), _free_port()
        started.append(start_server_process(work / "server-tcp", listen=f"127.0.0.1:{plain_port}"))
        started.append(
            start_server_process(
                work / "server-tls",
                listen=f"127.0.0.1:{tls_port}",
                settings={"tls_cert": str(pem)},
            )
        )
        yield Servers(f"127.0.0.1:{plain_port}", f"localhost:{tls_port}", TLSConfig(ca=ca_pem))
    finally:
        for server in started:
            code = server.stop()
            if code != 0:
                raise RuntimeError(f"a server exited with {code}: {server.log()[-2000:]}")


async def tls_vs_plain(servers: Servers, project: Path, sizes: Sizes) -> Samples:
    """Samples of ``run("true")`` over TLS and over plain TCP, interleaved in blocks."""
    async with (
        await AsyncSandbox.from_local(
            project, preset=PRESET, endpoint=servers.secure, tls=servers.tls
        ) as secure,
        await AsyncSandbox.from_local(project, preset=PRESET, endpoint=servers.plain) as plain,
    ):
        return await interleaved(
            run_true(secure),
            run_true(plain),
            n_ours=sizes.exec,
            n_base=sizes.exec,
            warmup=sizes.warmup,
        )
