"""``agentfense serve --auth`` and ``--audit-log`` against a real server process: each flag
sets its setting, and wins over the configuration file and the environment."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentfense import AuthenticationError, SandboxClient
from agentfense._local_token import read_local_token

from .conftest import cli, cli_env


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A state directory the sandboxes' uid can reach (pytest's tmp_path is private)."""
    made = Path(tempfile.mkdtemp(prefix="agentfense-state-"))
    yield made
    shutil.rmtree(made)  # (the server stopped cleanly: nothing is mounted below)


SERVE = (sys.executable, "-m", "agentfense", "serve")


@dataclass(frozen=True)
class Served:
    """A server ``serving`` started: where to reach it, and its output so far."""

    endpoint: str
    out: Path  # its standard output
    err: Path  # its standard error (the log)

    def log(self) -> str:
        return self.err.read_text()


def _accepting(sock: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(sock))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def serving(
    root: Path, state_dir: Path, *flags: str, env: dict[str, str] | None = None
) -> Iterator[Served]:
    """``agentfense serve FLAGS`` on a unix socket in ``root``, once it accepts calls; on the
    way out it is stopped with SIGTERM and must exit 0."""
    served = Served(f"unix:{root / 'server.sock'}", root / "server.out", root / "server.err")
    with served.out.open("w") as out, served.err.open("w") as err:
        process = subprocess.Popen(
            [*SERVE, "--listen", served.endpoint, "--state-dir", str(state_dir), *flags],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=cli_env(**(env or {})),
        )
    try:
        deadline = time.monotonic() + 60
        while not _accepting(root / "server.sock"):
            assert process.poll() is None, served.log()
            assert time.monotonic() < deadline, f"not accepting after 60 s: {served.log()}"
            time.sleep(0.05)
        yield served
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    assert process.returncode == 0, served.log()


def _config(root: Path, text: str) -> str:
    path = root / "agentfense.toml"
    path.write_text(f"[server]\n{text}\n")
    return str(path)


def test_auth_none_lets_a_call_in_without_a_token_and_warns(
    tmp_path: Path, state_dir: Path
) -> None:
    config = _config(tmp_path, 'auth = "token"')
    with serving(
        tmp_path, state_dir, "--config", config, "--auth", "none", env={"AGENTFENSE_AUTH": "token"}
    ) as server:
        assert read_local_token(server.endpoint) is None  # (no token is made for anyone)
        with SandboxClient(server.endpoint, api_key="") as client:
            made = client.create_codebase("open", "anyone")
            assert [c.id for c in client.list_codebases()] == [made.id]
    assert "WARNING agentfense.server: auth is 'none': anyone who can reach " in server.log()


def test_auth_token_refuses_a_call_without_a_token(tmp_path: Path, state_dir: Path) -> None:
    config = _config(tmp_path, 'auth = "none"')
    with serving(
        tmp_path, state_dir, "--config", config, "--auth", "token", env={"AGENTFENSE_AUTH": "none"}
    ) as server:
        with (
            SandboxClient(server.endpoint, api_key="") as anonymous,
            pytest.raises(AuthenticationError, match="this server requires an API token"),
        ):
            anonymous.list_codebases()
        with SandboxClient(server.endpoint) as owner:  # (the token the server left for its user)
            assert owner.list_codebases() == []


def test_auth_takes_token_or_none_only(tmp_path: Path) -> None:
    done = cli("serve", "--auth", "off", "--state-dir", str(tmp_path / "state"))
    assert done.returncode == 125
    [line] = done.stderr.splitlines()
    assert "argument --auth: invalid choice: 'off' (choose from" in line
    assert not (tmp_path / "state").exists()


def _actions(lines: list[str]) -> list[tuple[str | None, str, str]]:
    records = [json.loads(line) for line in lines]
    return [(r["tenant"], r["action"], r["outcome"]) for r in records]


def test_audit_log_writes_a_json_line_per_call_to_the_flags_file(
    tmp_path: Path, state_dir: Path
) -> None:
    configured, flagged = tmp_path / "from-config.jsonl", tmp_path / "from-flag.jsonl"
    config = _config(tmp_path, f"audit_log = {json.dumps(str(configured))}")
    with serving(
        tmp_path,
        state_dir,
        "--config",
        config,
        "--audit-log",
        str(flagged),
        env={"AGENTFENSE_AUDIT_LOG": str(tmp_path / "from-env.jsonl")},
    ) as server:
        with SandboxClient(server.endpoint) as client:
            made = client.create_codebase("audited", "alice")
            client.list_codebases()
            client.delete_codebase(made.id)
        with (
            SandboxClient(server.endpoint, api_key="") as anonymous,
            pytest.raises(AuthenticationError),
        ):
            anonymous.list_codebases()
    assert _actions(flagged.read_text().splitlines()) == [
        ("local", "CreateCodebase", "OK"),
        ("local", "ListCodebases", "OK"),
        ("local", "DeleteCodebase", "OK"),
        (None, "ListCodebases", "UNAUTHENTICATED"),
    ]
    assert flagged.stat().st_mode & 0o777 == 0o600
    assert not configured.exists()
    assert not (tmp_path / "from-env.jsonl").exists()


def test_audit_log_dash_writes_the_lines_to_standard_output(
    tmp_path: Path, state_dir: Path
) -> None:
    with (
        serving(tmp_path, state_dir, "--audit-log", "-") as server,
        SandboxClient(server.endpoint) as client,
    ):
        client.list_codebases()
    assert _actions(server.out.read_text().splitlines()) == [("local", "ListCodebases", "OK")]
    assert "agentfense listening on" in server.log()  # (the log stays on standard error)


def test_an_audit_log_that_cannot_be_opened_is_one_sentence(
    tmp_path: Path, state_dir: Path
) -> None:
    where = tmp_path / "missing" / "audit.jsonl"
    done = cli(
        "serve",
        *("--listen", f"unix:{tmp_path / 's.sock'}", "--state-dir", str(state_dir)),
        *("--audit-log", str(where)),
    )
    assert done.returncode == 125, done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"agentfense serve: cannot open the audit log {where}: No such file or directory"
    )
    assert list(state_dir.iterdir()) == []  # refused before anything of the server was made
