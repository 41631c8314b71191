"""Where the SDK finds the local owner's token: one file per endpoint, however it is spelt,
trusted only when this user alone owns it, and handed only to a server of this user (another
user listening on the port, or on the other loopback address, gets nothing); and an api_key
that cannot be sent is refused in a sentence that does not repeat it."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentfense import AsyncSandboxClient, InvalidConfigurationError
from agentfense._local_token import (
    endpoint_key,
    read_local_token,
    read_token_file,
    write_local_token,
)

TOKEN = "af_0123abcd_" + "x" * 43


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("AGENTFENSE_API_KEY", raising=False)
    return tmp_path


@pytest.fixture
def port() -> Iterator[int]:
    """A TCP port this user listens on (on 127.0.0.1)."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        yield int(listening.getsockname()[1])


def test_the_spellings_of_one_endpoint_are_one_key() -> None:
    same = {"localhost:9000", "127.0.0.1:9000", "[::1]:9000", "LOCALHOST:9000", "0.0.0.0:9000"}
    assert {endpoint_key(e) for e in same} == {"localhost:9000"}
    assert endpoint_key("unix:/run/a.sock") == endpoint_key("unix:///run/a.sock") == "/run/a.sock"
    assert endpoint_key("example.org:9000") != endpoint_key("localhost:9000")
    assert endpoint_key("localhost:9001") != endpoint_key("localhost:9000")


def test_a_written_token_is_read_back_for_any_spelling_and_only_if_private(
    home: Path, port: int
) -> None:
    path = write_local_token(f"[::1]:{port}", TOKEN)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert read_local_token(f"localhost:{port}") == TOKEN
    assert read_local_token(f"localhost:{port + 1}") is None
    path.chmod(0o644)  # readable (or writable) by others: not trusted
    assert read_local_token(f"localhost:{port}") is None
    path.chmod(0o600)
    os.chown(path, 65534, 65534)  # another user's file
    assert read_local_token(f"localhost:{port}") is None
    path.unlink()
    path.symlink_to(home / "elsewhere")
    (home / "elsewhere").write_text(TOKEN)
    (home / "elsewhere").chmod(0o600)
    assert read_local_token(f"localhost:{port}") is None


@contextlib.contextmanager
def _listening_as_nobody(address: str, port: int) -> Iterator[None]:
    """A listener of another user (uid 65534) on ``address``:``port`` while the block runs."""
    family = "AF_INET6" if ":" in address else "AF_INET"
    script = (
        f"import socket, time\ns = socket.socket(socket.{family})\n"
        f"s.bind(({address!r}, {port}))\ns.listen()\nprint('up', flush=True)\ntime.sleep(60)\n"
    )
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    python = os.path.realpath(sys.executable)
    with subprocess.Popen(
        [*as_nobody, python, "-I", "-c", script], stdout=subprocess.PIPE
    ) as squat:
        try:
            assert squat.stdout is not None
            assert squat.stdout.readline() == b"up\n"
            yield
        finally:
            squat.kill()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_no_token_for_a_port_another_user_listens_on_beside_the_server(port: int) -> None:
    """The server on 127.0.0.1, another user on [::1] (which ``localhost`` may reach first)."""
    write_local_token(f"localhost:{port}", TOKEN)
    assert read_local_token(f"localhost:{port}") == TOKEN
    with _listening_as_nobody("::1", port):
        for spelling in ("localhost", "127.0.0.1", "[::1]"):
            assert read_local_token(f"{spelling}:{port}") is None
        assert read_token_file(f"localhost:{port}") == TOKEN  # (the file is still there)
    assert read_local_token(f"localhost:{port}") == TOKEN


def test_no_token_for_a_port_another_user_took_while_the_server_was_down() -> None:
    port = _free_port()
    write_local_token(f"localhost:{port}", TOKEN)
    assert read_local_token(f"localhost:{port}") is None  # (nothing listens)
    with _listening_as_nobody("127.0.0.1", port):
        assert read_local_token(f"localhost:{port}") is None


def test_no_token_for_a_unix_socket_another_user_made(home: Path) -> None:
    path = home / "s.sock"
    write_local_token(f"unix:{path}", TOKEN)
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(path))
        assert read_local_token(f"unix:{path}") == TOKEN
        os.chown(path, 65534, 65534)
        assert read_local_token(f"unix:{path}") is None


def test_the_argument_then_the_variable_then_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    write_local_token("localhost:9000", "from-the-file")
    monkeypatch.setenv("AGENTFENSE_API_KEY", "from-the-variable")
    assert AsyncSandboxClient("localhost:9000", api_key="given")._api_key == "given"
    assert AsyncSandboxClient("localhost:9000")._api_key == "from-the-variable"
    monkeypatch.setenv("AGENTFENSE_API_KEY", "")  # (empty: unset, so the file at connect)
    assert AsyncSandboxClient("localhost:9000")._api_key is None


@pytest.mark.parametrize("key", ["two words", "line\nbreak", "tëst"])
def test_a_key_that_cannot_be_a_header_is_refused_without_repeating_it(
    key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(InvalidConfigurationError) as refused:
        AsyncSandboxClient("localhost:9000", api_key=key)
    assert key not in str(refused.value)
    assert "api_key must be" in str(refused.value)
    monkeypatch.setenv("AGENTFENSE_API_KEY", key)
    with pytest.raises(InvalidConfigurationError, match="the variable AGENTFENSE_API_KEY must"):
        AsyncSandboxClient("localhost:9000")
