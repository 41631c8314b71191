"""The ``sandbox.v1`` methods the client calls: each one's path, request type and reply type.

``AsyncSandboxClient`` calls only through this table (``_unary(rpcs.EXEC, request)``), so a
request of the wrong type, a reply read as the wrong type, or a unary method called as a
stream is a mypy error. ``tests/client/test_rpc_table.py`` checks the table against the
generated service description.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar, final

import betterproto

from .._proto.sandbox import v1 as pb

Req = TypeVar("Req", bound=betterproto.Message)
Rep = TypeVar("Rep", bound=betterproto.Message)


@dataclass(frozen=True, slots=True)
class _Rpc(Generic[Req, Rep]):
    path: str
    request: type[Req]
    reply: type[Rep]


@final
@dataclass(frozen=True, slots=True)
class Unary(_Rpc[Req, Rep]):
    """One request, one reply."""


@final
@dataclass(frozen=True, slots=True)
class ServerStream(_Rpc[Req, Rep]):
    """One request, a stream of replies."""


@final
@dataclass(frozen=True, slots=True)
class ClientStream(_Rpc[Req, Rep]):
    """A stream of requests, one reply."""


_CODEBASE = "/sandbox.v1.CodebaseService/"
_SANDBOX = "/sandbox.v1.SandboxService/"

CREATE_CODEBASE = Unary(_CODEBASE + "CreateCodebase", pb.CreateCodebaseRequest, pb.Codebase)
GET_CODEBASE = Unary(_CODEBASE + "GetCodebase", pb.GetCodebaseRequest, pb.Codebase)
LIST_CODEBASES = Unary(
    _CODEBASE + "ListCodebases", pb.ListCodebasesRequest, pb.ListCodebasesResponse
)
DELETE_CODEBASE = Unary(_CODEBASE + "DeleteCodebase", pb.DeleteCodebaseRequest, pb.Empty)
UPLOAD_FILES = ClientStream(_CODEBASE + "UploadFiles", pb.UploadChunk, pb.UploadResult)
UPLOAD_ARCHIVE = ClientStream(_CODEBASE + "UploadArchive", pb.ArchiveChunk, pb.ArchiveResult)
DOWNLOAD_FILE = ServerStream(_CODEBASE + "DownloadFile", pb.DownloadFileRequest, pb.FileChunk)
LIST_FILES = Unary(_CODEBASE + "ListFiles", pb.ListFilesRequest, pb.ListFilesResponse)

CREATE_SANDBOX = Unary(_SANDBOX + "CreateSandbox", pb.CreateSandboxRequest, pb.Sandbox)
GET_SANDBOX = Unary(_SANDBOX + "GetSandbox", pb.GetSandboxRequest, pb.Sandbox)
LIST_SANDBOXES = Unary(
    _SANDBOX + "ListSandboxes", pb.ListSandboxesRequest, pb.ListSandboxesResponse
)
START_SANDBOX = Unary(_SANDBOX + "StartSandbox", pb.StartSandboxRequest, pb.Sandbox)
STOP_SANDBOX = Unary(_SANDBOX + "StopSandbox", pb.StopSandboxRequest, pb.Sandbox)
DESTROY_SANDBOX = Unary(_SANDBOX + "DestroySandbox", pb.DestroySandboxRequest, pb.Empty)
EXEC = Unary(_SANDBOX + "Exec", pb.ExecRequest, pb.ExecResult)
EXEC_STREAM = ServerStream(_SANDBOX + "ExecStream", pb.ExecRequest, pb.ExecOutput)
READ_SANDBOX_FILE = ServerStream(_SANDBOX + "ReadSandboxFile", pb.SandboxFileRequest, pb.FileChunk)
WRITE_SANDBOX_FILE = ClientStream(
    _SANDBOX + "WriteSandboxFile", pb.SandboxFileChunk, pb.UploadResult
)
LIST_SANDBOX_FILES = Unary(
    _SANDBOX + "ListSandboxFiles", pb.ListSandboxFilesRequest, pb.ListFilesResponse
)
CREATE_SESSION = Unary(_SANDBOX + "CreateSession", pb.CreateSessionRequest, pb.Session)
GET_SESSION = Unary(_SANDBOX + "GetSession", pb.GetSessionRequest, pb.Session)
LIST_SESSIONS = Unary(_SANDBOX + "ListSessions", pb.ListSessionsRequest, pb.ListSessionsResponse)
DESTROY_SESSION = Unary(_SANDBOX + "DestroySession", pb.DestroySessionRequest, pb.Empty)
SESSION_EXEC = Unary(_SANDBOX + "SessionExec", pb.SessionExecRequest, pb.ExecResult)
SESSION_EXEC_STREAM = ServerStream(
    _SANDBOX + "SessionExecStream", pb.SessionExecRequest, pb.ExecOutput
)
LIST_CHANGES = Unary(_SANDBOX + "ListChanges", pb.ListChangesRequest, pb.ListChangesResponse)
DIFF_CHANGES = Unary(_SANDBOX + "DiffChanges", pb.DiffChangesRequest, pb.DiffChangesResponse)
COMMIT_CHANGES = Unary(
    _SANDBOX + "CommitChanges", pb.CommitChangesRequest, pb.CommitChangesResponse
)
DISCARD_CHANGES = Unary(
    _SANDBOX + "DiscardChanges", pb.DiscardChangesRequest, pb.DiscardChangesResponse
)
CREATE_CHECKPOINT = Unary(_SANDBOX + "CreateCheckpoint", pb.CreateCheckpointRequest, pb.Checkpoint)
LIST_CHECKPOINTS = Unary(
    _SANDBOX + "ListCheckpoints", pb.ListCheckpointsRequest, pb.ListCheckpointsResponse
)
RESTORE_CHECKPOINT = Unary(
    _SANDBOX + "RestoreCheckpoint", pb.RestoreCheckpointRequest, pb.Checkpoint
)
DELETE_CHECKPOINT = Unary(_SANDBOX + "DeleteCheckpoint", pb.DeleteCheckpointRequest, pb.Empty)
FORK_SANDBOX = Unary(_SANDBOX + "ForkSandbox", pb.ForkSandboxRequest, pb.Sandbox)
GET_NETWORK_LOG = Unary(_SANDBOX + "GetNetworkLog", pb.GetNetworkLogRequest, pb.NetworkLog)
WATCH_EVENTS = ServerStream(_SANDBOX + "WatchEvents", pb.WatchEventsRequest, pb.EventBatch)
