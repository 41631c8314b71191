"""A hostile sandbox against its own proxy (issue 13, and a hostile tester's findings): the
proxy keeps no more of what it relays than a chunk each way, whatever the other end does;
no connection can end it; nothing after a request's body is sent where the request was
allowed; what HTTP parsers read differently is refused."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import anyio
import pytest

from agentfense import AsyncSandboxClient, NetworkVerdict, PermissionRule
from agentfense.testing import ServerProcess, start_server_process
from agentfense.types import SandboxInfo

from ._network_world import MIRROR, World, running_world

pytestmark = pytest.mark.anyio
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with running_world(tmp_path_factory.mktemp("mirror")) as running:
        yield running


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = start_server_process(
        tmp_path_factory.mktemp("hostile-net-server"),
        settings={"network_hosts": f"{MIRROR}=127.0.0.1"},
    )
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[AsyncSandboxClient]:
    async with AsyncSandboxClient(server.endpoint) as opened:
        yield opened


async def _sandbox(client: AsyncSandboxClient) -> SandboxInfo:
    codebase = await client.create_codebase("hostile-network")
    return await client.create_sandbox(
        codebase.id,
        permissions=[PermissionRule("**", "write")],
        start=True,
        network=[f"{MIRROR}:*"],
    )


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_an_upstream_that_never_reads_costs_the_server_no_memory(
    client: AsyncSandboxClient, world: World, server: ServerProcess
) -> None:
    """Eight uploads as fast as the sandbox can push, to a host that never reads: the server
    grew by 4.4 GB in 4 s, when anyio's streams read ahead of the relay."""
    info = await _sandbox(client)
    script = f"""
import socket, threading, time
def one():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    s.connect(("127.0.0.1", 3128))
    s.settimeout(0.5)
    block = b"u" * (1 << 20)
    s.sendall(b"POST http://{MIRROR}:{world.sink_port}/ HTTP/1.1\\r\\n"
              b"Content-Length: 100000000000\\r\\n\\r\\n")
    began = time.time()
    while time.time() - began < 4:
        try:
            s.sendall(block)
        except socket.timeout:
            pass
threads = [threading.Thread(target=one) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print("pushed")
"""
    before = _rss(server.process.pid)
    result = await client.exec(info.id, "python3 -", stdin=script, timeout=60)
    assert result.stdout == "pushed\n", result.stderr
    grown = _rss(server.process.pid) - before
    assert grown < 32 * MiB, f"the server grew by {grown / MiB:.0f} MiB"


async def test_no_connection_can_end_the_proxy(client: AsyncSandboxClient, world: World) -> None:
    """A URL urlsplit refuses (ValueError), and CONNECTs reset before their answer
    (BrokenResourceError), each ended the sandbox's whole proxy."""
    info = await _sandbox(client)
    script = f"""
import socket, struct
s = socket.create_connection(("127.0.0.1", 3128))
s.sendall(b"GET http://[::1/ HTTP/1.1\\r\\n\\r\\n")
print(s.recv(100).split(b"\\r\\n")[0].decode())
for _ in range(30):
    s = socket.create_connection(("127.0.0.1", 3128))
    s.sendall(b"CONNECT {MIRROR}:{world.http_port} HTTP/1.1\\r\\n\\r\\n")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
"""
    result = await client.exec(info.id, "python3 -", stdin=script)
    assert result.stdout == "HTTP/1.1 400 Bad Request\n", result.stderr
    still = await client.exec(info.id, f"curl -sS http://{MIRROR}:{world.http_port}/hello.txt")
    assert still.stdout == "hello from the mirror\n", still.stderr


async def test_a_second_request_on_a_connection_is_never_sent_where_the_first_went(
    client: AsyncSandboxClient, world: World
) -> None:
    """curl reuses its connection to the proxy: the second URL (another host, with the
    first's credentials) reached the first host's server, unchecked and unlogged."""
    info = await _sandbox(client)
    world.seen.clear()
    first = f"http://{MIRROR}:{world.recorder_port}/a"
    result = await client.exec(
        info.id,
        f"curl -sS --max-time 20 -u alice:secret {first} http://forbidden.example/b; echo",
    )
    assert result.stdout.startswith("recorded\n"), result.stderr
    assert "forbidden.example:80 is not in the allow-list" in result.stdout
    assert world.seen == [("GET /a HTTP/1.1", f"{MIRROR}:{world.recorder_port}")]
    assert result.network_denied == ("forbidden.example:80",)


async def test_a_request_smuggled_behind_a_bare_lf_is_refused(
    client: AsyncSandboxClient, world: World
) -> None:
    info = await _sandbox(client)
    world.seen.clear()
    script = f"""
import socket
s = socket.create_connection(("127.0.0.1", 3128))
s.sendall(b"GET http://{MIRROR}:{world.recorder_port}/one HTTP/1.1\\r\\nX-A: a\\n\\n"
          b"GET /smuggled HTTP/1.1\\nHost: evil.example\\nX-B: b\\r\\n\\r\\n")
print(s.recv(100).split(b"\\r\\n")[0].decode())
s = socket.create_connection(("127.0.0.1", 3128))
s.sendall(b"POST http://{MIRROR}:{world.recorder_port}/two HTTP/1.1\\r\\n"
          b"Content-Length: 5\\r\\n\\r\\nhello"
          b"GET /three HTTP/1.1\\r\\nHost: evil.example\\r\\n\\r\\n")
print(s.recv(100).split(b"\\r\\n")[0].decode())
"""
    result = await client.exec(info.id, "python3 -", stdin=script)
    assert result.stdout == "HTTP/1.1 400 Bad Request\nHTTP/1.1 200 OK\n", result.stderr
    assert world.seen == [("POST /two HTTP/1.1", f"{MIRROR}:{world.recorder_port}")]
    log = await client.get_network_log(info.id)
    assert [(e.verdict, e.kind) for e in log] == [
        (NetworkVerdict.DENIED, "http"),
        (NetworkVerdict.ALLOWED, "http"),
    ]
    assert "control character" in log[0].reason


HELLO = """
import socket, ssl, sys, time
incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
context = ssl.create_default_context()
tls = context.wrap_bio(incoming, outgoing, server_hostname="evil.example")
try:
    tls.do_handshake()
except ssl.SSLWantReadError:
    pass
hello = outgoing.read()
at = 2  # (two bytes: not yet enough to tell TLS)
if sys.argv[1] == "prefix":  # (up to its compression methods: a hello with no name, cut)
    at = 5 + 4 + 2 + 32
    at += 1 + hello[at]
    at += 2 + int.from_bytes(hello[at : at + 2], "big")
    at += 1 + hello[at]
s = socket.create_connection(("127.0.0.1", 3128))
s.sendall(f"CONNECT {sys.argv[2]} HTTP/1.1\\r\\n\\r\\n".encode())
print(s.recv(100).split(b"\\r\\n")[0].decode())
s.sendall(hello[:at])
time.sleep(1.5)
try:
    s.sendall(hello[at:])
    print("answered" if s.recv(100) else "closed")
except OSError:
    print("closed")
"""


@pytest.mark.parametrize("cut", ["prefix", "two"])
async def test_a_hello_sent_in_pieces_is_checked_whole(
    client: AsyncSandboxClient, world: World, cut: str
) -> None:
    """A hello cut after its compression methods was read as one naming nothing; two bytes
    were read as no TLS: either way the rest, naming another host, went through."""
    info = await _sandbox(client)
    target = f"{MIRROR}:{world.https_port}"
    result = await client.exec(info.id, f"python3 - {cut} {target}", stdin=HELLO)
    assert result.stdout == "HTTP/1.1 200 Connection established\nclosed\n", result.stderr
    (entry,) = await client.get_network_log(info.id)
    assert entry.verdict is NetworkVerdict.DENIED
    assert "'evil.example' is not mirror.test" in entry.reason


async def test_a_client_that_half_closes_gets_its_response(
    client: AsyncSandboxClient, world: World
) -> None:
    info = await _sandbox(client)
    script = f"""
import socket
s = socket.create_connection(("127.0.0.1", 3128))
s.sendall(b"GET http://{MIRROR}:{world.http_port}/hello.txt HTTP/1.0\\r\\n\\r\\n")
s.shutdown(socket.SHUT_WR)
answer = b""
while (more := s.recv(65536)):
    answer += more
print(answer.split(b"\\r\\n\\r\\n", 1)[1].decode(), end="")
"""
    result = await client.exec(info.id, "python3 -", stdin=script)
    assert result.stdout == "hello from the mirror\n", result.stderr


async def test_resets_mid_download_leave_no_traceback_in_the_server_log(
    client: AsyncSandboxClient, world: World, server: ServerProcess
) -> None:
    """Each reset made a 20-line traceback: a sandbox could fill the server's disk."""
    info = await _sandbox(client)
    (world.root / "big.bin").write_bytes(b"b" * (8 * MiB))
    script = f"""
import socket, struct
for _ in range(100):
    s = socket.create_connection(("127.0.0.1", 3128))
    s.sendall(b"GET http://{MIRROR}:{world.http_port}/big.bin HTTP/1.1\\r\\n\\r\\n")
    s.recv(1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
print("reset")
"""
    result = await client.exec(info.id, "python3 -", stdin=script, timeout=120)
    assert result.stdout == "reset\n", result.stderr
    assert "Traceback" not in server.log()


async def test_the_later_fragments_of_a_datagram_are_not_logged_as_ports(
    client: AsyncSandboxClient,
) -> None:
    info = await _sandbox(client)
    script = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(b"CD" * 30000, ("1.2.3.4", 9999))
"""
    result = await client.exec(info.id, "python3 -", stdin=script)
    assert result.exit_code == 0, result.stderr
    assert result.network_denied == ("1.2.3.4:9999",)


@pytest.mark.slow
async def test_a_tunnel_whose_client_is_done_gives_its_slot_back(
    limited_server: ServerProcess, world: World
) -> None:
    """A host that ignores the client's end (FIN) held the slot for good: with every slot
    so held, the sandbox's proxy answered 503 to everything until it was restarted."""
    async with AsyncSandboxClient(limited_server.endpoint) as client:
        info = await _sandbox(client)
        script = f"""
import socket, time
for _ in range(2):
    s = socket.create_connection(("127.0.0.1", 3128))
    s.sendall(b"CONNECT {MIRROR}:{world.sink_port} HTTP/1.1\\r\\n\\r\\n")
    s.recv(100)
    s.sendall(b"hello")
    s.shutdown(socket.SHUT_WR)
    s.close()
for second in range(60):
    s = socket.create_connection(("127.0.0.1", 3128))
    s.sendall(b"GET http://{MIRROR}:{world.http_port}/hello.txt HTTP/1.1\\r\\n\\r\\n")
    if b" 200 " in s.recv(100):
        print("served")
        break
    time.sleep(1)
"""
        result = await client.exec(info.id, "python3 -", stdin=script, timeout=120)
        assert result.stdout == "served\n", result.stderr


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = start_server_process(
        tmp_path_factory.mktemp("two-slots-server"),
        settings={"network_hosts": f"{MIRROR}=127.0.0.1", "network_max_connections": "2"},
    )
    yield running
    assert running.stop() == 0, running.log()


def _listeners(pid: int) -> int:
    """The raw-socket watches (seccomp listeners) the server holds."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # (closed meanwhile)
            count += os.readlink(fd) == "anon_inode:seccomp notify"
    return count


async def _until(check: Callable[[], Awaitable[bool] | bool]) -> bool:
    """Whether ``check`` holds within 10 s."""
    for _ in range(200):
        held = check()
        if held if isinstance(held, bool) else await held:
            return True
        await anyio.sleep(0.05)
    return False


async def test_a_process_left_behind_is_watched_until_it_ends(
    client: AsyncSandboxClient, server: ServerProcess
) -> None:
    """A process a command left running tries a raw socket after its command ended: refused
    and logged all the same. Once no process of its command is left, the server lets go of
    the command's watch: a sandbox that runs many commands costs it no descriptor each."""
    info = await _sandbox(client)
    pid = server.process.pid
    try:
        before = _listeners(pid)
        for _ in range(5):
            assert (await client.exec(info.id, "true")).exit_code == 0
        assert await _until(lambda: _listeners(pid) == before), "a watch kept per command"
        script = "import socket, time; time.sleep(1); socket.socket(socket.AF_PACKET, 3)"
        await client.exec(info.id, f"python3 -c '{script}' >/dev/null 2>&1 &")
        assert _listeners(pid) == before + 1  # (the background process's)

        async def logged() -> bool:
            log = await client.get_network_log(info.id)
            return [entry.kind for entry in log] == ["packet-socket"]

        assert await _until(logged), "the attempt of a process left behind is not logged"
        assert await _until(lambda: _listeners(pid) == before), "its watch outlived it"
    finally:
        await client.destroy_sandbox(info.id)


async def test_processes_left_behind_pin_no_more_than_a_few_descriptors(
    client: AsyncSandboxClient, server: ServerProcess
) -> None:
    """Each command's watch was kept while anything it left ran: 300 commands leaving a
    sleeper each held 300 of the server's descriptors, and enough of them starved every
    sandbox's commands (a hostile tester's finding). Only the last few ended commands keep
    theirs: what older leftovers try fails all the same (ENOSYS), unlogged."""
    info = await _sandbox(client)
    pid = server.process.pid
    try:
        before = _listeners(pid)
        for index in range(12):
            await client.exec(info.id, f"sleep 600 >/dev/null 2>&1 & echo $! > /tmp/p{index}")
        assert await _until(lambda: _listeners(pid) == before + 4), _listeners(pid)
        for _ in range(6):  # (commands that leave nothing: their watches go by themselves)
            await client.exec(info.id, "true")
        # (one that was slow to let its filter go may have pushed a leftover's watch out)
        assert await _until(lambda: before < _listeners(pid) <= before + 4), _listeners(pid)
        script = (
            "import os, socket, sys; os.kill(int(open(sys.argv[1]).read()), 9)\n"
            "try: socket.socket(socket.AF_PACKET, 3)\n"
            "except OSError as exc: print(exc.strerror)"
        )
        attempt = await client.exec(info.id, f"python3 -c '{script}' /tmp/p0")
        assert attempt.stdout == "Operation not permitted\n"  # (its own command's watch)
        assert attempt.network_denied == ("packet-socket",)
        assert await _until(lambda: before < _listeners(pid) <= before + 4), _listeners(pid)
    finally:
        await client.destroy_sandbox(info.id)
    assert await _until(lambda: _listeners(pid) == before), "watches outlived the sandbox"


async def test_a_flood_of_raw_sockets_is_paced_and_costs_others_nothing(
    client: AsyncSandboxClient, server: ServerProcess
) -> None:
    """Four processes try raw sockets as fast as they can: each attempt waits for its answer,
    which comes at a pace of the sandbox's own, so another sandbox's commands run as ever;
    the log keeps its size and the audit log its rate."""
    flooding, other = await _sandbox(client), await _sandbox(client)
    script = """
import socket, sys, time
refused, began = 0, time.time()
while time.time() - began < 3:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, 1)
    except PermissionError:
        refused += 1
print(refused)
"""
    try:
        async with anyio.create_task_group() as tg:
            results: list[int] = []

            async def flood() -> None:
                result = await client.exec(flooding.id, "python3 -", stdin=script)
                results.append(int(result.stdout))

            for _ in range(4):
                tg.start_soon(flood)
            await anyio.sleep(1)
            slowest = 0.0
            for _ in range(10):
                began = anyio.current_time()
                assert (await client.exec(other.id, "true")).exit_code == 0
                slowest = max(slowest, anyio.current_time() - began)
        assert slowest < 2.0, f"another sandbox's command took {slowest:.2f} s"
        # Answered at 200 a second: about 600 in 3 s, however many processes ask.
        assert 100 < sum(results) <= 1000, results
        log = await client.get_network_log(flooding.id)
        assert {entry.kind for entry in log} == {"raw-socket"}
        assert len(log) == sum(results)
    finally:
        await client.destroy_sandbox(flooding.id)
        await client.destroy_sandbox(other.id)
