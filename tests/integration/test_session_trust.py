"""A session command's result is what happened: a stopped command stops whole, and nothing a
command leaves behind reads or answers a later command (real server, real bwrap)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import anyio
import pytest

from agentfense import AsyncSandbox, CommandTimeoutError, SessionStatus

pytestmark = pytest.mark.anyio


async def test_a_timed_out_command_stops_with_the_rest_of_its_line(
    endpoint: str, project: Path
) -> None:
    async with (
        await AsyncSandbox.from_local(project, endpoint=endpoint) as sandbox,
        sandbox.session() as session,
    ):
        await session.exec("cd /tmp && kept=yes")
        with pytest.raises(CommandTimeoutError, match="rest of its command line was skipped"):
            await session.exec("sleep 1.5; touch /tmp/flag", timeout=0.3)
        with pytest.raises(CommandTimeoutError):
            await session.exec(
                "f() { sleep 1.5; echo f >> /tmp/log; }; for i in 1 2; do f; done; "
                "echo top >> /tmp/log",
                timeout=0.3,
            )
        await anyio.sleep(2)
        result = await session.exec("pwd; echo $kept; ls /tmp/flag /tmp/log 2>&1 | wc -l")
        assert result.stdout == "/tmp\nyes\n2\n"  # two "No such file" lines
        assert (await session.refresh()).status is SessionStatus.ACTIVE


async def test_a_cancelled_command_stops_with_the_rest_of_its_line(
    endpoint: str, project: Path
) -> None:
    async with (
        await AsyncSandbox.from_local(project, endpoint=endpoint) as sandbox,
        sandbox.session() as session,
    ):
        await session.exec("mkdir -p /tmp/build && cd /tmp")
        with anyio.move_on_after(0.5) as scope:
            await session.exec("sleep 100; rm -rf /tmp/build")
        assert scope.cancelled_caught
        await anyio.sleep(0.5)
        assert (await session.exec("test -d /tmp/build && pwd")).stdout == "/tmp\n"


async def test_a_command_is_not_handed_the_token_that_ends_it(endpoint: str, project: Path) -> None:
    async with (
        await AsyncSandbox.from_local(project, endpoint=endpoint) as sandbox,
        sandbox.session() as session,
    ):
        result = await session.exec('echo "[$1][$2][$3][$#]"')
        assert result.stdout == "[][][][0]\n"


_THIEF = r"""
import errno, json, os, sys, time
shell, out = int(sys.argv[1]), sys.argv[2]
seen, stolen = {}, b""
deadline = time.monotonic() + 3
while time.monotonic() < deadline:
    for fd in (0, 1, 2, 8, 9, 255):
        try:
            got = os.open(f"/proc/{shell}/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            seen[fd] = errno.errorcode[exc.errno]
            continue
        seen[fd] = "opened"
        try:
            stolen += os.read(got, 4096)
        except OSError:
            pass
        os.close(got)
    for name in ("mem", "environ"):
        try:
            open(f"/proc/{shell}/{name}", "rb").close()
            seen[name] = "opened"
        except OSError as exc:
            seen[name] = errno.errorcode[exc.errno]
    time.sleep(0.01)
with open(out, "w") as f:
    json.dump({"seen": seen, "stolen": stolen.decode(errors="replace")}, f)
"""


async def test_what_a_command_leaves_behind_cannot_read_or_answer_later_commands(
    endpoint: str, project: Path
) -> None:
    async with (
        await AsyncSandbox.from_local(project, endpoint=endpoint) as sandbox,
        sandbox.session() as session,
    ):
        thief = base64.b64encode(_THIEF.encode()).decode()
        await sandbox.run(f"echo {thief} | base64 -d > /tmp/thief.py")
        # A process, and a pure-shell subshell (a fork of the shell itself), left running.
        await session.exec(
            "python3 /tmp/thief.py $$ /tmp/thief.json >/dev/null 2>&1 & "
            "( for i in $(seq 40); do for fd in 0 3 4 5 6 7 8 9 10 11 12 13 255; do "
            "read -r -t 0.02 -u $fd line 2>/dev/null && printf '%s\\n' \"$line\" >> /tmp/stolen; "
            "done; done ) &"
        )
        for n in range(20):
            result = await session.exec(f"echo orchestrator-$(({n}*7))")
            assert (result.stdout, result.exit_code) == (f"orchestrator-{n * 7}\n", 0)
            await anyio.sleep(0.1)
        await anyio.sleep(2)
        report = json.loads((await sandbox.run("cat /tmp/thief.json")).stdout)
        stolen = (await sandbox.run("cat /tmp/stolen 2>/dev/null; true")).stdout
    assert set(report["seen"].values()) == {"EACCES"}, report
    assert "orchestrator" not in report["stolen"] + stolen


async def test_a_shell_stopped_by_a_leftover_cannot_hang_the_session(
    endpoint: str, project: Path
) -> None:
    async with await AsyncSandbox.from_local(project, endpoint=endpoint) as sandbox:
        session = await sandbox.session()
        await session.exec("( sleep 0.2; kill -STOP $$ ) &")
        await anyio.sleep(0.5)
        # Woken by the stop, the shell runs the command whole: said so, and closed.
        with pytest.raises(CommandTimeoutError, match=r"ran to its end \(exit 0\)"):
            await session.exec("echo ran", timeout=1)
        assert (await session.refresh()).status is SessionStatus.CLOSED
        async with sandbox.session() as fresh:
            assert (await fresh.exec("echo again")).stdout == "again\n"


async def test_a_function_named_like_the_scripts_bottom_frame_is_stopped_too(
    endpoint: str, project: Path
) -> None:
    async with (
        await AsyncSandbox.from_local(project, endpoint=endpoint) as sandbox,
        sandbox.session() as session,
    ):
        with pytest.raises(CommandTimeoutError, match="rest of its command line was skipped"):
            await session.exec(
                "main() { sleep 1.5; echo ran >> /tmp/ran; }; main; echo tail >> /tmp/ran",
                timeout=0.3,
            )
        await anyio.sleep(1.7)
        assert (await session.exec("cat /tmp/ran 2>/dev/null; echo end")).stdout == "end\n"


async def test_a_command_that_takes_the_interrupt_for_itself_closes_the_session(
    endpoint: str, project: Path
) -> None:
    async with await AsyncSandbox.from_local(project, endpoint=endpoint) as sandbox:
        session = await sandbox.session()
        with pytest.raises(CommandTimeoutError, match="did not stop when interrupted"):
            await session.exec("trap 'echo caught' INT; sleep 1.5; echo after", timeout=0.3)
        assert (await session.refresh()).status is SessionStatus.CLOSED


async def test_a_sigint_from_inside_the_sandbox_stops_nothing(endpoint: str, project: Path) -> None:
    async with (
        await AsyncSandbox.from_local(project, endpoint=endpoint) as sandbox,
        sandbox.session() as session,
    ):
        await session.exec("( for i in $(seq 30); do kill -INT $$; sleep 0.05; done ) &")
        result = await session.exec("sleep 1; echo should-print; echo second")
        assert (result.stdout, result.exit_code) == ("should-print\nsecond\n", 0)
        assert (await session.exec("echo next")).stdout == "next\n"
