"""The sync API (``agentfense.sync``) against a real server: the async SDK through one portal."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest

from agentfense import (
    AsyncSandbox,
    AsyncSandboxClient,
    AsyncSessionWrapper,
    CommandExecutionError,
    CommandTimeoutError,
    OutputChunk,
    OutputStream,
    PermissionDeniedError,
    SandboxNotFoundError,
    SandboxStatus,
    SessionNotFoundError,
    SessionStatus,
)
from agentfense._transport._loop_thread import THREAD_NAME
from agentfense.client._stream import ExecStream as AsyncExecStream
from agentfense.sync import ExecStream, Sandbox, SandboxClient, SessionWrapper

# -- the sync classes mirror the async ones ---------------------------------------------------

PAIRS = [
    (AsyncSandbox, Sandbox),
    (AsyncSandboxClient, SandboxClient),
    (AsyncSessionWrapper, SessionWrapper),
    (AsyncExecStream, ExecStream),
]
SYNC_NAME = {
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "__aiter__": "__iter__",
    "__anext__": "__next__",
    "aclose": "close",
}
ASYNC_TO_SYNC_TYPE = {
    "AsyncSandboxClient": "SandboxClient",
    "AsyncSandbox": "Sandbox",
    "AsyncSessionWrapper": "SessionWrapper",
    "SessionOpener": "SessionWrapper",  # sync: sandbox.session() gives the session at once
}
# Plain attributes of the async instances, which the sync classes offer as properties.
INSTANCE_ATTRIBUTES = {
    AsyncSandboxClient: {"endpoint", "secure", "tls", "lacks_file_rpcs", "lacks_archive_upload"},
    AsyncExecStream: {"result"},
}
SYNC_DUNDERS = {"__enter__", "__exit__", "__iter__", "__next__"}


def _public(cls: type) -> set[str]:
    """The public names of ``cls``, with the (async) protocol methods it defines."""
    dunders = (SYNC_NAME.keys() | SYNC_DUNDERS) & set(dir(cls))
    return {n for n in dir(cls) if not n.startswith("_")} | dunders


def _as_sync(annotation: Any) -> Any:
    if not isinstance(annotation, str):
        return annotation
    return re.sub(
        r"\b(" + "|".join(ASYNC_TO_SYNC_TYPE) + r")\b",
        lambda m: ASYNC_TO_SYNC_TYPE[m.group(1)],
        annotation,
    )


def _shape(func: Any) -> list[tuple[str, Any, Any, Any]]:
    sig = inspect.signature(func)
    params = [(p.name, p.kind, p.default, _as_sync(p.annotation)) for p in sig.parameters.values()]
    return [*params, ("return", None, None, _as_sync(sig.return_annotation))]


def _kind(attr: Any) -> str:
    return type(attr).__name__ if isinstance(attr, property | classmethod | staticmethod) else "def"


@pytest.mark.parametrize(("async_cls", "sync_cls"), PAIRS, ids=lambda c: c.__name__)
def test_the_sync_classes_mirror_the_async_ones(async_cls: type, sync_cls: type) -> None:
    attributes = INSTANCE_ATTRIBUTES.get(async_cls, set())
    expected = {SYNC_NAME.get(n, n) for n in _public(async_cls)} | attributes
    assert _public(sync_cls) == expected
    for name in _public(async_cls):
        async_attr = inspect.getattr_static(async_cls, name)
        sync_attr = inspect.getattr_static(sync_cls, SYNC_NAME.get(name, name))
        assert _kind(sync_attr) == _kind(async_attr), name
        if isinstance(async_attr, property):
            assert _shape(sync_attr.fget) == _shape(async_attr.fget), name
        else:
            bound_async = getattr(async_cls, name)
            bound_sync = getattr(sync_cls, SYNC_NAME.get(name, name))
            assert _shape(bound_sync) == _shape(bound_async), name
    for name in attributes:
        assert isinstance(inspect.getattr_static(sync_cls, name), property), name


def test_the_instance_attributes_are_those_of_the_async_instances() -> None:
    client = AsyncSandboxClient("unix:/nowhere")
    stream = client.exec_stream("sb_0000000000000000", "true")
    for instance in (client, stream):
        public = {n for n in vars(instance) if not n.startswith("_")}
        assert public == INSTANCE_ATTRIBUTES[type(instance)]


# -- sandboxes --------------------------------------------------------------------------------


def test_from_local_run_destroy(endpoint: str, project: Path) -> None:
    with Sandbox.from_local(project, preset="read-only", endpoint=endpoint) as sandbox:
        assert sandbox.status is SandboxStatus.RUNNING
        result = sandbox.run("python3 src/app.py; cat README.md")
        assert (result.stdout, result.stderr, result.exit_code) == (
            "hello from app\n# demo\n",
            "",
            0,
        )
        assert sandbox.run("sleep 0.1").exit_code == 0
        assert sandbox.exec("tr a-z A-Z", stdin="shout\n").stdout == "SHOUT\n"
        result = sandbox.run("echo $GREETING; pwd", env={"GREETING": "hi"}, workdir="src")
        assert result.stdout == "hi\n/workspace/src\n"
        with pytest.raises(CommandExecutionError) as failed:
            sandbox.run("echo nope >&2; exit 7", raise_on_error=True)
        assert (failed.value.exit_code, failed.value.stderr) == (7, "nope\n")
        with pytest.raises(CommandTimeoutError):
            sandbox.run("sleep 30", timeout=0.5)
        sandbox_id, codebase_id = sandbox.id, sandbox.codebase_id
    with SandboxClient(endpoint) as client:
        assert sandbox_id not in {s.id for s in client.list_sandboxes()}
        assert codebase_id not in {c.id for c in client.list_codebases()}


def test_an_error_in_the_block_still_destroys(endpoint: str, project: Path) -> None:
    sandbox = Sandbox.from_local(project, endpoint=endpoint)
    with pytest.raises(ZeroDivisionError), sandbox:
        raise ZeroDivisionError
    with SandboxClient(endpoint) as client, pytest.raises(SandboxNotFoundError):
        client.get_sandbox(sandbox.id)


def test_lifecycle_connect_and_codebase_reuse(endpoint: str, project: Path) -> None:
    with SandboxClient(endpoint) as client:
        codebase = client.create_codebase("sync-demo", "tester")
        client.upload_file(codebase.id, "hello.txt", "hi from the codebase\n")
        client.upload_local_file(codebase.id, "app.py", project / "src" / "app.py")
        assert client.download_file(codebase.id, "hello.txt") == b"hi from the codebase\n"
        assert {f.path for f in client.list_files(codebase.id)} == {"hello.txt", "app.py"}
        try:
            with Sandbox.from_codebase(
                codebase.id, preset="read-only", endpoint=endpoint, auto_start=False
            ) as sandbox:
                assert sandbox.status is SandboxStatus.PENDING
                started = sandbox.start()  # (a name of its own: mypy narrowed sandbox.status)
                assert started is sandbox
                assert started.status is SandboxStatus.RUNNING
                with Sandbox.connect(sandbox.id, endpoint=endpoint) as again:
                    assert again.run("cat hello.txt").stdout == "hi from the codebase\n"
                assert sandbox.refresh().status is SandboxStatus.RUNNING  # connect kept it
                assert sandbox.stop().status is SandboxStatus.STOPPED
            assert client.get_codebase(codebase.id).id == codebase.id  # kept
        finally:
            client.delete_codebase(codebase.id)


def test_exec_stream(endpoint: str, project: Path) -> None:
    with Sandbox.from_local(project, endpoint=endpoint) as sandbox:
        with sandbox.exec_stream("echo a; sleep 0.1; echo b >&2; exit 4") as stream:
            chunks = list(stream)
        assert chunks == [
            OutputChunk(OutputStream.STDOUT, b"a\n"),
            OutputChunk(OutputStream.STDERR, b"b\n"),
        ]
        assert stream.result is not None
        assert (stream.exit_code, stream.result.stdout) == (4, "")
        result = sandbox.exec_stream("cat; echo err >&2", stdin="in\n").collect()
        assert (result.stdout, result.stderr, result.exit_code) == ("in\n", "err\n", 0)
        started = time.monotonic()
        with sandbox.exec_stream("echo first; sleep 30") as stream:
            assert next(iter(stream)).data == b"first\n"
        assert time.monotonic() - started < 10  # leaving early cancelled the command
        assert stream.result is None
        with sandbox.client.exec_stream(sandbox.id, "printf x") as stream:
            assert b"".join(chunk.data for chunk in stream) == b"x"
        assert stream.exit_code == 0


def test_file_api(endpoint: str, project: Path) -> None:
    with Sandbox.from_local(project, preset="agent-safe", endpoint=endpoint) as sandbox:
        assert sandbox.read_file("src/app.py") == "print('hello from app')\n"
        assert sandbox.read_file_bytes("data.bin") == bytes(range(256)) * 4
        with pytest.raises(PermissionDeniedError):
            sandbox.write_file("README.md", "defaced")
        sandbox.write_file("/workspace/output/report.txt", b"\x00\xffbinary")
        assert sandbox.read_file_bytes("output/report.txt") == b"\x00\xffbinary"
        names = {f.name for f in sandbox.list_files("/workspace", recursive=True)}
        assert {"src", "app.py", "README.md", "report.txt"} <= names
        client = sandbox.client
        assert client.read_sandbox_file(sandbox.id, "README.md") == b"# demo\n"
        client.write_sandbox_file(sandbox.id, "output/more.txt", "more")
        listed = client.list_sandbox_files(sandbox.id, "/workspace/output")
        assert {f.path for f in listed} == {
            "/workspace/output/report.txt",
            "/workspace/output/more.txt",
        }


def test_errors_keep_their_type(endpoint: str) -> None:
    with pytest.raises(SandboxNotFoundError) as missing:
        Sandbox.connect("sb_0000000000000000", endpoint=endpoint)
    assert type(missing.value) is SandboxNotFoundError
    with SandboxClient(endpoint) as client, pytest.raises(SandboxNotFoundError):
        client.destroy_sandbox("sb_0000000000000000")


# -- sessions ---------------------------------------------------------------------------------


def test_session_state_persists(endpoint: str, project: Path) -> None:
    with Sandbox.from_local(project, endpoint=endpoint) as sandbox:
        with sandbox.session() as session:
            assert session.sandbox_id == sandbox.id
            assert session.status is SessionStatus.ACTIVE
            session.exec("cd /workspace/src")
            session.exec("export GREETING=hello")
            result = session.exec("pwd; echo $GREETING")
            assert result.stdout == "/workspace/src\nhello\n"
            with pytest.raises(CommandExecutionError):
                session.exec("false", raise_on_error=True)
            with session.exec_stream("echo streamed; pwd") as stream:
                out = b"".join(chunk.data for chunk in stream)
            assert out == b"streamed\n/workspace/src\n"
            assert stream.exit_code == 0
            session_id = session.id
        with pytest.raises(SessionNotFoundError):
            sandbox.client.get_session(session_id)
        session = sandbox.session(env={"WHO": "sync"})  # no ``with``: created all the same
        try:
            assert session.exec("echo $WHO").stdout == "sync\n"
            assert session.refresh().id == session.id
            assert session.id in {s.id for s in sandbox.client.list_sessions(sandbox.id)}
        finally:
            session.close()
        session.destroy()  # idempotent


# -- the portal -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_inside_a_running_loop_is_an_error(endpoint: str, project: Path, backend: str) -> None:
    with Sandbox.from_local(project, endpoint=endpoint) as sandbox:

        async def main() -> None:
            with pytest.raises(RuntimeError, match=rf"Sandbox\.run\(\).*{backend}.*AsyncSandbox"):
                sandbox.run("true")
            with pytest.raises(RuntimeError, match=r"Sandbox\.exec_stream\(\)"):
                sandbox.exec_stream("true")
            with pytest.raises(RuntimeError, match=r"Sandbox\.from_local\(\)"):
                Sandbox.from_local(project, endpoint=endpoint)
            with pytest.raises(RuntimeError, match=r"SandboxClient\.list_sandboxes\(\)"):
                SandboxClient(endpoint).list_sandboxes()
            # What to do instead: the sync call from a worker thread.
            result = await anyio.to_thread.run_sync(sandbox.run, "echo from a thread")
            assert result.stdout == "from a thread\n"

        anyio.run(main, backend=backend)


def test_one_portal_thread_for_many_sandboxes(endpoint: str, project: Path) -> None:
    with Sandbox.from_local(project, endpoint=endpoint) as sandbox:
        sandbox.run("true")
    before = threading.active_count()
    with ExitStack() as stack:
        sandboxes = [
            stack.enter_context(Sandbox.from_local(project, endpoint=endpoint)) for _ in range(8)
        ]
        for sandbox in sandboxes:
            assert sandbox.run("echo ok").stdout == "ok\n"
        assert threading.active_count() <= before
    assert [t.name for t in threading.enumerate()].count(THREAD_NAME) == 1
    assert threading.active_count() <= before


def test_threads_share_the_portal_and_run_at_once(endpoint: str, project: Path) -> None:
    """Calls from several threads are not serialised: each command waits for all the others."""
    wait_for_all = (
        "touch /tmp/ready-$N; "
        "while [ $(ls /tmp | grep -c ready-) -lt 4 ]; do sleep 0.05; done; echo $N"
    )
    with Sandbox.from_local(project, endpoint=endpoint) as sandbox:
        outputs: dict[int, str] = {}

        def run(n: int) -> None:
            outputs[n] = sandbox.run(wait_for_all, env={"N": str(n)}, timeout=20).stdout

        threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert outputs == {n: f"{n}\n" for n in range(4)}


def test_a_script_exits_cleanly(endpoint: str, project: Path, tmp_path: Path) -> None:
    """The guide's sync samples as a script: the portal stops at exit, nothing is left."""
    script = tmp_path / "sample.py"
    script.write_text(
        "from agentfense.sync import Sandbox\n"
        f"with Sandbox.from_local({str(project)!r}, endpoint={endpoint!r}) as sandbox:\n"
        "    print(sandbox.run('sleep 0.1; echo slept').stdout, end='')\n"
        "    with sandbox.session() as session:\n"
        "        session.exec('cd /workspace/src')\n"
        "        print(session.exec('pwd').stdout, end='')\n"
    )
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "slept\n/workspace/src\n", "")


def test_a_forked_child_gets_its_own_portal(endpoint: str, tmp_path: Path) -> None:
    script = tmp_path / "fork.py"
    script.write_text(
        "import os, sys, warnings\n"
        "from agentfense.sync import SandboxClient\n"
        "warnings.filterwarnings('ignore', 'This process', DeprecationWarning)  # 3.12+\n"
        f"with SandboxClient({endpoint!r}) as client:\n"
        "    client.list_sandboxes()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        f"    with SandboxClient({endpoint!r}) as client:\n"
        "        print('child', client.list_codebases('nobody'), flush=True)\n"
        "    sys.exit(0)\n"
        "print('child exit code', os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "child []\nchild exit code 0\n", "")
