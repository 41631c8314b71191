"""``agentfense run``: the command passed through exactly, its exit code as ours, the flags
landing in the sandbox, against a real server and the embedded one."""

from __future__ import annotations

import contextlib
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agentfense import ResourceLimits, SandboxClient

from .conftest import cli, cli_env, held, start_cli

pytestmark = pytest.mark.bwrap

QUOTING = [
    # (argv after --, stdout): each word reaches the program as given
    (["python3", "-c", "print(1)"], "1\n"),
    (["echo", "a  b", "c;d"], "a  b c;d\n"),
    (["printf", "[%s]", "$HOME", "*", "it's", ""], "[$HOME][*][it's][]"),
    (["echo", "--timeout", "5", "--", "x"], "--timeout 5 -- x\n"),
    # one argument is a shell command line
    (["echo one | tr o 0 && echo two"], "0ne\ntwo\n"),
]


@pytest.mark.parametrize(("argv", "stdout"), QUOTING)
def test_the_command_reaches_the_sandbox_exactly_as_given(
    endpoint: str, project: Path, argv: list[str], stdout: str
) -> None:
    done = cli("run", "--endpoint", endpoint, str(project), "--", *argv)
    assert (done.returncode, done.stdout, done.stderr) == (0, stdout, "")


def test_the_embedded_server_runs_the_command_and_takes_everything_with_it(
    project: Path,
) -> None:
    done = cli("run", str(project), "--", "python3", "-c", "print(1)")
    assert (done.returncode, done.stdout, done.stderr) == (0, "1\n", "")
    done = cli("run", str(project), "--", "sh", "-c", "exit 7")
    assert done.returncode == 7


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["sh", "-c", "exit 7"], 7),
        (["true"], 0),
        (["sh", "-c", "kill -KILL $$"], 137),
        (["no-such-program-anywhere"], 127),
        (["./data.txt"], 126),  # not executable
    ],
)
def test_the_command_exit_code_is_ours(
    endpoint: str, project: Path, argv: list[str], code: int
) -> None:
    done = cli("run", "--endpoint", endpoint, str(project), "--", *argv)
    assert done.returncode == code, done.stderr


def test_stdout_and_stderr_stay_apart(endpoint: str, project: Path) -> None:
    done = cli("run", "--endpoint", endpoint, str(project), "--", "echo out; echo err >&2")
    assert (done.stdout, done.stderr) == ("out\n", "err\n")


def test_options_after_the_path_are_options_not_the_command(endpoint: str, project: Path) -> None:
    done = cli("run", str(project), "--endpoint", endpoint, "--timeout", "60", "--", "echo", "hi")
    assert (done.returncode, done.stdout) == (0, "hi\n"), done.stderr


def test_a_timeout_kills_the_command_and_exits_124(endpoint: str, project: Path) -> None:
    done = cli(
        "run", "--endpoint", endpoint, "--timeout", "1", str(project), "--", "echo x; sleep 30"
    )
    assert done.returncode == 124
    assert done.stdout == "x\n"
    [line] = done.stderr.splitlines()
    assert line.startswith("agentfense run: command timed out after 1")


def test_env_workdir_and_rules_land_in_the_sandbox(endpoint: str, project: Path) -> None:
    done = cli(
        "run",
        "--endpoint",
        endpoint,
        "-e",
        "GREETING=a b=c",
        "--env",
        "EMPTY=",
        "--workdir",
        "/workspace/src",
        "--rule",
        "secret.txt=none",
        "--rule",
        "notes.txt=view",
        str(project),
        "--",
        'printf "%s|%s|" "$GREETING" "${EMPTY-unset}"; pwd; ls ..; cat ../notes.txt',
    )
    assert done.stdout == "a b=c||/workspace/src\ndata.txt\nnotes.txt\nsrc\n", done.stderr
    assert "Permission denied" in done.stderr
    assert done.returncode == 1


def test_a_preset_is_applied(endpoint: str, project: Path) -> None:
    done = cli(
        "run", "--endpoint", endpoint, "--preset", "view-only", str(project), "--", "cat notes.txt"
    )
    assert done.returncode == 1
    assert "Permission denied" in done.stderr
    done = cli(
        "run", "--endpoint", endpoint, "--preset", "development", str(project), "--",
        "echo new > made.txt && cat made.txt",
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (0, "new\n"), done.stderr


def test_a_memory_limit_kills_what_goes_over_it_and_says_so(endpoint: str, project: Path) -> None:
    done = cli(
        "run", "--endpoint", endpoint, "--memory", "64m", str(project), "--",
        "python3", "-c", "b = bytearray(512 << 20); print('survived')",
    )  # fmt: skip
    assert done.returncode == 137, done.stderr
    assert "survived" not in done.stdout
    assert "agentfense run: the command ran into the sandbox's memory limit" in done.stderr


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)]
)
def test_a_signal_destroys_the_sandbox_and_exits_128_plus_it(
    endpoint: str, project: Path, client: SandboxClient, signum: int, code: int
) -> None:
    before = held(client)
    running = start_cli(
        "run", "--endpoint", endpoint, "--memory", "96m", "--cpus", "0.5", "--pids", "64",
        str(project), "--", "echo ready; sleep 60",
    )  # fmt: skip
    assert running.stdout is not None
    assert running.stdout.readline() == "ready\n"
    # While it runs: the limits asked for are the sandbox's.
    [made] = [s for s in client.list_sandboxes() if s.id not in before[0]]
    assert made.resources == ResourceLimits(memory_bytes=96 << 20, cpu_quota=50_000, pids_limit=64)
    running.send_signal(signum)
    out, err = running.communicate(timeout=60)
    assert running.returncode == code, err
    assert (out, err) == ("", "")
    assert held(client) == before  # the sandbox and the codebase it uploaded are gone


def test_a_closed_output_stops_the_command_quietly(
    endpoint: str, project: Path, client: SandboxClient
) -> None:
    before = held(client)
    agentfense = shlex.join([sys.executable, "-m", "agentfense"])
    run = shlex.join(["run", "--endpoint", endpoint, str(project), "--", "yes"])
    pipeline = f"{agentfense} {run} | head -2"
    done = subprocess.run(
        ["bash", "-c", pipeline + "; echo ${PIPESTATUS[0]}"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
        check=False,
    )
    assert (done.stdout, done.stderr) == ("y\ny\n141\n", "")
    assert held(client) == before


def test_ctrl_c_with_the_embedded_server_leaves_nothing_behind(project: Path) -> None:
    running = start_cli("run", str(project), "--", "echo ready; sleep 60")
    assert running.stdout is not None
    assert running.stdout.readline() == "ready\n"
    state = _embedded_state_of(running.pid)
    running.send_signal(signal.SIGINT)
    _, err = running.communicate(timeout=60)
    assert running.returncode == 130, err
    assert not state.exists()
    assert str(state) not in Path("/proc/self/mounts").read_text()


def _embedded_state_of(pid: int) -> Path:
    """The embedded server's state directory: where the socket process ``pid`` listens on is."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            inodes.add(fd.readlink().name)  # socket:[12345]
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if (
            len(fields) == 8
            and f"socket:[{fields[6]}]" in inodes
            and fields[7].endswith("/server.sock")
            and "/agentfense-run-" in fields[7]
        ):
            return Path(fields[7]).parent
    raise AssertionError("the embedded server's socket was not found")


def test_the_endpoint_comes_from_agentfense_endpoint(project: Path, tmp_path: Path) -> None:
    nowhere = f"unix:{tmp_path}/nobody.sock"
    done = cli("run", str(project), "--", "true", env=cli_env(AGENTFENSE_ENDPOINT=nowhere))
    assert done.returncode == 125
    [line] = done.stderr.splitlines()
    assert line.startswith("agentfense run: ")
    assert "nobody.sock" in line


def test_the_docker_runtime_and_an_image(endpoint: str, project: Path) -> None:
    done = cli(
        "run", "--endpoint", endpoint, "--runtime", "docker", "--image", "python:3.11-slim",
        str(project), "--", "python3", "-c", "import sys; print(sys.version_info[:2])",
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (0, "(3, 11)\n"), done.stderr


def test_a_network_flag_gives_the_hosts_and_a_refusal_is_said(endpoint: str, project: Path) -> None:
    done = cli(
        "run", "--endpoint", endpoint, "--network", "pypi.org", "--network", "*.example.org",
        str(project), "--", "env | grep -c ^HTTPS_PROXY=; curl -sS http://example.com/ >/dev/null",
    )  # fmt: skip
    assert done.stdout == "1\n", done.stderr
    assert "agentfense run: the sandbox's network proxy refused: example.com:80" in done.stderr, (
        done.stderr
    )
