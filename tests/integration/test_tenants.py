"""Tenants (issue 12), over one real server with token auth, as two tenants whose tokens the
CLI made: alpha owns a codebase (a ``.env`` too), a running sandbox and a session; beta calls
every RPC of both services naming them. Each answers NOT_FOUND, shaped exactly as for an id
that does not exist (ids are not an oracle), or, for a listing, shows nothing of alpha's. The
same calls by alpha on its own objects succeed (a server answering NOT_FOUND to everyone fails
too), alpha's objects are intact after beta's calls, and ``owner_id`` stays a label.

The table is keyed by the RPCs of the generated service definitions: a new RPC fails here
until it has a row. Calls are raw grpclib ones (the status, message and kind a client gets);
the SDK sets things up and looks at them afterwards."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from grpclib.const import Status

from agentfense import AsyncSandboxClient, PermissionRule, SandboxStatus
from agentfense._convert import rule_to_pb
from agentfense._proto.sandbox import v1 as pb
from agentfense.testing import ServerProcess, start_server_process

from ._callers import Answer, every_rpc, raw_call, token

pytestmark = pytest.mark.anyio

OWNER = "team-alpha"  # alpha's owner_id label, which beta also sends
SECRET = b"ALPHA_API_KEY=the-alpha-secret\n"
FILES = {"README.md": b"# alpha\n", ".env": SECRET, "src/app.py": b"print('alpha')\n"}
PLANTED = b"beta was here\n"
EVERYTHING = PermissionRule("**", "write")  # (alpha may read and write it all)


@dataclass(frozen=True)
class Objects:
    """A tenant's codebase, its sandbox (running) and a session in it; or ids of none."""

    codebase: str
    sandbox: str
    session: str
    checkpoint: str

    def ids(self) -> dict[str, str]:
        """Each id, and what stands for it when two answers' messages are compared."""
        return {
            self.codebase: "<codebase>",
            self.sandbox: "<sandbox>",
            self.session: "<session>",
            self.checkpoint: "<checkpoint>",
        }


def _ghosts() -> Objects:
    """Well-formed ids of nothing that exists (the server's own shapes)."""
    return Objects(
        "cb_" + secrets.token_hex(8),
        "sb_" + secrets.token_hex(8),
        "ses_" + secrets.token_hex(8),
        "cp_" + secrets.token_hex(8),
    )


def _nothing(_: Objects) -> set[bytes]:
    return set()


@dataclass(frozen=True)
class Row:
    """One RPC: its requests naming a tenant's objects; what the owner's answer must carry;
    and whether a stranger gets an answer (a listing or a create: carrying none of the owner's
    ids) rather than NOT_FOUND."""

    requests: Callable[[Objects], list[Any]]
    owner_sees: Callable[[Objects], set[bytes]] = _nothing
    stranger_answered: bool = False
    most_replies: int | None = None  # a stream that goes on: read this many, then leave


def _upload(o: Objects) -> list[Any]:
    meta = pb.UploadChunkMetadata(
        codebase_id=o.codebase, file_path="README.md", total_size=len(PLANTED)
    )
    return [pb.UploadChunk(metadata=meta), pb.UploadChunk(data=PLANTED)]


def _archive(o: Objects) -> list[Any]:
    header = pb.ArchiveChunkFile(file_path="planted.txt", size=len(PLANTED))
    return [
        pb.ArchiveChunk(codebase_id=o.codebase),
        pb.ArchiveChunk(file=header),
        pb.ArchiveChunk(data=PLANTED),
    ]


def _write(o: Objects) -> list[Any]:
    meta = pb.SandboxFileChunkMetadata(
        sandbox_id=o.sandbox, path="planted.txt", total_size=len(PLANTED)
    )
    return [pb.SandboxFileChunk(metadata=meta), pb.SandboxFileChunk(data=PLANTED)]


CB, SB = "/sandbox.v1.CodebaseService/", "/sandbox.v1.SandboxService/"
CAT_SECRET = "cat /workspace/.env"

# Run in this order (by each tenant): what ends a session, a sandbox or a codebase comes last.
TABLE: dict[str, Row] = {
    CB + "CreateCodebase": Row(
        lambda o: [pb.CreateCodebaseRequest(name="project", owner_id=OWNER)],
        lambda o: {OWNER.encode()},
        stranger_answered=True,
    ),
    CB + "GetCodebase": Row(
        lambda o: [pb.GetCodebaseRequest(codebase_id=o.codebase)],
        lambda o: {o.codebase.encode()},
    ),
    CB + "ListCodebases": Row(
        lambda o: [pb.ListCodebasesRequest()],
        lambda o: {o.codebase.encode()},
        stranger_answered=True,
    ),
    CB + "ListFiles": Row(
        lambda o: [pb.ListFilesRequest(codebase_id=o.codebase, recursive=True)],
        lambda o: {b".env", b"app.py"},
    ),
    CB + "DownloadFile": Row(
        lambda o: [pb.DownloadFileRequest(codebase_id=o.codebase, file_path=".env")],
        lambda o: {SECRET},
    ),
    CB + "UploadFiles": Row(_upload, lambda o: {o.codebase.encode()}),
    CB + "UploadArchive": Row(_archive, lambda o: {b"planted.txt"}),
    SB + "CreateSandbox": Row(
        lambda o: [
            pb.CreateSandboxRequest(codebase_id=o.codebase, permissions=[rule_to_pb(EVERYTHING)])
        ],
        lambda o: {o.codebase.encode()},
    ),
    SB + "GetSandbox": Row(
        lambda o: [pb.GetSandboxRequest(sandbox_id=o.sandbox)],
        lambda o: {o.sandbox.encode()},
    ),
    SB + "ListSandboxes": Row(
        lambda o: [pb.ListSandboxesRequest()],
        lambda o: {o.sandbox.encode()},
        stranger_answered=True,
    ),
    SB + "StartSandbox": Row(
        lambda o: [pb.StartSandboxRequest(sandbox_id=o.sandbox)],
        lambda o: {o.sandbox.encode()},
    ),
    SB + "Exec": Row(
        lambda o: [pb.ExecRequest(sandbox_id=o.sandbox, command=CAT_SECRET)],
        lambda o: {SECRET},
    ),
    SB + "ExecStream": Row(
        lambda o: [pb.ExecRequest(sandbox_id=o.sandbox, command=CAT_SECRET)],
        lambda o: {SECRET},
    ),
    SB + "ReadSandboxFile": Row(
        lambda o: [pb.SandboxFileRequest(sandbox_id=o.sandbox, path=".env")],
        lambda o: {SECRET},
    ),
    SB + "ListSandboxFiles": Row(
        lambda o: [pb.ListSandboxFilesRequest(sandbox_id=o.sandbox, path="/workspace")],
        lambda o: {b"README.md"},
    ),
    SB + "WriteSandboxFile": Row(_write, lambda o: {b"planted.txt"}),
    SB + "CreateSession": Row(
        lambda o: [pb.CreateSessionRequest(sandbox_id=o.sandbox)],
        lambda o: {o.sandbox.encode()},
    ),
    SB + "GetSession": Row(
        lambda o: [pb.GetSessionRequest(session_id=o.session)],
        lambda o: {o.session.encode()},
    ),
    SB + "ListSessions": Row(
        lambda o: [pb.ListSessionsRequest(sandbox_id=o.sandbox)],
        lambda o: {o.session.encode()},
    ),
    SB + "SessionExec": Row(
        lambda o: [pb.SessionExecRequest(session_id=o.session, command=CAT_SECRET)],
        lambda o: {SECRET},
    ),
    SB + "SessionExecStream": Row(
        lambda o: [pb.SessionExecRequest(session_id=o.session, command=CAT_SECRET)],
        lambda o: {SECRET},
    ),
    # Review: the sandbox commits by hand (commit="manual").
    SB + "ListChanges": Row(lambda o: [pb.ListChangesRequest(sandbox_id=o.sandbox)]),
    SB + "DiffChanges": Row(lambda o: [pb.DiffChangesRequest(sandbox_id=o.sandbox)]),
    SB + "CommitChanges": Row(lambda o: [pb.CommitChangesRequest(sandbox_id=o.sandbox)]),
    SB + "DiscardChanges": Row(lambda o: [pb.DiscardChangesRequest(sandbox_id=o.sandbox)]),
    SB + "CreateCheckpoint": Row(
        lambda o: [pb.CreateCheckpointRequest(sandbox_id=o.sandbox)],
        lambda o: {o.sandbox.encode()},
    ),
    SB + "ListCheckpoints": Row(
        lambda o: [pb.ListCheckpointsRequest(sandbox_id=o.sandbox)],
        lambda o: {o.checkpoint.encode()},
    ),
    SB + "RestoreCheckpoint": Row(
        lambda o: [pb.RestoreCheckpointRequest(sandbox_id=o.sandbox, checkpoint_id=o.checkpoint)],
        lambda o: {o.checkpoint.encode()},
    ),
    SB + "ForkSandbox": Row(
        lambda o: [pb.ForkSandboxRequest(sandbox_id=o.sandbox)],
        lambda o: {o.codebase.encode()},
    ),
    SB + "GetNetworkLog": Row(lambda o: [pb.GetNetworkLogRequest(sandbox_id=o.sandbox)]),
    SB + "WatchEvents": Row(
        lambda o: [pb.WatchEventsRequest(sandbox_id=o.sandbox)], most_replies=1
    ),
    SB + "DeleteCheckpoint": Row(
        lambda o: [pb.DeleteCheckpointRequest(sandbox_id=o.sandbox, checkpoint_id=o.checkpoint)]
    ),
    SB + "DestroySession": Row(lambda o: [pb.DestroySessionRequest(session_id=o.session)]),
    SB + "StopSandbox": Row(
        lambda o: [pb.StopSandboxRequest(sandbox_id=o.sandbox)],
        lambda o: {o.sandbox.encode()},
    ),
    SB + "DestroySandbox": Row(lambda o: [pb.DestroySandboxRequest(sandbox_id=o.sandbox)]),
    CB + "DeleteCodebase": Row(lambda o: [pb.DeleteCodebaseRequest(codebase_id=o.codebase)]),
}


@dataclass
class Tenants:
    """The server, each tenant's token, and what alpha owns (which beta's calls name)."""

    server: ServerProcess
    alpha: str
    beta: str
    owned: Objects
    listed: set[str]  # alpha's files as its sandbox lists them


async def _set_up(client: AsyncSandboxClient, name: str) -> Objects:
    """A codebase with FILES, a running sandbox that may write it all, and a session in it
    whose shell has moved to src/ and exported a variable (state a stranger could lose)."""
    codebase = await client.create_codebase(name, OWNER)
    for path, content in FILES.items():
        await client.upload_file(codebase.id, path, content)
    sandbox = await client.create_sandbox(codebase.id, permissions=[EVERYTHING], commit="manual")
    await client.start_sandbox(sandbox.id)
    session = await client.create_session(sandbox.id)
    moved = await client.session_exec(session.id, "cd /workspace/src && export MARK=alpha")
    assert moved.exit_code == 0, moved.stderr
    checkpoint = await client.create_checkpoint(sandbox.id)
    return Objects(codebase.id, sandbox.id, session.id, checkpoint.id)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # (grpclib's own channel, to send what any client may send)


@pytest.fixture(scope="module")
async def tenants(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Tenants]:
    base = tmp_path_factory.mktemp("tenants")
    server = await anyio.to_thread.run_sync(start_server_process, base)  # (auth = token)
    try:
        alpha = await anyio.to_thread.run_sync(token, server, "alpha")
        beta = await anyio.to_thread.run_sync(token, server, "beta")
        async with AsyncSandboxClient(server.endpoint, api_key=alpha) as client:
            owned = await _set_up(client, "alphas")
            listed = {
                f.path for f in await client.list_sandbox_files(owned.sandbox, recursive=True)
            }
        yield Tenants(server, alpha, beta, owned, listed)
    finally:
        assert await anyio.to_thread.run_sync(server.stop) == 0, server.log()


async def _run(
    tenants: Tenants, api_key: str, objects: Objects, paths: list[str]
) -> dict[str, Answer]:
    """The rows of ``paths``, in that order, called with ``api_key`` naming ``objects``."""
    handlers = every_rpc()
    metadata = {"authorization": f"Bearer {api_key}"}
    return {
        path: await raw_call(
            tenants.server.endpoint,
            path,
            handlers[path],
            TABLE[path].requests(objects),
            metadata=metadata,
            most_replies=TABLE[path].most_replies,
        )
        for path in paths
    }


@pytest.fixture(scope="module")
async def betas_answers(tenants: Tenants) -> dict[str, Answer]:
    """Beta's whole table, naming alpha's objects."""
    return await _run(tenants, tenants.beta, tenants.owned, list(TABLE))


@pytest.fixture(scope="module")
async def ghosts_answers(tenants: Tenants) -> tuple[Objects, dict[str, Answer]]:
    """Beta's whole table, naming well-formed ids of nothing."""
    ghosts = _ghosts()
    return ghosts, await _run(tenants, tenants.beta, ghosts, list(TABLE))


@pytest.fixture(scope="module")
async def alphas_answers(tenants: Tenants) -> tuple[Objects, dict[str, Answer]]:
    """Alpha's whole table on objects of its own made for it (the rows end what they name)."""
    delete = CB + "DeleteCodebase"
    async with AsyncSandboxClient(tenants.server.endpoint, api_key=tenants.alpha) as client:
        scratch = await _set_up(client, "alphas-scratch")
        answers = await _run(tenants, tenants.alpha, scratch, [p for p in TABLE if p != delete])
        # A codebase in use is refused by design: the CreateSandbox row's sandbox goes first.
        for left in await client.list_sandboxes(scratch.codebase):
            await client.destroy_sandbox(left.id)
        answers |= await _run(tenants, tenants.alpha, scratch, [delete])
    return scratch, answers


def _described(answer: Answer) -> str:
    if answer.error is None:
        return f"OK with {len(answer.replies)} replies: {answer.text()[:300]!r}"
    return f"{answer.error.status.name} {answer.error.message!r} ({answer.error.details})"


def test_the_table_has_a_row_for_every_rpc() -> None:
    assert set(TABLE) == set(every_rpc())  # (a new RPC fails here until it has a row)


@pytest.mark.parametrize("path", list(TABLE))
async def test_the_owner_gets_what_each_row_asks(
    path: str, alphas_answers: tuple[Objects, dict[str, Answer]]
) -> None:
    """The positive control: each row, by alpha on alpha's objects, answers OK and carries
    what it names (so a server that refused everyone would fail here)."""
    scratch, answers = alphas_answers
    answer = answers[path]
    assert answer.error is None, f"alpha's own {path}: {_described(answer)}"
    missing = {seen for seen in TABLE[path].owner_sees(scratch) if seen not in answer.text()}
    assert not missing, f"alpha's own {path} lacks {missing}: {_described(answer)}"


@pytest.mark.parametrize("path", list(TABLE))
async def test_a_stranger_reaches_nothing_of_the_owners(
    path: str, tenants: Tenants, betas_answers: dict[str, Answer]
) -> None:
    answer = betas_answers[path]
    shown = answer.text()
    reached = [i for i in tenants.owned.ids() if i.encode() in shown]
    assert SECRET.strip() not in shown, f"beta's {path} read alpha's secret: {_described(answer)}"
    if TABLE[path].stranger_answered:
        assert answer.error is None, f"beta's {path}: {_described(answer)}"
        assert not reached, f"beta's {path} shows alpha's {reached}: {_described(answer)}"
    else:
        assert answer.error is not None, f"beta's {path} reached alpha's: {_described(answer)}"
        assert answer.error.status == Status.NOT_FOUND, f"beta's {path}: {_described(answer)}"
        assert answer.replies == [], f"beta's {path}: {_described(answer)}"


def _shape(answer: Answer, objects: Objects) -> tuple[Status | None, str, object]:
    """An answer's status, message with the ids it names replaced, and error kind."""
    if answer.error is None:
        return None, _described(answer), None
    message = answer.error.message or ""
    for ident, stand_in in objects.ids().items():
        message = message.replace(ident, stand_in)
    return answer.error.status, message, answer.error.details


@pytest.mark.parametrize("path", [path for path, row in TABLE.items() if not row.stranger_answered])
async def test_a_strangers_id_answers_as_an_id_of_nothing(
    path: str,
    tenants: Tenants,
    betas_answers: dict[str, Answer],
    ghosts_answers: tuple[Objects, dict[str, Answer]],
) -> None:
    ghosts, answers = ghosts_answers
    ghost = _shape(answers[path], ghosts)
    assert ghost[0] == Status.NOT_FOUND, f"{path} naming nothing: {ghost}"
    strangers = _shape(betas_answers[path], tenants.owned)
    assert strangers == ghost, f"{path}: naming alpha's {strangers}, naming nothing {ghost}"


async def test_the_owners_objects_are_intact_after_the_strangers_calls(
    tenants: Tenants, betas_answers: dict[str, Answer]
) -> None:
    assert betas_answers  # (beta's whole table has run)
    owned = tenants.owned
    async with AsyncSandboxClient(tenants.server.endpoint, api_key=tenants.alpha) as client:
        assert owned.codebase in {c.id for c in await client.list_codebases()}
        files = await client.list_files(owned.codebase, recursive=True)
        assert {f.path for f in files if not f.is_dir} == set(FILES)
        for path, content in FILES.items():
            assert await client.download_file(owned.codebase, path) == content, path
        sandbox = await client.get_sandbox(owned.sandbox)
        assert sandbox.status is SandboxStatus.RUNNING
        assert [s.id for s in await client.list_sandboxes(owned.codebase)] == [owned.sandbox]
        listed = await client.list_sandbox_files(owned.sandbox, recursive=True)
        assert {f.path for f in listed} == tenants.listed
        assert [s.id for s in await client.list_sessions(owned.sandbox)] == [owned.session]
        kept = await client.session_exec(owned.session, 'pwd && echo "$MARK"')
        assert (kept.exit_code, kept.stdout) == (0, "/workspace/src\nalpha\n"), kept.stderr


async def test_owner_id_is_a_label_and_filters_only_the_callers_own(tenants: Tenants) -> None:
    endpoint = tenants.server.endpoint
    async with (
        AsyncSandboxClient(endpoint, api_key=tenants.alpha) as alpha,
        AsyncSandboxClient(endpoint, api_key=tenants.beta) as beta,
    ):
        alphas = await alpha.get_codebase(tenants.owned.codebase)
        assert alphas.owner_id == OWNER
        betas = await beta.create_codebase("betas", alphas.owner_id)
        assert betas.owner_id == OWNER  # (echoed as sent)
        assert betas.id != alphas.id
        seen_by_beta = await beta.list_codebases(OWNER)
        assert betas.id in {c.id for c in seen_by_beta}
        assert alphas.id not in {c.id for c in seen_by_beta}
        assert all(c.owner_id == OWNER for c in seen_by_beta)
        seen_by_alpha = {c.id for c in await alpha.list_codebases(OWNER)}
        assert alphas.id in seen_by_alpha
        assert betas.id not in seen_by_alpha
        assert betas.id not in {c.id for c in await alpha.list_codebases()}
