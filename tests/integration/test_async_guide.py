"""The user's async guide, pattern by pattern: as written under asyncio, idiomatic under trio.

The guide (``shared/000_ac6ad28b5b3553bd.txt``) is part of the contract. Each of its samples is
copied verbatim into ``_guide_samples.py`` and run here under asyncio as written: in the test's
own process, in a fresh directory holding the projects it names (``./project``,
``./project-0``.., ``./my-project``, ``./monorepo``, ``./p-0``..), against a real server on the
default endpoint (``localhost:9000``), with the imports of the guide's first samples. A sample
with a top-level ``await`` runs as asyncio's REPL runs it. The few changes a sample needs are
substitutions made below in plain sight, each checked to apply exactly once:

- ``# DOCKER:`` a sample that asks for runtime=DOCKER runs as written on Docker, and once more
  swapped to bwrap, whose sandboxes run the host's Python (externally managed, PEP 668; no
  ``python``);
- placeholder ids (``cb_xyz123``, ``sb_abc123``) become real ones; there are fewer sandboxes
  (10, not 100) and shorter sleeps;
- ``# VIEW-ONLY:`` the guide's default preset is ``view-only`` (the contract's default too): a
  sandbox sees the project's files but cannot read them, so ``pytest`` or ``make`` as written
  fail. Each such sample runs as written (the failure is asserted), and once more with a preset
  that lets the tools read, where the pattern has something to show.

Then each pattern in its idiomatic trio form (nurseries, ``move_on_after``, ``CapacityLimiter``,
``agentfense.fanout``), with assertions on what it did: outputs, exit codes, order, the remote
commands killed by a cancellation, exceptions kept in place, bounds on what ran at once
(counted inside the sandboxes, never by timing the test). Every test leaves the server as it
found it: no sandbox, no codebase, also where asyncio cancels the guide's tasks natively
(``asyncio.run`` at its end, ``wait_for``) while they clean up.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import os
import re
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio

from agentfense import (
    AsyncSandbox,
    AsyncSandboxClient,
    CommandExecutionError,
    CommandTimeoutError,
    ExecResult,
    OutputStream,
    RuntimeType,
    Sandbox,
    SandboxClient,
    SandboxNotFoundError,
    SessionClosedError,
)
from agentfense.fanout import gather, open_sandboxes, read_many, run_many
from agentfense.testing import ServerProcess
from agentfense.utils import walk_directory

from . import _guide_samples as guide
from ._procs import host_pids_running, until_gone

PORT = 9000
trio_test = pytest.mark.anyio

# -- changes to the guide's samples -----------------------------------------------------------

# DOCKER: the samples on Docker also run swapped to bwrap (both runtimes must do the same);
# a bwrap sandbox runs the host's Python, which is Debian's (pip refuses to install into it,
# PEP 668) and has no `python` command; the guide's python:3.11-slim image has neither problem.
TO_BWRAP = ("runtime=RuntimeType.DOCKER,", "runtime=RuntimeType.BWRAP,")
PIP_ON_THE_HOST = ("pip install -r", "pip install --break-system-packages -r")
PYTHON_ON_THE_HOST = ("python setup.py", "python3 setup.py")
FEWER = ("range(100)", "range(10)")
# The samples that name runtime=DOCKER run as written on Docker (the server's dockerd,
# $DOCKER_HOST, with the python:3.11-slim that scripts/docker-images.sh builds) and, swapped,
# on bwrap.
by_runtime = pytest.mark.parametrize("runtime", ["docker", "bwrap"])


def changed(source: str, *changes: tuple[str, str]) -> str:
    """``source`` with each ``(old, new)`` applied; each ``old`` must occur exactly once."""
    for old, new in changes:
        assert source.count(old) == 1, f"{old!r} is not in the sample exactly once"
        source = source.replace(old, new)
    return source


def with_preset(call: str, preset: str) -> tuple[str, str]:
    """# VIEW-ONLY: give ``from_local(...)`` (``call``, as the sample spells it) a preset."""
    return call, f'{call[:-1]}, preset="{preset}")'


# -- running a sample -------------------------------------------------------------------------

PRELUDE = "import asyncio\nfrom agentfense import AsyncSandbox, AsyncSandboxClient, RuntimeType\n"

Setup = Callable[[dict[str, Any]], AbstractAsyncContextManager[None]]


def run_guide(
    source: str, *, setup: Setup | None = None, namespace: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Run a sample under asyncio as written; its global names afterwards.

    A top-level ``await`` is allowed (asyncio's REPL runs such a fragment so). ``setup(names)``
    is entered around the sample in the same event loop: it puts there what the fragment
    assumes (a running ``sandbox``, say) and checks what must hold before the loop ends.
    """
    if namespace is None:
        namespace = {"__name__": "__main__"}
        exec(PRELUDE, namespace)
    code = compile(source, "<guide>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    awaits = bool(code.co_flags & inspect.CO_COROUTINE)
    if setup is None and not awaits:
        exec(code, namespace)
        return namespace

    async def main() -> None:
        async with setup(namespace) if setup else _nothing():
            outcome = eval(code, namespace)
            if awaits:
                await outcome

    asyncio.run(main())
    return namespace


@asynccontextmanager
async def _nothing() -> AsyncIterator[None]:
    yield


def lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().out.splitlines()


# -- the projects the guide names -------------------------------------------------------------

CALC = '''"""A tiny module."""


def add(left: int, right: int) -> int:
    """Return the sum."""
    return left + right
'''
TEST_CALC = '''"""Tests of calc."""
from calc import add


def test_add() -> None:
    """Two and three."""
    assert add(2, 3) == 5
'''
FAILING_TEST = '''"""A failing test."""


def test_fails() -> None:
    """Never true."""
    assert 1 == 2
'''
REPORTS = """#!/bin/sh
mkdir -p /workspace/output
for i in 1 2 3; do
  echo "report $i" > /workspace/output/report$i.txt
done
"""
KIT = {
    "calc.py": CALC,
    "test_calc.py": TEST_CALC,
    # The sandbox may not write the workspace: coverage keeps its data off it.
    ".coveragerc": "[run]\nsource = .\ndata_file = /tmp/.coverage\n",
    ".pylintrc": "[MAIN]\nrecursive = yes\n",
    "Makefile": "test:\n\tpython3 -m pytest -q\n",
    "package.json": '{"name": "demo", "version": "1.0.0", "scripts": {"test": "echo js ok"}}\n',
    "generate-reports.sh": REPORTS,
    "requirements.txt": "pytest\npytest-cov\nflake8\n",
}
SETUP_PY = '''"""Build script."""
from setuptools import setup

setup(name="calc", version="0.1", py_modules=["calc"])
'''


def project(path: str, **files: str) -> str:
    """A small Python project at ``path`` that passes pytest, flake8, pylint, mypy, make test
    and npm test; ``files`` adds or replaces files (``test_calc_py=...``: dots as ``_``)."""
    root = Path(path)
    root.mkdir(parents=True)
    contents = dict(KIT)
    for name, content in files.items():
        contents[name.replace("_py", ".py").replace("_sh", ".sh")] = content
    for name, content in contents.items():
        (root / name).write_text(content)
    (root / "generate-reports.sh").chmod(0o755)
    return path


def projects(pattern: str, count: int, **files: str) -> list[str]:
    return [project(pattern.format(i), **files) for i in range(count)]


def sleeping_test(marker: str) -> str:
    """A test that runs ``sleep <marker>`` (its command line finds it in the host's /proc)."""
    return f'import subprocess\n\n\ndef test_slow():\n    subprocess.run(["sleep", "{marker}"])\n'


def new_marker() -> str:
    """A sleep duration (about 300 s) no other process has."""
    return f"300.{uuid.uuid4().int % 10**9}"


# -- observing ---------------------------------------------------------------------------------


@contextmanager
def peak_of(probe: Callable[[], int]) -> Iterator[list[int]]:
    """Poll ``probe()`` in a thread while the block runs; ``[highest value seen]``."""
    peak = [0]
    failures: list[BaseException] = []
    stop = threading.Event()

    def watch() -> None:
        try:
            while not stop.is_set():
                peak[0] = max(peak[0], probe())
                stop.wait(0.01)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()
    if failures:
        raise failures[0]


def connections_to(port: int) -> int:
    """How many of this process's TCP sockets are connected to ``port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[2].endswith(f":{port:04X}") and fields[3] == "01":  # ESTABLISHED
                inodes.add(fields[9])
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            count += 1
    return count


async def until_closed(port: int, before: int) -> bool:
    """Whether this process is back to ``before`` connections to ``port`` within a second."""
    with anyio.move_on_after(1):
        while True:
            if connections_to(port) <= before:
                return True
            await anyio.sleep(0.01)
    return False


async def until_running(marker: str, count: int) -> None:
    """Wait until ``count`` host processes run with ``marker`` on their command line."""
    with anyio.fail_after(30):
        while True:
            if len(host_pids_running(marker)) >= count:
                return
            await anyio.sleep(0.02)


def peak_overlap(windows: list[tuple[float, float]]) -> int:
    """The most windows ``(start, end)`` open at one moment."""
    events = sorted([(start, 1) for start, _ in windows] + [(end, -1) for _, end in windows])
    open_now = peak = 0
    for _, step in events:
        open_now += step
        peak = max(peak, open_now)
    return peak


def together(name: str, count: int) -> str:
    """A command prefix that waits until ``count`` commands with it run in the sandbox at once
    (they meet in its /tmp): run one after another, the first would wait until its timeout."""
    return (
        f"touch /tmp/started-{name}; "
        f"while [ $(ls /tmp/started-* | wc -l) -lt {count} ]; do sleep 0.02; done; "
    )


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


class ServerState:
    """What the server holds beyond what it held when the test began."""

    def __init__(self) -> None:
        with SandboxClient() as client:
            self._sandboxes = {s.id for s in client.list_sandboxes()}
            self._codebases = {c.id for c in client.list_codebases()}

    def left_behind(self) -> list[str]:
        with SandboxClient() as client:
            return [s.id for s in client.list_sandboxes() if s.id not in self._sandboxes] + [
                c.id for c in client.list_codebases() if c.id not in self._codebases
            ]


@pytest.fixture(autouse=True)
def state(
    default_server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ServerState]:
    """Each test runs in a fresh directory beside a server on the default endpoint, and leaves
    behind no sandbox and no codebase."""
    monkeypatch.chdir(tmp_path)
    state = ServerState()
    yield state
    assert state.left_behind() == []


# == Creating async sandboxes ==================================================================


def test_from_local_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    project("project")
    run_guide(guide.GUIDE_FROM_LOCAL)
    # VIEW-ONLY: pytest lists the test file but may not read it.
    assert "PermissionError: [Errno 13] Permission denied" in capsys.readouterr().out


@trio_test
async def test_from_local_trio() -> None:
    project("project")
    async with await AsyncSandbox.from_local("./project", preset="read-only") as sandbox:
        result = await sandbox.run("pytest")
    assert result.exit_code == 0
    assert "1 passed" in result.stdout


def test_from_codebase_as_written() -> None:
    project("project")
    with SandboxClient() as client:
        codebase = client.create_codebase(name="project", owner_id="team")
        for rel_path, content in walk_directory("project"):
            client.upload_file(codebase.id, rel_path, content)
        names = run_guide(changed(guide.GUIDE_FROM_CODEBASE, ("cb_xyz123", codebase.id)))
        assert names["result"].exit_code == 0
        assert "1 passed" in names["result"].stdout
        assert client.list_sandboxes(codebase.id) == []  # the sandbox is gone, its codebase kept
        client.delete_codebase(codebase.id)


@trio_test
async def test_from_codebase_trio() -> None:
    project("project")
    async with AsyncSandboxClient() as client:
        codebase = await client.create_codebase(name="project", owner_id="team")
        for rel_path, content in walk_directory("project"):
            await client.upload_file(codebase.id, rel_path, content)
        async with trio.open_nursery() as nursery:  # two sandboxes on it, at once
            results: list[ExecResult] = []

            async def make_test() -> None:
                async with await AsyncSandbox.from_codebase(
                    codebase.id, preset="agent-safe"
                ) as sandbox:
                    results.append(await sandbox.run("make test"))

            nursery.start_soon(make_test)
            nursery.start_soon(make_test)
        assert [r.exit_code for r in results] == [0, 0]
        assert await client.list_sandboxes(codebase.id) == []
        await client.delete_codebase(codebase.id)


def test_connect_as_written() -> None:
    project("project")
    made = Sandbox.from_local("./project")
    made.close()  # let go of it without destroying it
    names = run_guide(changed(guide.GUIDE_CONNECT, ("sb_abc123", made.id)))
    assert names["result"].stdout == "sandbox\n"
    with SandboxClient() as client:
        with pytest.raises(SandboxNotFoundError):
            client.get_sandbox(made.id)
        client.delete_codebase(made.codebase_id)


@trio_test
async def test_connect_trio() -> None:
    project("project")
    made = await AsyncSandbox.from_local("./project")
    await made.close()
    async with await AsyncSandbox.connect(made.id) as sandbox:  # kept on leaving
        assert (await sandbox.run("whoami")).stdout == "sandbox\n"
    sandbox = await AsyncSandbox.connect(made.id)
    await sandbox.destroy()
    async with AsyncSandboxClient() as client:
        with pytest.raises(SandboxNotFoundError):
            await client.get_sandbox(made.id)
        await client.delete_codebase(made.codebase_id)


# == Pattern 1: run multiple sandboxes in parallel =============================================


def test_parallel_sandboxes_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    projects("./project-{}", 10)
    run_guide(guide.GUIDE_PATTERN_1)
    # VIEW-ONLY: pytest may not read the tests, so each fails, and the order is the input's.
    assert lines(capsys) == [f"✗ FAIL ./project-{i}" for i in range(10)]
    read_only = with_preset("from_local(project_path)", "read-only")
    run_guide(changed(guide.GUIDE_PATTERN_1, read_only, ("range(10)", "range(5)")))
    assert lines(capsys) == [f"✓ PASS ./project-{i}" for i in range(5)]


@trio_test
async def test_parallel_sandboxes_trio() -> None:
    paths = projects("./project-{}", 10)
    paths[3] = project("./project-failing", test_calc_py=FAILING_TEST)
    passed: dict[str, bool] = {}

    async def test_project(path: str) -> None:
        async with await AsyncSandbox.from_local(path, preset="read-only") as sandbox:
            result = await sandbox.run("pytest", timeout=300)
            passed[path] = result.exit_code == 0

    async with trio.open_nursery() as nursery:
        for path in paths:
            nursery.start_soon(test_project, path)
    assert passed == {path: path != "./project-failing" for path in paths}


# == Pattern 2: fan-out with different commands ================================================


def test_fan_out_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    project("my-project")
    names = run_guide(guide.GUIDE_PATTERN_2)
    results = names["results"]
    assert list(results) == ["pylint", "mypy", "coverage"]
    # VIEW-ONLY: the tools list the files but may not read them (pylint says so on stderr).
    assert "1 error in" in results["coverage"]
    assert capsys.readouterr().out == results["pylint"] + "\n"


@trio_test
async def test_fan_out_trio() -> None:
    project("my-project")
    tools = {"pylint": "pylint .", "mypy": "mypy .", "coverage": "pytest --cov"}
    results: dict[str, ExecResult] = {}

    async with await AsyncSandbox.from_local("./my-project", preset="read-only") as sandbox:

        async def check(tool: str, command: str) -> None:
            results[tool] = await sandbox.run(together(tool, 3) + command, timeout=120)

        async with trio.open_nursery() as nursery:
            for tool, command in tools.items():
                nursery.start_soon(check, tool, command)
        # The same with the fan-out helper: results in the order of the commands.
        again = await run_many(sandbox, ["mypy calc.py", "pytest -q", "false"], limit=2)

    assert {tool: r.exit_code for tool, r in results.items()} == dict.fromkeys(tools, 0)
    assert "Success: no issues found" in results["mypy"].stdout
    assert "1 passed" in results["coverage"].stdout
    assert re.search(r"calc\.py +2 +0 +100%", results["coverage"].stdout)
    assert [r.exit_code for r in again] == [0, 0, 1]
    assert "1 passed" in again[1].stdout


# == Pattern 3: concurrent file operations =====================================================


def test_concurrent_downloads_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    project("project")
    source = changed(
        guide.GUIDE_PATTERN_3,
        # VIEW-ONLY: the script may not be read nor its reports written under view-only.
        with_preset('AsyncSandbox.from_local("./project")', "agent-safe"),
    )
    run_guide(source)
    assert lines(capsys) == [f"/workspace/output/report{i}.txt: 9 bytes" for i in (1, 2, 3)]


def test_an_uploaded_script_keeps_its_executable_bit() -> None:
    project("project")
    with Sandbox.from_local("./project", preset="agent-safe") as sandbox:
        result = sandbox.run("./generate-reports.sh")
    assert (result.exit_code, result.stderr) == (0, "")


@trio_test
async def test_concurrent_downloads_trio() -> None:
    project("project")
    paths = [f"/workspace/output/report{i}.txt" for i in (1, 2, 3)]
    contents: dict[str, str] = {}
    async with await AsyncSandbox.from_local("./project", preset="agent-safe") as sandbox:
        await sandbox.run("./generate-reports.sh", raise_on_error=True)

        async def download_one(path: str) -> None:
            contents[path] = await sandbox.read_file(path)

        async with trio.open_nursery() as nursery:
            for path in paths:
                nursery.start_soon(download_one, path)
        helper = await read_many(sandbox, reversed(paths))
    assert contents == {path: f"report {path[-5]}\n" for path in paths}
    assert helper == contents
    assert list(helper) == list(reversed(paths))  # in the order asked


# == Pattern 4: pipeline with dependencies =====================================================


@by_runtime
def test_pipeline_as_written(capsys: pytest.CaptureFixture[str], runtime: str) -> None:
    project("my-package", setup_py=SETUP_PY)
    project("project-A", setup_py=SETUP_PY)
    project("project-B", setup_py=SETUP_PY, calc_py=CALC + "unused = 1;\n")  # flake8 E703
    project("project-C", setup_py=SETUP_PY)
    source = guide.GUIDE_PATTERN_4
    if runtime == "bwrap":
        source = changed(source, TO_BWRAP, PIP_ON_THE_HOST, PYTHON_ON_THE_HOST)  # DOCKER: above
    names = run_guide(source)
    assert names["success"] is True
    assert lines(capsys) == []
    names = run_guide(guide.GUIDE_PATTERN_4_MANY, namespace=names)
    assert names["results"] == [True, False, True]
    assert lines(capsys) == ["Linting failed"]


@trio_test
async def test_pipeline_trio() -> None:
    paths = [project(f"project-{x}", setup_py=SETUP_PY) for x in "AC"]
    paths.insert(1, project("project-B", setup_py=SETUP_PY, calc_py=CALC + "unused = 1;\n"))
    stages = [
        "pip install -r requirements.txt",
        "flake8 .",
        "pytest --cov",
        "python setup.py bdist_wheel",
    ]

    async def ci_pipeline(path: str) -> list[str]:
        """The stages one after another in one session; the wheel it built."""
        async with (
            await AsyncSandbox.from_local(
                path,
                preset="development",
                runtime=RuntimeType.DOCKER,
                image="python:3.11-slim",
            ) as sandbox,
            sandbox.session() as session,
        ):
            for stage in stages:
                await session.exec(stage, timeout=300, raise_on_error=True)
            return [f.path for f in await sandbox.list_files("/workspace/dist")]

    outcomes: list[list[str] | Exception] = [[] for _ in paths]

    async def run(index: int) -> None:
        try:
            outcomes[index] = await ci_pipeline(paths[index])
        except CommandExecutionError as exc:
            outcomes[index] = exc

    async with trio.open_nursery() as nursery:  # three pipelines at once
        for index in range(len(paths)):
            nursery.start_soon(run, index)
    wheel = ["/workspace/dist/calc-0.1-py3-none-any.whl"]
    assert [outcomes[0], outcomes[2]] == [wheel, wheel]
    failed = outcomes[1]
    assert isinstance(failed, CommandExecutionError)
    assert failed.exit_code == 1
    assert "calc.py:7:11: E703" in failed.stdout


# == Pattern 5: timeout with cancellation ======================================================


def test_global_timeout_as_written(capsys: pytest.CaptureFixture[str], state: ServerState) -> None:
    projects("./project-{}", 5)
    run_guide(guide.GUIDE_PATTERN_5)
    # VIEW-ONLY: every pytest fails; the first failure is reported.
    [printed] = lines(capsys)
    assert re.fullmatch(r"Test failure: Tests failed in \./project-[0-4]", printed)
    assert state.left_behind() == []  # the guide's own cleanup, cancelled or not, is whole
    read_only = with_preset("from_local(project_path)", "read-only")
    run_guide(changed(guide.GUIDE_PATTERN_5, read_only))
    passed = [f"./project-{i}: PASS" for i in range(5)]
    assert lines(capsys) == [f"All tests passed: {passed}"]


def test_global_timeout_cancels_everything_as_written(
    capsys: pytest.CaptureFixture[str], state: ServerState
) -> None:
    marker = new_marker()
    projects("./project-{}", 5, test_calc_py=sleeping_test(marker))
    read_only = with_preset("from_local(project_path)", "read-only")
    source = changed(guide.GUIDE_PATTERN_5, read_only, ("timeout=300", "timeout=4"))
    with peak_of(lambda: len(host_pids_running(f"sleep\0{marker}"))) as running:
        run_guide(source)
    assert running[0] > 0  # the remote tests were running when the timeout came...
    assert anyio.run(until_gone, f"sleep\0{marker}")  # ...and are killed
    assert lines(capsys) == ["Global timeout exceeded!"]


@trio_test
async def test_global_timeout_trio() -> None:
    marker = new_marker()
    paths = projects("./project-{}", 5, test_calc_py=sleeping_test(marker))
    results: list[str] = []

    async def test_with_timeout(path: str) -> None:
        async with await AsyncSandbox.from_local(path, preset="read-only") as sandbox:
            await sandbox.run("pytest", timeout=60, raise_on_error=True)
            results.append(f"{path}: PASS")

    with trio.move_on_after(300) as scope:
        async with trio.open_nursery() as nursery:
            for path in paths:
                nursery.start_soon(test_with_timeout, path)
            # The global deadline passes once every test runs remotely.
            await until_running(f"sleep\0{marker}", 5)
            scope.deadline = trio.current_time()
    assert scope.cancelled_caught
    assert results == []
    assert await until_gone(f"sleep\0{marker}")


@trio_test
async def test_one_failure_cancels_the_others_trio() -> None:
    marker = new_marker()
    paths = projects("./project-{}", 4, test_calc_py=sleeping_test(marker))
    paths.append(project("./project-failing", test_calc_py=FAILING_TEST))

    async def test_with_timeout(path: str) -> None:
        async with await AsyncSandbox.from_local(path, preset="read-only") as sandbox:
            if path.endswith("failing"):  # fail only once the others run
                await until_running(f"sleep\0{marker}", 4)
            await sandbox.run("pytest", timeout=60, raise_on_error=True)

    failures: list[CommandExecutionError] = []
    with trio.fail_after(60):
        try:
            async with trio.open_nursery() as nursery:
                for path in paths:
                    nursery.start_soon(test_with_timeout, path)
        except* CommandExecutionError as group:
            failures.extend(group.exceptions)  # type: ignore[arg-type]
    assert [f.exit_code for f in failures] == [1]
    assert await until_gone(f"sleep\0{marker}")


# == Async sessions ============================================================================


def test_creating_sessions_as_written() -> None:
    project("project")
    names = run_guide(guide.GUIDE_SESSIONS)
    # VIEW-ONLY: npm may not read package.json.
    assert names["result"].exit_code != 0
    assert "package.json" in names["result"].stderr
    # npm install writes the lock file: the development preset lets it.
    source = changed(guide.GUIDE_SESSIONS, with_preset('from_local("./project")', "development"))
    names = run_guide(source)
    assert names["result"].exit_code == 0
    assert names["result"].stdout.endswith("js ok\n")


@trio_test
async def test_creating_sessions_trio() -> None:
    project("project")
    async with (
        await AsyncSandbox.from_local("./project", preset="development") as sandbox,
        sandbox.session() as session,
    ):
        await session.exec("cd /tmp && export STAGE=test")
        await session.exec("cd /workspace")
        await session.exec("npm install", raise_on_error=True)
        result = await session.exec('npm test && echo "$STAGE in $PWD"')
        assert result.stdout.endswith("js ok\ntest in /workspace\n")
        with pytest.raises(CommandTimeoutError):
            await session.exec("sleep 30", timeout=0.5)
        assert (await session.exec("echo $STAGE")).stdout == "test\n"  # the session stays
        chunks = []
        async with session.exec_stream("echo out; echo err >&2; (exit 3)") as stream:
            async for chunk in stream:
                chunks.append((chunk.stream, chunk.data))
        assert chunks == [(OutputStream.STDOUT, b"out\n"), (OutputStream.STDERR, b"err\n")]
        assert stream.exit_code == 3
        assert (await session.exec("exit 4")).exit_code == 4
        with pytest.raises(SessionClosedError):
            await session.exec("true")


def test_parallel_sessions_as_written() -> None:
    project("monorepo/backend")
    project("monorepo/frontend")
    # It runs and cleans up; what it runs shows nothing (VIEW-ONLY, and `pytest backend/` from
    # /workspace/backend looks for backend/backend/): the trio form shows the sessions at work.
    run_guide(guide.GUIDE_PARALLEL_SESSIONS)


@trio_test
async def test_parallel_sessions_trio() -> None:
    project("monorepo/backend")
    project("monorepo/frontend")
    results: dict[str, ExecResult] = {}

    async def workflow(name: str, command: str) -> None:
        async with sandbox.session() as session:
            await session.exec(f"cd /workspace/{name}")
            results[name] = await session.exec(together(name, 2) + command, timeout=60)
            results[f"{name} pwd"] = await session.exec("pwd")

    async with (
        await AsyncSandbox.from_local("./monorepo", preset="read-only") as sandbox,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(workflow, "backend", "pytest")
        nursery.start_soon(workflow, "frontend", "npm test")
    assert results["backend"].exit_code == 0
    assert "1 passed" in results["backend"].stdout
    assert results["frontend"].stdout.endswith("js ok\n")
    assert results["backend pwd"].stdout == "/workspace/backend\n"
    assert results["frontend pwd"].stdout == "/workspace/frontend\n"


# == AsyncSandboxClient (low-level): one codebase, several sandboxes ===========================


@by_runtime
def test_shared_codebase_as_written(runtime: str) -> None:
    project("project")
    source = guide.GUIDE_LOW_LEVEL
    if runtime == "bwrap":
        source = changed(source, TO_BWRAP)  # DOCKER: see above
    names = run_guide(source)
    pylint, coverage = names["results"]
    assert pylint.exit_code == 0
    assert coverage.exit_code == 0
    assert "1 passed" in coverage.stdout


@trio_test
async def test_shared_codebase_trio() -> None:
    project("project")
    async with AsyncSandboxClient(endpoint="localhost:9000") as client:
        codebase = await client.create_codebase(name="shared", owner_id="team")
        for rel_path, content in walk_directory("./project"):
            await client.upload_file(codebase.id, rel_path, content)
        reader = await client.create_sandbox(
            codebase.id, permissions=[{"pattern": "**/*", "permission": "read"}]
        )
        writer = await client.create_sandbox(
            codebase.id,
            permissions=[{"pattern": "**/*", "permission": "write"}],
            runtime=RuntimeType.DOCKER,
            image="python:3.11-slim",
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.start_sandbox, reader.id)
            nursery.start_soon(client.start_sandbox, writer.id)
        results = await gather(
            client.exec(reader.id, command="pylint . && touch mine"),
            client.exec(writer.id, command="pytest --cov > tests.log"),
        )
        log = await client.download_file(codebase.id, "tests.log")  # the writer's commit
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.destroy_sandbox, reader.id)
            nursery.start_soon(client.destroy_sandbox, writer.id)
        await client.delete_codebase(codebase.id)
    # pylint passed; the reader may not write (its read-everything policy is a read-only bind)
    assert "cannot touch 'mine': Read-only file system" in results[0].stderr
    assert results[1].exit_code == 0
    assert b"1 passed" in log


# == Performance comparison and scalability ====================================================


def test_benchmarks_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    project("project")
    names = run_guide(
        changed(guide.GUIDE_BENCH_SYNC, ("range(10)", "range(3)"), ("sleep 10", "sleep 0.1"))
    )
    assert [r.exit_code for r in names["results"]] == [0, 0, 0]
    run_guide(changed(guide.GUIDE_BENCH_ASYNC, ("sleep 10", "sleep 0.5")))
    times = lines(capsys)
    assert len(times) == 2
    assert all(re.fullmatch(r"Time: \d+\.\ds", line) for line in times)


def test_scalability_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    projects("./project-{}", 10)
    run_guide(changed(guide.GUIDE_SCALABILITY, FEWER))
    assert lines(capsys) == ["Completed 10 sandboxes"]


@trio_test
async def test_scalability_trio() -> None:
    paths = projects("./project-{}", 10)
    async with open_sandboxes(paths, limit=10) as sandboxes:
        async with trio.open_nursery() as nursery:
            outputs: dict[int, str] = {}

            async def run_one(i: int) -> None:
                outputs[i] = (await sandboxes[i].run("echo 'done'")).stdout

            for i in range(len(sandboxes)):
                nursery.start_soon(run_one, i)
        assert len({sandbox.id for sandbox in sandboxes}) == 10
    assert outputs == dict.fromkeys(range(10), "done\n")


# == Best practices ============================================================================


def sandbox_in(path: str, preset: str, **more: Any) -> Setup:
    """A setup that opens a sandbox on ``path`` as the fragment's ``sandbox``."""

    @asynccontextmanager
    async def setup(names: dict[str, Any]) -> AsyncIterator[None]:
        async with await AsyncSandbox.from_local(path, preset=preset) as sandbox:
            names.update(sandbox=sandbox, **more)
            yield

    return setup


def test_gather_as_written() -> None:
    project("project")
    commands = ["echo one", "python3 calc.py && echo two", "exit 3"]
    names = run_guide(
        guide.GUIDE_GATHER, setup=sandbox_in("./project", "read-only", commands=commands)
    )
    assert [(r.stdout, r.exit_code) for r in names["results"]] == [
        ("one\n", 0),
        ("two\n", 0),
        ("", 3),
    ]


@trio_test
async def test_gather_trio() -> None:
    project("project")
    commands = ["echo one", "python3 calc.py && echo two", "exit 3"]
    async with await AsyncSandbox.from_local("./project", preset="read-only") as sandbox:
        results = await run_many(sandbox, commands)
        also = await gather(*(sandbox.run(command) for command in commands))
    expected = [("one\n", 0), ("two\n", 0), ("", 3)]
    assert [(r.stdout, r.exit_code) for r in results] == expected
    assert [(r.stdout, r.exit_code) for r in also] == expected


async def run_test(project: str) -> ExecResult:
    """The guide's ``run_test``: a project's tests, a failure as an exception."""
    async with await AsyncSandbox.from_local(project, preset="read-only") as sandbox:
        return await sandbox.run("pytest", raise_on_error=True)


def test_return_exceptions_as_written(
    capsys: pytest.CaptureFixture[str], state: ServerState
) -> None:
    paths = projects("./project-{}", 3)
    paths[1] = project("./project-failing", test_calc_py=FAILING_TEST)
    names = run_guide(
        guide.GUIDE_EXCEPTIONS_GOOD,
        setup=lambda names: _given(names, run_test=run_test, projects=paths),
    )
    assert isinstance(names["results"][1], CommandExecutionError)
    assert lines(capsys) == [
        "./project-0 succeeded",
        "./project-failing failed: command exited with 1: pytest",
        "./project-2 succeeded",
    ]
    tasks = [run_test(path) for path in paths]  # the bad way, with fresh tasks
    run_guide(guide.GUIDE_EXCEPTIONS_BAD, setup=lambda names: _given(names, tasks=tasks))
    assert lines(capsys) == ["Failed: command exited with 1: pytest"]


@asynccontextmanager
async def _given(names: dict[str, Any], **given: Any) -> AsyncIterator[None]:
    names.update(given)
    yield


@trio_test
async def test_return_exceptions_trio() -> None:
    paths = projects("./project-{}", 3)
    paths[1] = project("./project-failing", test_calc_py=FAILING_TEST)
    # In a nursery, each task keeps its own outcome...
    outcomes: list[ExecResult | Exception] = [Exception("not run")] * len(paths)

    async def run_one(index: int) -> None:
        try:
            outcomes[index] = await run_test(paths[index])
        except Exception as exc:
            outcomes[index] = exc

    async with trio.open_nursery() as nursery:
        for index in range(len(paths)):
            nursery.start_soon(run_one, index)
    # ...which the fan-out helper does for you.
    helper = await gather(*(run_test(path) for path in paths), return_exceptions=True)
    for results in (outcomes, helper):
        assert [type(r) for r in results] == [ExecResult, CommandExecutionError, ExecResult]
        failure = results[1]
        assert isinstance(failure, CommandExecutionError)
        assert "1 failed" in failure.stdout


def test_semaphore_as_written() -> None:
    projects("./p-{}", 10)
    with SandboxClient() as client, peak_of(lambda: len(client.list_sandboxes())) as alive:
        names = run_guide(changed(guide.GUIDE_SEMAPHORE, FEWER))
    assert 0 < alive[0] <= 5
    # VIEW-ONLY: make may not read the Makefile.
    assert [r.exit_code for r in names["results"]] == [2] * 10
    assert "make: Makefile: Permission denied" in names["results"][0].stderr


@trio_test
async def test_semaphore_trio() -> None:
    paths = projects("./p-{}", 10)
    limiter = trio.CapacityLimiter(5)
    windows: list[tuple[float, float]] = []

    async def run_one(path: str) -> None:
        async with limiter, await AsyncSandbox.from_local(path, preset="read-only") as sandbox:
            result = await sandbox.run("date +%s.%N; make test; date +%s.%N", raise_on_error=True)
        start, *_, end = result.stdout.splitlines()
        windows.append((float(start), float(end)))

    async with trio.open_nursery() as nursery:
        for path in paths:
            nursery.start_soon(run_one, path)
    assert len(windows) == 10
    # At most 5 at once, seen from the sandboxes' own clock (and more than one: concurrent).
    assert 1 < peak_overlap(windows) <= 5


def test_close_clients_as_written() -> None:
    source = changed(
        guide.GUIDE_CLOSE_CLIENTS,
        ("    # ... use client ...\n", "    used = await client.list_codebases()\n"),
        ("\n# ... use client ...\n", "\nused_too = await client.list_codebases()\n"),
    )
    before = connections_to(PORT)

    @asynccontextmanager
    async def closed_after(names: dict[str, Any]) -> AsyncIterator[None]:
        yield
        assert await until_closed(PORT, before)

    names = run_guide(source, setup=closed_after)
    assert isinstance(names["used"], list)
    assert isinstance(names["used_too"], list)


@trio_test
async def test_close_clients_trio() -> None:
    before = connections_to(PORT)
    async with AsyncSandboxClient(endpoint="localhost:9000") as client:
        await client.list_codebases()
        assert connections_to(PORT) == before + 1
    assert await until_closed(PORT, before)


# == Migration from sync =======================================================================


def test_migration_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    project("project")
    imports = guide.GUIDE_MIGRATION_IMPORTS
    run_guide(imports + guide.GUIDE_MIGRATION_SYNC + guide.GUIDE_ENTRY_SYNC)
    run_guide(imports + guide.GUIDE_MIGRATION_ASYNC + guide.GUIDE_ENTRY_ASYNC)
    assert lines(capsys) == ["False", "False"]  # VIEW-ONLY: pytest may not read the tests
