"""The network allow-list on the Docker runtime (issue 13): the same proxy, its sockets made
in the container's network namespace (``--network none``); a real dockerd, images built
from local files (scripts/docker-images.sh)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from agentfense import AsyncSandboxClient, NetworkVerdict, PermissionRule, RuntimeType
from agentfense.testing import ServerProcess, start_server_process
from agentfense.types import SandboxInfo

from ._network_world import MIRROR, VALUE, World, install_and_import, running_world

pytestmark = pytest.mark.anyio
PYTHON = "python:3.11-slim"
EVERYTHING = PermissionRule("**", "write")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with running_world(tmp_path_factory.mktemp("mirror")) as running:
        yield running


@pytest.fixture(scope="module")
def docker_net_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = start_server_process(
        tmp_path_factory.mktemp("docker-net-server"),
        settings={
            "network_hosts": f"{MIRROR}=127.0.0.1",
            "docker_host": os.environ.get("DOCKER_HOST", ""),
        },
    )
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture
async def client(docker_net_server: ServerProcess) -> AsyncIterator[AsyncSandboxClient]:
    async with AsyncSandboxClient(docker_net_server.endpoint) as opened:
        yield opened


async def _sandbox(client: AsyncSandboxClient, world: World, network: list[str]) -> SandboxInfo:
    codebase = await client.create_codebase("docker-network")
    await client.upload_file(codebase.id, "ca.pem", world.ca_pem)
    return await client.create_sandbox(
        codebase.id,
        permissions=[EVERYTHING],
        runtime=RuntimeType.DOCKER,
        image=PYTHON,
        start=True,
        network=network,
    )


FETCH = """
import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=30).read().decode(), end="")
except Exception as exc:
    print("failed:", exc)
"""


async def test_a_container_reaches_what_is_allowed_and_nothing_else(
    client: AsyncSandboxClient, world: World
) -> None:
    info = await _sandbox(client, world, [f"{MIRROR}:{world.http_port}"])
    try:
        url = f"http://{MIRROR}:{world.http_port}/hello.txt"
        allowed = await client.exec(info.id, f"python3 - {url}", stdin=FETCH)
        assert allowed.stdout == "hello from the mirror\n", allowed.stderr
        denied = await client.exec(info.id, "python3 - http://pypi.org/simple/", stdin=FETCH)
        assert denied.stdout.startswith("failed: HTTP Error 403")
        assert denied.network_denied == ("pypi.org:80",)
        lookup = await client.exec(
            info.id, "python3 -c 'import socket; socket.getaddrinfo(\"pypi.org\", 443)'"
        )
        assert lookup.exit_code != 0
        direct = await client.exec(
            info.id,
            "python3 -c 'import socket; socket.create_connection((\"1.2.3.4\", 443), timeout=10)'",
        )
        assert "No route to host" in direct.stderr
        assert direct.network_denied == ("1.2.3.4:443",)
        log = await client.get_network_log(info.id)
        assert [(e.kind, e.host, e.verdict) for e in log][:2] == [
            ("http", MIRROR, NetworkVerdict.ALLOWED),
            ("http", "pypi.org", NetworkVerdict.DENIED),
        ]
        assert ("dns", "pypi.org") in [(e.kind, e.host) for e in log]
        assert ("direct-tcp", "1.2.3.4") in [(e.kind, e.host) for e in log]
    finally:
        await client.destroy_sandbox(info.id)


async def test_pip_installs_in_a_container_through_an_allowed_name(
    client: AsyncSandboxClient, world: World
) -> None:
    info = await _sandbox(client, world, [f"{MIRROR}:{world.https_port}"])
    try:
        result = await client.exec(info.id, install_and_import(world.https_port), timeout=120)
        assert (result.exit_code, result.stdout) == (0, VALUE + "\n"), result.stderr
    finally:
        await client.destroy_sandbox(info.id)


async def test_a_container_is_refused_loopback_metadata_raw_sockets_and_udp(
    client: AsyncSandboxClient, world: World
) -> None:
    """The same refusals as on bwrap, through the same proxy: loopback and the metadata
    address even when allowed by name or address, a lookup, a raw socket, UDP sent past the
    proxy (logged), a direct connection (logged)."""
    info = await _sandbox(client, world, ["127.0.0.1:*", "169.254.169.254"])
    try:
        script = f"""
import os, socket, urllib.request
os.environ.pop("NO_PROXY"); os.environ.pop("no_proxy")  # (through the proxy, not around it)
for url in ["http://127.0.0.1:{world.echo_port}/", "http://169.254.169.254/latest/"]:
    handler = urllib.request.ProxyHandler({{"http": "http://127.0.0.1:3128"}})
    proxied = urllib.request.build_opener(handler)
    try:
        proxied.open(url, timeout=30).read()
        print("reached")
    except Exception as exc:
        print(str(exc)[:40])
for family, kind in [(socket.AF_INET6, socket.SOCK_RAW), (socket.AF_PACKET, socket.SOCK_RAW)]:
    try:
        socket.socket(family, kind, 58 if family == socket.AF_INET6 else 0)
        print("raw made")
    except OSError as exc:
        print("raw refused", exc.strerror)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.settimeout(10)
udp.connect(("8.8.8.8", 53))
udp.send(b"x")
try:
    udp.recv(10)
    print("answered")
except OSError as exc:
    print(exc.strerror)
"""
        result = await client.exec(info.id, "python3 -", stdin=script)
        assert result.stdout.splitlines() == [
            "HTTP Error 403: Forbidden",
            "HTTP Error 403: Forbidden",
            "raw refused Operation not permitted",
            "raw refused Operation not permitted",
            "No route to host",
        ], result.stderr
        reasons = [(e.kind, e.host, e.reason) for e in await client.get_network_log(info.id)]
        kinds = [kind for kind, _, _ in reasons]
        assert kinds == ["http", "http", "raw-socket", "packet-socket", "direct-udp"], reasons
        assert "loopback" in reasons[0][2]
        assert "metadata" in reasons[1][2]
        assert "raw IPv6 socket of protocol 58" in reasons[2][2]
        assert reasons[4][1] == "8.8.8.8"
    finally:
        await client.destroy_sandbox(info.id)
