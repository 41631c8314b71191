"""Authentication at the front door (issue 12): every RPC of both services needs an API
token; the token CLI manages them in a state directory, live; a server started with its
defaults lets its own user in with no key and refuses another local user; ``auth = none``
says so loudly; the audit log records each call without contents or secrets. All against a
real server over a real socket."""

from __future__ import annotations

import json
import os
import shutil
import site
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpclib.const
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

import agentfense
from agentfense import AsyncSandboxClient, AuthenticationError, PermissionDeniedError
from agentfense._local_token import read_local_token, token_path
from agentfense.testing import ServerProcess, start_server_process

from ._callers import cli as _cli
from ._callers import every_rpc as _every_rpc
from ._callers import raw_call
from ._callers import token as _token

pytestmark = pytest.mark.anyio
_REPO = Path(agentfense.__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with its default settings (auth = token) and an audit log."""
    root = tmp_path_factory.mktemp("auth")
    running = start_server_process(root, settings={"audit_log": str(root / "audit.jsonl")})
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # (grpclib's own channel, to send what any client may send)


async def _raw_call(
    endpoint: str, path: str, handler: grpclib.const.Handler, metadata: dict[str, str]
) -> GRPCError | None:
    """The status of ``path`` called with an empty request (None: it answered OK)."""
    answer = await raw_call(endpoint, path, handler, [handler.request_type()], metadata=metadata)
    return answer.error


async def test_every_rpc_refuses_a_call_without_a_valid_token(audited: ServerProcess) -> None:
    good = _token(audited, "alice")
    rpcs = _every_rpc()
    assert len(rpcs) == 36  # (the services' RPCs today; a new one is covered as it comes)
    for path, handler in rpcs.items():
        missing = await _raw_call(audited.endpoint, path, handler, {})
        assert missing is not None, path
        assert missing.status == Status.UNAUTHENTICATED, path
        assert "missing" in (missing.message or ""), path
        for wrong in (
            f"Bearer {good[:-1]}{'A' if good[-1] != 'A' else 'B'}",  # one character off
            "Bearer af_00000000_" + "x" * 43,  # well-formed, unknown
            f"Basic {good}",  # not a bearer token
        ):
            refused = await _raw_call(audited.endpoint, path, handler, {"authorization": wrong})
            assert refused is not None, path
            assert refused.status == Status.UNAUTHENTICATED, path
            assert refused.message == "the API token is not valid (unknown or revoked)", path
        # The right token passes the door (the empty request may then be refused for what it
        # is, never for who sent it).
        answered = await _raw_call(
            audited.endpoint, path, handler, {"authorization": f"Bearer {good}"}
        )
        assert answered is None or answered.status != Status.UNAUTHENTICATED, path


async def test_a_token_works_until_revoked_by_the_cli_on_the_running_server(
    audited: ServerProcess,
) -> None:
    token = _token(audited, "bob")
    async with AsyncSandboxClient(audited.endpoint, api_key=token) as client:
        made = await client.create_codebase("bobs", "bob")
        assert made.id in {c.id for c in await client.list_codebases()}
        listed = _cli("token", "list", "--state-dir", str(audited.state_dir))
        assert listed.returncode == 0, listed.stderr
        token_id = token.split("_")[1]
        assert any(line.split()[:2] == [token_id, "bob"] for line in listed.stdout.splitlines()), (
            listed.stdout
        )
        assert token not in listed.stdout
        assert token.split("_", 2)[2] not in listed.stdout
        revoked = _cli("token", "revoke", token_id, "--state-dir", str(audited.state_dir))
        assert revoked.returncode == 0, revoked.stderr
        with pytest.raises(AuthenticationError) as refused:
            await client.list_codebases()  # the next call: no restart
    assert refused.value.code == Status.UNAUTHENTICATED.value
    assert isinstance(refused.value, PermissionDeniedError)  # (what it was before)
    assert refused.value.message == "the API token is not valid (unknown or revoked)"
    assert token not in repr(refused.value)
    assert token not in repr(client)
    again = _cli("token", "revoke", token_id, "--state-dir", str(audited.state_dir))
    assert again.returncode == 125
    assert f"no token has the id '{token_id}'" in again.stderr


def test_the_store_keeps_hashes_only_in_a_file_only_root_reads(audited: ServerProcess) -> None:
    token = _token(audited, "carol")
    store = audited.state_dir / "tokens.json"
    assert store.stat().st_mode & 0o777 == 0o600
    text = store.read_text()
    assert token not in text
    assert token.split("_", 2)[2] not in text
    assert token.split("_")[1] in text  # (the public id)
    bad = _cli("token", "create", "--tenant", "Not A Name", "--state-dir", str(audited.state_dir))
    assert bad.returncode == 125
    assert "tenant 'Not A Name' is not a valid name" in bad.stderr


async def test_the_audit_log_has_a_line_per_call_and_no_secrets(
    audited: ServerProcess, project: Path
) -> None:
    token = _token(audited, "dave")
    secret_command = "echo the-secret-in-a-command"
    async with AsyncSandboxClient(audited.endpoint, api_key=token) as client:
        codebase = await client.create_codebase("audited", "dave")
        await client.upload_file(codebase.id, "notes.txt", b"the-secret-in-a-file")
        sandbox = await client.create_sandbox(
            codebase.id, permissions=[{"pattern": "**", "permission": "read"}]
        )
        await client.start_sandbox(sandbox.id)
        result = await client.exec(sandbox.id, secret_command)
        assert result.stdout == "the-secret-in-a-command\n"
        await client.destroy_sandbox(sandbox.id)
        await client.delete_codebase(codebase.id)
    async with AsyncSandboxClient(audited.endpoint, api_key="") as anonymous:
        with pytest.raises(AuthenticationError):
            await anonymous.get_sandbox(sandbox.id)
    text = (audited.log_path.parent / "audit.jsonl").read_text()
    for secret in ("the-secret-in-a-file", "the-secret-in-a-command", token):
        assert secret not in text
    lines = [json.loads(line) for line in text.splitlines()]
    # (a refused call is refused before its request is read: no ids)
    refused: dict[str, object] = {
        "action": "GetSandbox",
        "outcome": "UNAUTHENTICATED",
        "tenant": None,
        "ids": {},
    }
    assert lines[-1].items() >= refused.items()
    mine = [line for line in lines if line["tenant"] == "dave"] + [lines[-1]]
    assert [(line["action"], line["outcome"]) for line in mine] == [
        ("CreateCodebase", "OK"),
        ("UploadFiles", "OK"),
        ("CreateSandbox", "OK"),
        ("StartSandbox", "OK"),
        ("Exec", "OK"),
        ("DestroySandbox", "OK"),
        ("DeleteCodebase", "OK"),
        ("GetSandbox", "UNAUTHENTICATED"),
    ]
    assert all(line["tenant"] == "dave" for line in mine[:-1])
    assert mine[-1]["tenant"] is None
    assert mine[0]["ids"] == {"created": codebase.id}
    assert mine[2]["ids"] == {"codebase_id": codebase.id, "created": sandbox.id}
    assert mine[4]["ids"] == {"sandbox_id": sandbox.id, "command_bytes": len(secret_command)}
    assert all(line["peer"].startswith("unix:uid=0,pid=") for line in mine)
    assert all(line["time"].endswith("+00:00") for line in mine)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def readable_sdk() -> Iterator[Path]:
    """The SDK and what it imports, copied where any user may read them: this checkout and
    its environment may sit in a directory that uid 65534 cannot enter."""
    import agentfense._transport._asyncio_side  # noqa: F401  (what a call loads: grpclib...)

    root = Path(tempfile.mkdtemp(prefix="agentfense-sdk-"))
    roots = [*site.getsitepackages(), str(_REPO)]
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if "." in name or not file or not any(file.startswith(r + os.sep) for r in roots):
            continue
        source = Path(file)
        if source.name == "__init__.py":
            shutil.copytree(source.parent, root / name, dirs_exist_ok=True)
        else:
            shutil.copy2(source, root / source.name)
    for packages in site.getsitepackages():  # (and their metadata, which some read)
        for metadata in Path(packages).glob("*.dist-info"):
            shutil.copytree(metadata, root / metadata.name, dirs_exist_ok=True)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    yield root
    shutil.rmtree(root)


def _as_nobody(endpoint: str, sdk: Path) -> subprocess.CompletedProcess[str]:
    """An SDK call by a real unprivileged user (uid 65534), with no key of its own."""
    script = (
        "import anyio, agentfense\n"
        "async def main():\n"
        "    async with agentfense.AsyncSandboxClient() as client:\n"
        "        try:\n"
        "            await client.list_codebases()\n"
        "        except agentfense.SandboxError as exc:\n"
        "            print(type(exc).__name__, exc.message)\n"
        "        else:\n"
        "            print('LISTED')\n"
        "anyio.run(main)\n"
    )
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(sdk),
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOME": "/nonexistent",
        "AGENTFENSE_ENDPOINT": endpoint,
    }
    python = os.path.realpath(sys.executable)  # (the interpreter, not the environment's link)
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    return subprocess.run(
        [*as_nobody, python, "-s", "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


async def test_by_default_the_servers_user_gets_in_with_no_key_and_another_user_does_not(
    tmp_path: Path, readable_sdk: Path
) -> None:
    endpoint = f"127.0.0.1:{_free_port()}"
    tcp = start_server_process(tmp_path / "tcp", listen=endpoint)
    try:
        left = token_path(endpoint)
        assert left == token_path(f"localhost:{endpoint.rsplit(':', 1)[1]}")
        assert left.stat().st_mode & 0o777 == 0o600
        assert left.parent.stat().st_mode & 0o777 == 0o700
        async with AsyncSandboxClient(endpoint) as owner:  # the seed's pattern: no key
            await owner.list_codebases()
        other_state = Path(tempfile.mkdtemp(prefix="agentfense-second-"))
        os.chmod(other_state, 0o711)
        second = _cli("serve", "--listen", endpoint, "--state-dir", str(other_state))
        shutil.rmtree(other_state)
        assert second.returncode != 0
        assert f"cannot listen on {endpoint}: the address is in use" in second.stderr
        async with AsyncSandboxClient(endpoint) as owner:  # (its file is still the first's)
            await owner.list_codebases()
        refused = _as_nobody(endpoint, readable_sdk)
        assert refused.stdout.startswith("AuthenticationError this server requires an API token"), (
            refused.stdout + refused.stderr
        )
    finally:
        assert tcp.stop() == 0, tcp.log()
        token_path(endpoint).unlink(missing_ok=True)
    unix = start_server_process(tmp_path / "unix")
    try:
        assert read_local_token(unix.endpoint) is not None
        socket_path = unix.endpoint.removeprefix("unix:")
        assert os.stat(socket_path).st_mode & 0o777 == 0o600
        os.chmod(tmp_path / "unix", 0o755)  # (so only the socket's own mode keeps nobody out)
        refused = _as_nobody(unix.endpoint, readable_sdk)
        assert refused.stdout.startswith("ConnectionError"), refused.stdout + refused.stderr
        assert "Permission denied" in refused.stdout
    finally:
        assert unix.stop() == 0, unix.log()
    assert read_local_token(unix.endpoint) is None  # (gone with its socket)


async def test_auth_none_lets_anyone_in_and_says_so_at_start(tmp_path: Path) -> None:
    server = start_server_process(tmp_path, settings={"auth": "none"})
    try:
        assert read_local_token(server.endpoint) is None
        async with AsyncSandboxClient(server.endpoint, api_key="") as client:
            await client.list_codebases()
        assert "WARNING" in server.log()
        assert (
            f"auth is 'none': anyone who can reach {server.endpoint} is this server's own user"
            in server.log()
        )
    finally:
        assert server.stop() == 0, server.log()
