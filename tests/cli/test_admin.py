"""``agentfense ls``, ``rm`` and ``exec`` against a running server."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest

from agentfense import SandboxClient, SandboxInfo

from .conftest import cli, cli_env, start_cli

pytestmark = pytest.mark.bwrap


@pytest.fixture
def sandbox(client: SandboxClient) -> Iterator[SandboxInfo]:
    """A running sandbox on a codebase of two files, removed afterwards if still there."""
    codebase = client.create_codebase("cli-admin", "tester")
    client.upload_file(codebase.id, "hello.txt", "hello\n")
    made = client.create_sandbox(
        codebase.id, permissions=[{"pattern": "**", "permission": "write"}]
    )
    yield client.start_sandbox(made.id)
    if made.id in {s.id for s in client.list_sandboxes()}:
        client.destroy_sandbox(made.id)
    if codebase.id in {c.id for c in client.list_codebases()}:
        client.delete_codebase(codebase.id)


def test_ls_shows_sandboxes_and_codebases(endpoint: str, sandbox: SandboxInfo) -> None:
    done = cli("ls", env=cli_env(AGENTFENSE_ENDPOINT=endpoint))
    assert done.returncode == 0, done.stderr
    sandboxes, codebases = done.stdout.split("\n\n")
    assert sandboxes.splitlines()[0].split() == [
        "SANDBOX",
        "STATUS",
        "CODEBASE",
        "RUNTIME",
        "CREATED",
    ]
    [row] = [line for line in sandboxes.splitlines() if line.startswith(sandbox.id)]
    assert row.split()[:4] == [sandbox.id, "running", sandbox.codebase_id, "bwrap"]
    assert codebases.splitlines()[0].split() == [
        "CODEBASE",
        "NAME",
        "OWNER",
        "FILES",
        "SIZE",
        "CREATED",
    ]
    [row] = [line for line in codebases.splitlines() if line.startswith(sandbox.codebase_id)]
    assert row.split()[:6] == [sandbox.codebase_id, "cli-admin", "tester", "1", "6", "B"]
    quiet = cli("ls", "-q", "--endpoint", endpoint)
    assert {sandbox.id, sandbox.codebase_id} <= set(quiet.stdout.split())


def test_exec_runs_in_the_running_sandbox_with_its_flags(
    endpoint: str, sandbox: SandboxInfo
) -> None:
    exec_ = ("exec", "--endpoint", endpoint)
    done = cli(*exec_, sandbox.id, "--", "cat", "hello.txt")
    assert (done.returncode, done.stdout) == (0, "hello\n"), done.stderr
    done = cli(*exec_, "-e", "X=1 2", "-w", "/tmp", sandbox.id, "--", 'echo "$X" > a; cat a; pwd')
    assert done.stdout == "1 2\n/tmp\n"
    done = cli(*exec_, sandbox.id, "--", "printf", "<%s>", "a  b", "c;d")
    assert done.stdout == "<a  b><c;d>"
    assert cli(*exec_, sandbox.id, "--", "sh", "-c", "exit 9").returncode == 9
    assert cli(*exec_, "--timeout", "0.5", sandbox.id, "--", "sleep", "20").returncode == 124
    # The sandbox stays: exec is not run.
    assert cli(*exec_, sandbox.id, "--", "true").returncode == 0


def test_ctrl_c_stops_the_exec_command_and_keeps_the_sandbox(
    endpoint: str, sandbox: SandboxInfo, client: SandboxClient
) -> None:
    def sleepers() -> list[str]:
        """The processes of the sandbox running ``sleep 1234`` (the pattern is not its own)."""
        find = "grep -l 123[4] /proc/[0-9]*/cmdline || true"
        return cli("exec", "--endpoint", endpoint, sandbox.id, "--", find).stdout.split()

    running = start_cli("exec", "--endpoint", endpoint, sandbox.id, "--", "exec sleep 1234")
    deadline = time.monotonic() + 30
    while not sleepers():
        assert time.monotonic() < deadline, "the command never started"
    running.send_signal(signal.SIGINT)
    _, err = running.communicate(timeout=60)
    assert running.returncode == 130, err
    assert client.get_sandbox(sandbox.id).status.value == "running"
    assert sleepers() == [], "the command still runs"


def test_exec_on_an_unknown_sandbox_is_125(endpoint: str) -> None:
    done = cli("exec", "--endpoint", endpoint, "sb_0000000000000000", "--", "true")
    assert done.returncode == 125
    assert done.stderr.splitlines() == ["agentfense exec: sandbox 'sb_0000000000000000' not found"]


def test_rm_removes_sandboxes_and_codebases(
    endpoint: str, sandbox: SandboxInfo, client: SandboxClient
) -> None:
    done = cli("rm", "--endpoint", endpoint, sandbox.id, sandbox.codebase_id)
    assert (done.returncode, done.stdout.split()) == (0, [sandbox.id, sandbox.codebase_id])
    assert sandbox.id not in {s.id for s in client.list_sandboxes()}
    assert sandbox.codebase_id not in {c.id for c in client.list_codebases()}


def test_rm_goes_on_past_what_it_cannot_remove_and_exits_125(
    endpoint: str, sandbox: SandboxInfo, client: SandboxClient
) -> None:
    done = cli("rm", "--endpoint", endpoint, "sb_0000000000000000", "junk", sandbox.id)
    assert done.returncode == 125
    assert done.stdout.split() == [sandbox.id]
    assert done.stderr.splitlines() == [
        "agentfense rm: sandbox 'sb_0000000000000000' not found",
        "agentfense rm: 'junk' is neither a sandbox (sb_…) nor a codebase (cb_…)",
    ]
    assert sandbox.id not in {s.id for s in client.list_sandboxes()}
