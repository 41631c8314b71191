"""CodebaseStore against the real filesystem in a temporary directory."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import anyio
import pytest

from agentfense.errors import (
    CodebaseNotFoundError,
    InvalidConfigurationError,
    ResourceLimitExceededError,
    SandboxError,
    StatusCode,
)
from agentfense.server.callers import calling_as
from agentfense.server.codebases import CodebaseStore

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024


async def _chunks(parts: Iterable[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        await anyio.lowlevel.checkpoint()
        yield part


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _read(path: Path) -> bytes:
    return path.read_bytes()


async def _store(root: Path) -> CodebaseStore:
    store = CodebaseStore(root)
    await store.load()
    return store


async def _upload(store: CodebaseStore, cb: str, path: str, data: bytes) -> tuple[int, str]:
    return await store.upload(cb, path, len(data), _chunks([data]), 10 * MiB)


async def _download(store: CodebaseStore, cb: str, path: str) -> bytes:
    return b"".join([chunk async for chunk in store.download(cb, path)])


async def test_create_get_and_reload(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    record = await store.create("project", "alice")
    assert record.id.startswith("cb_")
    assert len(record.id) == 19
    assert await store.get(record.id) == record
    assert record.created_at.tzinfo is not None
    assert store.files_dir(record.id).is_dir()

    reloaded = await _store(tmp_path)
    assert await reloaded.get(record.id) == record


async def test_what_a_killed_server_left_is_gone_at_load(tmp_path: Path) -> None:
    """A codebase whose creation was cut short (no meta.json, nothing in it) and a write of
    meta.json cut short are removed; a codebase with files but no readable meta.json stays
    (its files are someone's), skipped."""
    store = await _store(tmp_path)
    kept = await store.create("kept")
    (tmp_path / kept.id / ".meta-0123abcd.tmp").write_text('{"id": ')
    half_made = tmp_path / "cb_00000000000000aa"
    (half_made / "files").mkdir(parents=True)
    (half_made / "tmp").mkdir()
    unreadable = tmp_path / "cb_00000000000000bb"
    (unreadable / "files").mkdir(parents=True)
    (unreadable / "files" / "work.txt").write_text("someone's\n")

    reloaded = await _store(tmp_path)
    assert [r.id for r in (await reloaded.list())[0]] == [kept.id]
    assert not half_made.exists()
    assert _names(tmp_path / kept.id) == ["files", "meta.json", "tmp"]
    assert (unreadable / "files" / "work.txt").read_text() == "someone's\n"


@pytest.mark.parametrize("name", ["", "   ", "x" * 257, "a\x00b"])
async def test_create_rejects_bad_names(tmp_path: Path, name: str) -> None:
    store = await _store(tmp_path)
    with pytest.raises(InvalidConfigurationError, match=r"^name "):
        await store.create(name, "")
    assert _names(tmp_path) == []


async def test_list_pages_through_everything_in_creation_order(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    created = [await store.create(f"cb{i}", "alice" if i % 3 else "bob") for i in range(23)]
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page, token = await store.list("", 5, token)
        pages += 1
        assert len(page) <= 5
        seen.extend(r.id for r in page)
        if not token:
            break
    assert pages == 5
    assert seen == [r.id for r in created]

    bobs, token = await store.list("bob", 0, "")
    assert token == ""
    assert [r.id for r in bobs] == [r.id for i, r in enumerate(created) if i % 3 == 0]

    # A deleted codebase does not break a token that points at it.
    first, token = await store.list("", 2, "")
    await store.delete(first[-1].id)
    rest, _ = await store.list("", 100, token)
    assert [r.id for r in rest] == [r.id for r in created[2:]]

    with pytest.raises(InvalidConfigurationError, match="page_token"):
        await store.list("", 5, "not a token!")
    with pytest.raises(InvalidConfigurationError, match="page_size"):
        await store.list("", -1, "")


async def test_big_upload_streams_with_checksum_and_stats(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    cb = (await store.create("big", "")).id
    block = os.urandom(64 * 1024)
    chunk_list = [bytes([i % 251]) + block[1:] for i in range(320)]  # 20 MiB
    expected = hashlib.sha256(b"".join(chunk_list)).hexdigest()
    before = (await store.get(cb)).updated_at

    size, checksum = await store.upload(
        cb, "/data/sub/big.bin", 20 * MiB, _chunks(chunk_list), 32 * MiB
    )
    assert (size, checksum) == (20 * MiB, expected)
    await _upload(store, cb, "README.md", b"hello\n")
    await _upload(store, cb, "empty", b"")

    assert await store.stats(cb) == (20 * MiB + 6, 3)
    assert (await store.get(cb)).updated_at > before
    digest = hashlib.sha256()
    async for chunk in store.download(cb, "data/sub/big.bin"):
        assert len(chunk) <= 64 * 1024
        digest.update(chunk)
    assert digest.hexdigest() == expected
    assert await _download(store, cb, "empty") == b""

    top = await store.list_files(cb, "/", False)
    assert [(f.path, f.is_dir) for f in top] == [
        ("README.md", False),
        ("data", True),
        ("empty", False),
    ]
    everything = await store.list_files(cb, "", True)
    assert [f.path for f in everything] == [
        "README.md",
        "data",
        "data/sub",
        "data/sub/big.bin",
        "empty",
    ]
    big = everything[3]
    assert (big.name, big.size, big.modified_at.tzinfo is not None) == ("big.bin", 20 * MiB, True)
    assert [f.path for f in await store.list_files(cb, "data", True)] == [
        "data/sub",
        "data/sub/big.bin",
    ]
    # Overwriting replaces the whole file.
    await _upload(store, cb, "README.md", b"x")
    assert await _download(store, cb, "README.md") == b"x"
    assert await store.stats(cb) == (20 * MiB + 1, 3)


@pytest.mark.parametrize("path", ["../escape", "a/../../b", "/..", "a/..", "x\x00y", ""])
async def test_traversal_and_bad_paths_are_rejected(tmp_path: Path, path: str) -> None:
    store = await _store(tmp_path)
    cb = (await store.create("p", "")).id
    with pytest.raises(InvalidConfigurationError, match=r"^file_path "):
        await _upload(store, cb, path, b"data")
    with pytest.raises(InvalidConfigurationError, match=r"^file_path "):
        await _download(store, cb, path)
    if path:
        with pytest.raises(InvalidConfigurationError, match=r"^path "):
            await store.list_files(cb, path, True)
    assert not (tmp_path / "escape").exists()
    assert await store.stats(cb) == (0, 0)


async def test_planted_symlinks_are_never_followed(tmp_path: Path) -> None:
    store = await _store(tmp_path / "store")
    cb = (await store.create("p", "")).id
    files = store.files_dir(cb)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("top secret")
    passwd_before = _read(Path("/etc/passwd"))
    (files / "passwd").symlink_to("/etc/passwd")
    (files / "dirlink").symlink_to(outside)

    with pytest.raises(InvalidConfigurationError, match="symbolic link"):
        await _download(store, cb, "passwd")
    with pytest.raises(InvalidConfigurationError, match="not a directory"):
        await _download(store, cb, "dirlink/secret")
    with pytest.raises(InvalidConfigurationError, match="not a directory"):
        await _upload(store, cb, "dirlink/new", b"x")
    assert _names(outside) == ["secret"]

    listed = {f.path: f for f in await store.list_files(cb, "", True)}
    assert set(listed) == {"passwd", "dirlink"}
    assert not listed["dirlink"].is_dir
    assert listed["passwd"].size == len("/etc/passwd")
    assert [f.path for f in await store.list_files(cb, "dirlink", True)] == ["dirlink"]
    assert await store.stats(cb) == (0, 0)

    # Uploading onto the link replaces the link itself and never writes through it.
    await _upload(store, cb, "passwd", b"mine")
    assert _read(Path("/etc/passwd")) == passwd_before
    assert not (files / "passwd").is_symlink()
    assert await _download(store, cb, "passwd") == b"mine"
    assert (outside / "secret").read_text() == "top secret"


async def test_file_where_a_directory_is_needed(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    cb = (await store.create("p", "")).id
    await _upload(store, cb, "a", b"file")
    with pytest.raises(InvalidConfigurationError, match="not a directory"):
        await _upload(store, cb, "a/b", b"x")
    await _upload(store, cb, "d/x", b"x")
    with pytest.raises(InvalidConfigurationError, match="directory"):
        await _upload(store, cb, "d", b"x")
    with pytest.raises(InvalidConfigurationError, match="directory"):
        await _download(store, cb, "d")


async def test_missing_file_is_not_found(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    cb = (await store.create("p", "")).id
    for path in ("nope", "no/such/file"):
        with pytest.raises(SandboxError, match=r"^file ") as info:
            await _download(store, cb, path)
        assert info.value.code == StatusCode.NOT_FOUND
    with pytest.raises(SandboxError, match=r"^file ") as info:
        await store.list_files(cb, "nope", False)
    assert info.value.code == StatusCode.NOT_FOUND


async def test_oversize_and_short_uploads_leave_nothing(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    cb = (await store.create("p", "")).id
    await _upload(store, cb, "keep.txt", b"old")

    with pytest.raises(ResourceLimitExceededError):
        await store.upload(cb, "keep.txt", 0, _chunks([b"x" * 1000] * 5), 4096)
    with pytest.raises(ResourceLimitExceededError):
        await store.upload(cb, "new/big", 5000, _chunks([b"x"]), 4096)
    with pytest.raises(InvalidConfigurationError, match="total_size"):
        await store.upload(cb, "new/short", 10, _chunks([b"12345"]), 4096)
    with pytest.raises(InvalidConfigurationError, match="total_size"):
        await store.upload(cb, "new/long", 3, _chunks([b"12345"]), 4096)

    async def broken() -> AsyncIterator[bytes]:
        yield b"partial"
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError):
        await store.upload(cb, "new/broken", 0, broken(), 4096)

    assert [f.path for f in await store.list_files(cb, "", True)] == ["keep.txt"]
    assert await _download(store, cb, "keep.txt") == b"old"
    assert _names(tmp_path / cb / "tmp") == []


async def test_delete_and_unknown_ids(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    cb = (await store.create("p", "")).id
    await _upload(store, cb, "a/b", b"x")
    await store.delete(cb)
    assert not (tmp_path / cb).exists()
    assert _names(tmp_path) == []
    for bad in (cb, "cb_../../etc", "nonsense", "cb_0123456789abcdef"):
        with pytest.raises(CodebaseNotFoundError, match=r"^codebase .* not found$") as info:
            await store.get(bad)
        assert info.value.code == StatusCode.NOT_FOUND
        with pytest.raises(CodebaseNotFoundError):
            await _upload(store, bad, "x", b"x")
        with pytest.raises(CodebaseNotFoundError):
            await store.delete(bad)
    reloaded = await _store(tmp_path)
    assert (await reloaded.list("", 0, ""))[0] == []


async def test_a_tenant_finds_and_lists_only_its_own_codebases_also_after_a_reload(
    tmp_path: Path,
) -> None:
    store = await _store(tmp_path)
    with calling_as("alpha"):
        theirs = await store.create("alpha's", "shared-label")
        await _upload(store, theirs.id, ".env", b"SECRET=1")
    with calling_as("beta"):
        mine = await store.create("beta's", "shared-label")
        assert (mine.tenant, mine.owner_id) == ("beta", "shared-label")
    for reloaded in (store, await _store(tmp_path)):  # (the tenant is kept in meta.json)
        with calling_as("beta"):
            for call in (
                reloaded.get(theirs.id),
                reloaded.list_files(theirs.id),
                _download(reloaded, theirs.id, ".env"),
                _upload(reloaded, theirs.id, "planted", b"x"),
                reloaded.delete(theirs.id),
            ):
                with pytest.raises(CodebaseNotFoundError) as hidden:
                    await call
                with pytest.raises(CodebaseNotFoundError) as missing:
                    await reloaded.get("cb_0000000000000000")
                assert str(hidden.value) == str(missing.value).replace(
                    "cb_0000000000000000", theirs.id
                )
            assert [r.id for r in (await reloaded.list("shared-label"))[0]] == [mine.id]
        with calling_as("alpha"):
            assert [r.id for r in (await reloaded.list())[0]] == [theirs.id]
            assert await _download(reloaded, theirs.id, ".env") == b"SECRET=1"
        assert {r.id for r in (await reloaded.list())[0]} == {theirs.id, mine.id}  # (the server)
