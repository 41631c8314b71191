"""The ``sandbox.v1.CodebaseService`` gRPC service on top of :class:`CodebaseStore`."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import betterproto
import grpclib.const
import grpclib.server

from ..._proto.sandbox.v1 import (
    ArchiveChunk,
    ArchiveChunkFile,
    ArchiveResult,
    Codebase,
    CodebaseServiceBase,
    CreateCodebaseRequest,
    DeleteCodebaseRequest,
    DownloadFileRequest,
    Empty,
    FileChunk,
    GetCodebaseRequest,
    ListCodebasesRequest,
    ListCodebasesResponse,
    ListFilesRequest,
    ListFilesResponse,
    UploadChunk,
    UploadResult,
)
from ...errors import CodebaseNotFoundError, InvalidConfigurationError, SandboxError, StatusCode
from ..codebases import CodebaseRecord, CodebaseStore
from . import convert
from .encoded import encoded_off_loop
from .errors import grpc_errors, invalid, status_error
from .guarded import guarded

__all__ = ["CodebaseService"]

_DOWNLOAD_CHUNK = 64 * 1024


async def _file_data(
    chunks: AsyncIterator[ArchiveChunk], header: ArchiveChunkFile
) -> AsyncIterator[bytes]:
    """The data chunks of one archive member: exactly ``header.size`` bytes of them."""
    remaining = header.size
    while remaining > 0:
        chunk = await anext(chunks, None)
        if chunk is None:
            raise InvalidConfigurationError(
                f"the archive ended inside {header.file_path} ({remaining} bytes missing)"
            )
        field, value = betterproto.which_one_of(chunk, "content")
        if field != "data" or not isinstance(value, bytes):
            raise InvalidConfigurationError(
                f"{header.file_path} has {remaining} bytes missing before the next header"
            )
        if len(value) > remaining:
            raise InvalidConfigurationError(f"{header.file_path} has more data than its size")
        remaining -= len(value)
        yield value


class CodebaseService(CodebaseServiceBase):
    """Codebase RPCs; ``in_use(codebase_id)`` tells whether sandboxes still use a codebase,
    ``changed(codebase_id, paths)`` that an upload changed these paths under its sandboxes."""

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        mapping: dict[str, grpclib.const.Handler] = super().__mapping__()
        mapping["/sandbox.v1.CodebaseService/ListFiles"] = grpclib.const.Handler(
            self._list_files,
            grpclib.const.Cardinality.UNARY_UNARY,
            ListFilesRequest,
            ListFilesResponse,
        )
        return guarded(mapping)

    def __init__(
        self,
        store: CodebaseStore,
        *,
        in_use: Callable[[str], bool],
        changed: Callable[[str, list[str]], Awaitable[None]],
        max_upload_bytes: int,
        max_list_entries: int,
    ) -> None:
        self._store = store
        self._max_list_entries = max_list_entries
        self._in_use = in_use
        self._changed = changed
        self._max_upload_bytes = max_upload_bytes

    async def _codebase(self, record: CodebaseRecord) -> Codebase:
        size, file_count = await self._store.stats(record.id)
        return convert.codebase_to_pb(record, size, file_count)

    async def create_codebase(self, request: CreateCodebaseRequest) -> Codebase:
        with grpc_errors():
            record = await self._store.create(request.name, request.owner_id)
            return await self._codebase(record)

    async def get_codebase(self, request: GetCodebaseRequest) -> Codebase:
        with grpc_errors():
            record = await self._store.get(request.codebase_id)
            return await self._codebase(record)

    async def list_codebases(self, request: ListCodebasesRequest) -> ListCodebasesResponse:
        with grpc_errors():
            records, next_token = await self._store.list(
                request.owner_id, request.page_size, request.page_token
            )
            codebases = []
            for record in records:
                with contextlib.suppress(CodebaseNotFoundError):  # deleted meanwhile
                    codebases.append(await self._codebase(record))
        return ListCodebasesResponse(codebases=codebases, next_page_token=next_token)

    async def delete_codebase(self, request: DeleteCodebaseRequest) -> Empty:
        with grpc_errors():
            record = await self._store.get(request.codebase_id)
            if self._in_use(record.id):
                raise SandboxError(
                    f"codebase {record.id} is used by sandboxes; destroy them first",
                    code=StatusCode.FAILED_PRECONDITION,
                )
            await self._store.delete(record.id)
        return Empty()

    async def upload_files(self, request_iterator: AsyncIterator[UploadChunk]) -> UploadResult:
        first = await anext(request_iterator, None)
        if first is None or betterproto.which_one_of(first, "content")[0] != "metadata":
            raise invalid("the first UploadChunk must carry metadata")
        meta = first.metadata

        async def data() -> AsyncIterator[bytes]:
            async for chunk in request_iterator:
                field, value = betterproto.which_one_of(chunk, "content")
                if field == "metadata":
                    raise invalid("only the first UploadChunk may carry metadata")
                if field == "data":
                    assert isinstance(value, bytes)
                    yield value

        with grpc_errors():
            size, checksum = await self._store.upload(
                meta.codebase_id,
                meta.file_path,
                meta.total_size,
                data(),
                self._max_upload_bytes,
                executable=meta.executable,
            )
            await self._changed(meta.codebase_id, [meta.file_path])
        return convert.upload_result_to_pb(meta.codebase_id, meta.file_path, size, checksum)

    async def upload_archive(self, request_iterator: AsyncIterator[ArchiveChunk]) -> ArchiveResult:
        """Many files in one stream: each header is followed by exactly its size in data."""
        first = await anext(request_iterator, None)
        if first is None or betterproto.which_one_of(first, "content")[0] != "codebase_id":
            raise invalid("the first ArchiveChunk must carry the codebase_id")
        codebase_id = first.codebase_id
        uploaded: list[UploadResult] = []
        with grpc_errors():
            await self._store.get(codebase_id)  # a missing codebase fails before any data
            try:
                async for chunk in request_iterator:
                    field, header = betterproto.which_one_of(chunk, "content")
                    if field != "file" or not isinstance(header, ArchiveChunkFile):
                        raise InvalidConfigurationError(
                            "an ArchiveChunk file header must come before each file's data"
                        )
                    if header.size < 0:
                        raise InvalidConfigurationError("file size must not be negative")
                    size, checksum = await self._store.upload(
                        codebase_id,
                        header.file_path,
                        header.size,
                        _file_data(request_iterator, header),
                        self._max_upload_bytes,
                        touch=False,
                        executable=header.executable,
                    )
                    uploaded.append(
                        convert.upload_result_to_pb(codebase_id, header.file_path, size, checksum)
                    )
            finally:
                if uploaded:  # once for the whole archive, also when it broke off
                    await self._store.touch(codebase_id)
                    await self._changed(codebase_id, [f.file_path for f in uploaded])
        return ArchiveResult(codebase_id=codebase_id, files=uploaded)

    async def download_file(self, request: DownloadFileRequest) -> AsyncIterator[FileChunk]:
        chunks = self._store.download(request.codebase_id, request.file_path, _DOWNLOAD_CHUNK)
        try:
            while True:
                try:
                    data = await anext(chunks)
                except StopAsyncIteration:
                    return
                except SandboxError as err:
                    raise status_error(err) from None
                yield FileChunk(data=data)
        finally:
            await chunks.aclose()

    async def _list_files(self, stream: grpclib.server.Stream[ListFilesRequest, Any]) -> None:
        """ListFiles, whose reply (up to ``max_list_entries`` entries) is built and encoded
        in a worker thread."""
        request = await stream.recv_message()
        if request is None:  # (a client that closed its side without a request)
            raise invalid("the stream carried no request message")
        with grpc_errors():
            records = await self._store.list_files(
                request.codebase_id, request.path, request.recursive, self._max_list_entries
            )
        await stream.send_message(
            await encoded_off_loop(functools.partial(convert.list_files_reply, records))
        )
