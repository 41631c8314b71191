"""Sandboxes with a network allow-list (issue 13), on a real server and real bwrap
sandboxes, against a mirror on loopback that the server's host map names: what is allowed
goes through (HTTP, HTTPS by CONNECT with a test CA, pip from a package index), and what is
not (another host, an address, loopback, the clouds' metadata address, the server's own
ports, a lookup, a raw socket, UDP) fails, and the proxy's part of it is logged, in the
sandbox's network log, its commands' results and the audit log."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from agentfense import (
    AsyncSandboxClient,
    InvalidConfigurationError,
    NetworkVerdict,
    PermissionRule,
    SandboxError,
)
from agentfense.testing import ServerProcess, start_server_process
from agentfense.types import SandboxInfo

from ._network_world import MIRROR, UNMAPPED, VALUE, World, install_and_import, running_world

pytestmark = pytest.mark.anyio
EVERYTHING = PermissionRule("**", "write")
MiB = 1024 * 1024


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with running_world(tmp_path_factory.mktemp("mirror"), big_bytes=3 * MiB) as running:
        yield running


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return _free_port()


@pytest.fixture(scope="module")
def net_server(
    tmp_path_factory: pytest.TempPathFactory, metrics_port: int
) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("net-server")
    running = start_server_process(
        directory,
        settings={
            "network_hosts": f"{MIRROR}=127.0.0.1",
            "metrics_listen": f"127.0.0.1:{metrics_port}",
            "audit_log": str(directory / "audit.log"),
        },
    )
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture
async def client(net_server: ServerProcess) -> AsyncIterator[AsyncSandboxClient]:
    async with AsyncSandboxClient(net_server.endpoint) as opened:
        yield opened


async def _sandbox(
    client: AsyncSandboxClient, world: World, network: list[str] | None
) -> SandboxInfo:
    codebase = await client.create_codebase("network")
    await client.upload_file(codebase.id, "ca.pem", world.ca_pem)
    return await client.create_sandbox(
        codebase.id, permissions=[EVERYTHING], start=True, network=network
    )


async def test_an_allowed_host_is_reached_over_http_and_logged(
    client: AsyncSandboxClient, world: World
) -> None:
    info = await _sandbox(client, world, [f"{MIRROR}:{world.http_port}"])
    assert info.network == (f"{MIRROR}:{world.http_port}",)
    result = await client.exec(info.id, f"curl -sS http://{MIRROR}:{world.http_port}/hello.txt")
    assert (result.stdout, result.exit_code, result.network_denied) == (
        "hello from the mirror\n",
        0,
        (),
    )
    (entry,) = await client.get_network_log(info.id)
    assert (entry.kind, entry.host, entry.port, entry.verdict) == (
        "http",
        MIRROR,
        world.http_port,
        NetworkVerdict.ALLOWED,
    )
    assert entry.address == "127.0.0.1"
    assert entry.bytes_up > 0
    assert entry.bytes_down > len("hello from the mirror\n")


async def test_an_allowed_host_is_reached_over_https_by_connect(
    client: AsyncSandboxClient, world: World
) -> None:
    info = await _sandbox(client, world, [f"{MIRROR}:*"])
    url = f"https://{MIRROR}:{world.https_port}/hello.txt"
    result = await client.exec(info.id, f"curl -sS --cacert /workspace/ca.pem {url}")
    assert (result.stdout, result.stderr) == ("hello from the mirror\n", "")
    (entry,) = await client.get_network_log(info.id)
    assert (entry.kind, entry.verdict, entry.port) == (
        "connect",
        NetworkVerdict.ALLOWED,
        world.https_port,
    )
    assert entry.bytes_down > 1000  # (the server's certificate chain came through)


async def test_a_tls_server_name_other_than_the_connect_host_is_refused(
    client: AsyncSandboxClient, world: World
) -> None:
    """An agent allowed one name cannot tunnel to it and then ask, in TLS, for another."""
    info = await _sandbox(client, world, [f"{MIRROR}:*"])
    script = f"""
import socket, ssl
s = socket.create_connection(("127.0.0.1", 3128))
s.sendall(b"CONNECT {MIRROR}:{world.https_port} HTTP/1.1\\r\\n\\r\\n")
print(s.recv(100).split(b"\\r\\n")[0].decode())
context = ssl.create_default_context(cafile="/workspace/ca.pem")
context.check_hostname = False
try:
    context.wrap_socket(s, server_hostname="evil.example").recv(10)
    print("handshake done")
except (OSError, ssl.SSLError):
    print("tunnel closed")
"""
    result = await client.exec(info.id, "python3 -", stdin=script)
    assert result.stdout == "HTTP/1.1 200 Connection established\ntunnel closed\n", result.stderr
    (entry,) = await client.get_network_log(info.id)
    assert entry.verdict is NetworkVerdict.DENIED
    assert "evil.example" in entry.reason
    assert MIRROR in entry.reason


async def test_a_host_not_allowed_is_refused_said_and_audited(
    client: AsyncSandboxClient, world: World, net_server: ServerProcess
) -> None:
    info = await _sandbox(client, world, [f"{MIRROR}:{world.http_port}"])
    result = await client.exec(info.id, "curl -sS http://pypi.org/simple/")
    assert "pypi.org:80 is not in the allow-list" in result.stdout
    assert result.network_denied == ("pypi.org:80",)
    https = await client.exec(info.id, "curl -sS https://pypi.org/simple/; echo rc=$?")
    assert https.network_denied == ("pypi.org:443",)
    assert "rc=56" in https.stdout
    denied = [e for e in await client.get_network_log(info.id) if e.verdict.value == "denied"]
    assert [(e.kind, e.host, e.port) for e in denied] == [
        ("http", "pypi.org", 80),
        ("connect", "pypi.org", 443),
    ]
    lines = [json.loads(line) for line in _audit_lines(net_server)]
    ours = [line for line in lines if line.get("action") == "NetworkDenied"]
    assert {"pypi.org:80", "pypi.org:443"} <= {
        line["target"] for line in ours if line["ids"]["sandbox_id"] == info.id
    }


def _audit_lines(server: ServerProcess) -> list[str]:
    path = server.log_path.parent / "audit.log"
    return path.read_text().splitlines()


@pytest.mark.parametrize(
    ("allowed", "url", "why"),
    [
        ("93.184.215.14", "http://10.0.0.1/", "10.0.0.1:80 is not in the allow-list"),
        ("127.0.0.1:*", "http://127.0.0.1:{echo}/", "loopback"),
        ("169.254.169.254", "http://169.254.169.254/latest/meta-data/", "metadata"),
        ("10.0.0.1", "http://10.0.0.1/", "private"),
        ("[::1]:*", "http://[::1]:{echo}/", "loopback"),
        (f"{UNMAPPED}", f"http://{UNMAPPED}/", f"cannot resolve {UNMAPPED}"),
    ],
)
async def test_addresses_the_operator_did_not_map_are_refused(
    client: AsyncSandboxClient, world: World, allowed: str, url: str, why: str
) -> None:
    """Through the proxy, even when the sandbox's own allow-list names them (curl
    ``--noproxy ''``: NO_PROXY would have it try them directly, in its empty namespace)."""
    info = await _sandbox(client, world, [allowed])
    target = url.format(echo=world.echo_port)
    result = await client.exec(info.id, f"curl -sS --noproxy '' --max-time 20 '{target}'")
    assert why in result.stdout
    (entry,) = await client.get_network_log(info.id)
    assert entry.verdict in (NetworkVerdict.DENIED, NetworkVerdict.FAILED)
    assert why in entry.reason
    assert "secret" not in result.stdout


async def test_lookups_direct_connections_raw_sockets_and_udp_fail_and_are_logged(
    client: AsyncSandboxClient, world: World
) -> None:
    info = await _sandbox(client, world, [f"{MIRROR}:{world.http_port}"])
    lookup = await client.exec(info.id, "getent hosts pypi.org; echo rc=$?")
    assert lookup.stdout == "rc=2\n"
    assert lookup.network_denied == ("pypi.org",)
    script = """
import socket
for kind, make in [
    ("raw", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)),
    ("packet", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW)),
]:
    try:
        make()
        print(kind, "made")
    except OSError as exc:
        print(kind, "refused", exc.strerror)
for kind, address in [(socket.SOCK_DGRAM, ("8.8.8.8", 53)), (socket.SOCK_STREAM, ("1.2.3.4", 443))]:
    s = socket.socket(socket.AF_INET, kind)
    s.settimeout(10)
    try:
        s.connect(address)
        s.send(b"x")
        s.recv(10)
        print("reached")
    except OSError as exc:
        print(exc.strerror)
"""
    result = await client.exec(info.id, "python3 -", stdin=script)
    assert result.stdout.splitlines() == [
        "raw refused Operation not permitted",  # (as the kernel says without CAP_NET_RAW)
        "packet refused Operation not permitted",
        "No route to host",
        "No route to host",
    ]
    assert result.network_denied == ("raw-socket", "packet-socket", "8.8.8.8:53", "1.2.3.4:443")
    log = await client.get_network_log(info.id)
    kinds = [(e.kind, e.host, e.verdict.value) for e in log]
    assert kinds == [
        ("dns", "pypi.org", "denied"),
        ("raw-socket", "", "denied"),
        ("packet-socket", "", "denied"),
        ("direct-udp", "8.8.8.8", "denied"),
        ("direct-tcp", "1.2.3.4", "denied"),
    ]
    assert "raw IPv4 socket of protocol 1" in log[1].reason


async def test_nothing_else_on_the_host_is_reachable_from_inside(
    client: AsyncSandboxClient, world: World, metrics_port: int
) -> None:
    """A scan from inside a sandbox that may go anywhere (``*:*``): the server's ports and a
    loopback service, directly (its namespace has only its own loopback) and through the
    proxy (by address, by the mapped name, by the host's own addresses)."""
    info = await _sandbox(client, world, ["*:*"])
    ports = [metrics_port, world.echo_port, world.http_port, 22, 80, 443, 9000]
    hosts = ["127.0.0.1", MIRROR, *_host_addresses()]
    script = f"""
import socket
ports, hosts = {ports!r}, {hosts!r}
for port in ports:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        print("direct", port, "OPEN")
    except OSError:
        pass
for host in hosts:
    for port in ports:
        s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
        s.sendall(f"CONNECT {{host}}:{{port}} HTTP/1.1\\r\\n\\r\\n".encode())
        answer = s.recv(200).split(b"\\r\\n")[0].decode()
        if " 200 " in answer:
            print("proxied", host, port, "OPEN")
        s.close()
print("scanned")
"""
    result = await client.exec(info.id, "python3 -", stdin=script, timeout=120)
    # Only the operator's mapped name reaches loopback, and not the server's own ports there.
    expected = [
        f"proxied {MIRROR} {port} OPEN"
        for port in ports
        if port != metrics_port and _listening_on_loopback(port)
    ]
    assert f"proxied {MIRROR} {world.echo_port} OPEN" in expected
    assert result.stdout.splitlines() == [*expected, "scanned"], result.stdout
    reasons = {e.reason for e in await client.get_network_log(info.id)}
    own = f"127.0.0.1 port {metrics_port} is the server's own"
    assert any(own in reason for reason in reasons), reasons


def _listening_on_loopback(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


def _host_addresses() -> list[str]:
    found = set()
    for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
        found.add(str(info[4][0]))
    return sorted(found)


async def test_pip_installs_from_a_local_index_through_an_allowed_name(
    client: AsyncSandboxClient, world: World
) -> None:
    info = await _sandbox(client, world, [f"{MIRROR}:{world.https_port}"])
    result = await client.exec(info.id, install_and_import(world.https_port), timeout=120)
    assert (result.exit_code, result.stdout) == (0, VALUE + "\n"), result.stderr
    assert result.network_denied == ()
    assert {e.verdict for e in await client.get_network_log(info.id)} == {NetworkVerdict.ALLOWED}


async def test_a_sandbox_without_network_has_no_proxy_and_no_log(
    client: AsyncSandboxClient, world: World
) -> None:
    info = await _sandbox(client, world, None)
    assert info.network == ()
    result = await client.exec(
        info.id, f"env | grep -ci proxy; curl -sS http://{MIRROR}:{world.http_port}/; echo rc=$?"
    )
    assert result.stdout.splitlines()[0] == "0"
    assert "rc=0" not in result.stdout
    assert await client.get_network_log(info.id) == []


async def test_the_proxy_comes_back_with_a_restart_and_the_log_stays(
    client: AsyncSandboxClient, world: World
) -> None:
    info = await _sandbox(client, world, [f"{MIRROR}:{world.http_port}"])
    url = f"http://{MIRROR}:{world.http_port}/hello.txt"
    await client.exec(info.id, f"curl -sS {url}")
    await client.stop_sandbox(info.id)
    await client.start_sandbox(info.id)
    again = await client.exec(info.id, f"curl -sS {url}")
    assert again.stdout == "hello from the mirror\n"
    assert [e.seq for e in await client.get_network_log(info.id)] == [1, 2]
    assert [e.seq for e in await client.get_network_log(info.id, after=1)] == [2]


async def test_a_fork_has_its_parents_network_and_a_log_of_its_own(
    client: AsyncSandboxClient, world: World
) -> None:
    info = await _sandbox(client, world, [f"{MIRROR}:{world.http_port}"])
    await client.exec(info.id, f"curl -sS http://{MIRROR}:{world.http_port}/hello.txt")
    child = await client.fork_sandbox(info.id)
    assert child.network == info.network
    assert await client.get_network_log(child.id) == []
    result = await client.exec(child.id, f"curl -sS http://{MIRROR}:{world.http_port}/hello.txt")
    assert result.stdout == "hello from the mirror\n"


@pytest.mark.parametrize(
    ("network", "why"),
    [
        (["pypi org"], "not a host pattern"),
        (["none", "pypi.org"], "none"),
        ([f"h{i}.test" for i in range(300)], "at most 256"),
    ],
)
async def test_a_policy_that_is_no_policy_is_refused(
    client: AsyncSandboxClient, network: list[str], why: str
) -> None:
    codebase = await client.create_codebase("bad-network")
    with pytest.raises(InvalidConfigurationError, match=why):
        await client.create_sandbox(codebase.id, network=network)
    assert await client.list_sandboxes(codebase.id) == []


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = start_server_process(
        tmp_path_factory.mktemp("limited-server"),
        settings={
            "network_hosts": f"{MIRROR}=127.0.0.1",
            "network_max_connections": "2",
            "network_bytes_per_second": str(MiB),
            "network_connections_per_second": "20",
        },
    )
    yield running
    assert running.stop() == 0, running.log()


async def test_a_sandbox_s_connections_and_bandwidth_are_limited(
    limited_server: ServerProcess, world: World
) -> None:
    async with AsyncSandboxClient(limited_server.endpoint) as client:
        info = await _sandbox(client, world, [f"{MIRROR}:*"])
        script = f"""
import socket
held = []
for _ in range(3):
    s = socket.create_connection(("127.0.0.1", 3128))
    s.sendall(b"CONNECT {MIRROR}:{world.echo_port} HTTP/1.1\\r\\n\\r\\n")
    print(s.recv(100).split(b"\\r\\n")[0].decode())
    held.append(s)
"""
        held = await client.exec(info.id, "python3 -", stdin=script)
        assert held.stdout.splitlines() == [
            "HTTP/1.1 200 Connection established",
            "HTTP/1.1 200 Connection established",
            "HTTP/1.1 503 Service Unavailable",
        ], held.stderr
        reasons = [entry.reason for entry in await client.get_network_log(info.id)]
        assert "more than 2 connections at once" in reasons, reasons
        url = f"http://{MIRROR}:{world.http_port}/big.bin"
        timed = await client.exec(
            info.id, f"curl -sS -o /dev/null -w '%{{size_download}} %{{time_total}}' {url}"
        )
        size, seconds = timed.stdout.split()
        # 3 MiB at 1 MiB/s, the first MiB at once (the burst): about 2 s, not a fraction.
        assert int(size) == 3 * MiB
        assert float(seconds) >= 1.5, timed.stdout
        # 60 connections, one after another: 20 at once (the burst), then 20 a second.
        script = """
import socket, time
began, answered = time.monotonic(), 0
for _ in range(60):
    s = socket.create_connection(("127.0.0.1", 3128))
    s.sendall(b"GET / HTTP/1.1\\r\\n\\r\\n")  # (no host: refused at once)
    answered += s.recv(100).startswith(b"HTTP/1.1 400")
    s.close()
print(answered, round(time.monotonic() - began, 1))
"""
        paced = await client.exec(info.id, "python3 -", stdin=script)
        answered, seconds = paced.stdout.split()
        assert answered == "60", paced.stderr
        assert float(seconds) >= 1.5, paced.stdout


def _socket_fds(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            count += target.startswith("socket:") or target == "/dev/net/tun"
    return count


async def test_a_stop_or_a_destroy_closes_the_proxy_and_its_connections(
    client: AsyncSandboxClient, world: World, net_server: ServerProcess
) -> None:
    pid = net_server.process.pid
    info = await _sandbox(client, world, [f"{MIRROR}:*"])
    await client.stop_sandbox(info.id)
    before = _socket_fds(pid)
    hold = (
        "import socket,time; s=socket.create_connection(('127.0.0.1', 3128)); "
        f"s.sendall(b'CONNECT {MIRROR}:{world.http_port} HTTP/1.1\\r\\n\\r\\n'); "
        "print(s.recv(100)[:12], flush=True); time.sleep(60)"
    )

    said: list[object] = []

    async def holding() -> None:
        try:
            said.append(await client.exec(info.id, "python3 -", stdin=hold, timeout=120))
        except SandboxError as exc:  # (its sandbox stops under it)
            said.append(exc)

    for cycle in (1, 2, 3):
        await client.start_sandbox(info.id)
        async with anyio.create_task_group() as tg:
            tg.start_soon(holding)  # a tunnel held open as the sandbox stops
            for _ in range(200):  # (until its tunnel is up: logged once its wait is over)
                if len(await client.get_network_log(info.id)) == cycle:
                    break
                await anyio.sleep(0.05)
            assert len(await client.get_network_log(info.id)) == cycle, said
            await client.stop_sandbox(info.id)
    await client.destroy_sandbox(info.id)
    for _ in range(100):
        if _socket_fds(pid) <= before:
            break
        await anyio.sleep(0.05)
    assert _socket_fds(pid) <= before
