"""Checkpoints of a sandbox's changes: its layer (what it wrote and deleted, and the bases of
a manual sandbox) copied aside by the fs process, given back on a restore, and the seed of a
fork. Processes are not checkpointed: a restore changes files under whatever runs.

Only sandboxes under ``commit="manual"`` have checkpoints: under ``auto`` every command's
changes are in the codebase when it ends, and the layer between two commands is empty.
Each checkpoint lives in the sandbox's delta directory (gone with the sandbox, or with the
server, as the delta is), at most :data:`MAX_CHECKPOINTS` per sandbox. It costs a name per
file of the layer (its files are linked, and copied only when the sandbox changes one: see
``fs/_shared.py``), and an inode per directory, symlink and file it must copy (one the
sandbox gave several names), with that file's blocks. A sandbox's checkpoints together may
take of the disk what its delta may (``max_delta_entries`` inodes, ``max_delta_bytes``):
past that, a checkpoint is refused until some are deleted. A fork's seed may take what a
delta may.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

import anyio

from ..errors import (
    InvalidConfigurationError,
    ResourceLimitExceededError,
    SandboxError,
    StatusCode,
)
from ..fs._host import remove_tree
from ..types import CommitMode
from .fs_supervisor import FsSupervisor
from .sandbox_table import CheckpointRecord, SandboxRecord, now

MAX_CHECKPOINTS = 64
MAX_NAME = 256


class Checkpoints:
    def __init__(
        self,
        fs: FsSupervisor,
        deltas: Path,
        commit_lock: Callable[[SandboxRecord], anyio.Lock],
        limits: tuple[int, int],
    ) -> None:
        self._fs = fs
        self._deltas = deltas
        self._commit_lock = commit_lock
        self._most_entries, self._most_bytes = limits  # (a delta's: max_delta_*)

    def _dir(self, record: SandboxRecord, checkpoint_id: str = "") -> Path:
        where = self._deltas / record.id / "checkpoints"
        return where / checkpoint_id if checkpoint_id else where

    @staticmethod
    def _check_manual(record: SandboxRecord) -> None:
        if record.commit_mode is not CommitMode.MANUAL:
            raise SandboxError(
                f"sandbox {record.id} commits after every command (commit='auto'): it has "
                "no changes to checkpoint between commands; create it with commit='manual'",
                code=StatusCode.FAILED_PRECONDITION,
            )

    def _get(self, record: SandboxRecord, checkpoint_id: str) -> CheckpointRecord:
        found = record.checkpoints.get(checkpoint_id)
        if found is None:
            raise SandboxError(
                f"checkpoint {checkpoint_id[:64]!r} of sandbox {record.id} not found",
                code=StatusCode.NOT_FOUND,
            )
        return found

    async def create(self, record: SandboxRecord, name: str) -> CheckpointRecord:
        self._check_manual(record)
        if len(name) > MAX_NAME or "\x00" in name:
            raise InvalidConfigurationError(f"name must be at most {MAX_NAME} characters, no NUL")
        self._check_room(record)
        ident = "cp_" + secrets.token_hex(8)
        target = self._dir(record, ident)
        with anyio.CancelScope(shield=True):  # (begun, it is seen through or undone)
            await anyio.to_thread.run_sync(lambda: target.parent.mkdir(exist_ok=True))
            async with self._commit_lock(record):
                # Counted again here, and recorded before the lock goes: calls at once all
                # passed the first count, and each would have added its checkpoint.
                self._check_room(record)
                held = record.checkpoints.values()
                try:
                    captured = await self._fs.capture(
                        record.id,
                        target,
                        max(0, self._most_entries - sum(cp.made for cp in held)),
                        max(0, self._most_bytes - sum(cp.allocated for cp in held)),
                    )
                except ResourceLimitExceededError:
                    await anyio.to_thread.run_sync(remove_tree, target)
                    raise ResourceLimitExceededError(
                        f"sandbox {record.id}'s checkpoints would take more of the disk than "
                        f"its changes may ({self._most_entries} inodes, {self._most_bytes} "
                        "bytes: max_delta_entries, max_delta_bytes, for all of them together; "
                        "a file it gave several names and each directory are copied, its "
                        "other files linked); delete some first"
                    ) from None
                except BaseException:
                    await anyio.to_thread.run_sync(remove_tree, target)
                    raise
                checkpoint = CheckpointRecord(
                    ident,
                    record.id,
                    name,
                    now(),
                    captured.entries,
                    captured.bytes,
                    captured.made,
                    captured.allocated,
                )
                record.checkpoints[ident] = checkpoint
        return checkpoint

    @staticmethod
    def _check_room(record: SandboxRecord) -> None:
        if len(record.checkpoints) >= MAX_CHECKPOINTS:
            raise ResourceLimitExceededError(
                f"sandbox {record.id} has {MAX_CHECKPOINTS} checkpoints, the most it may "
                "have; delete some first"
            )

    def list(self, record: SandboxRecord) -> list[CheckpointRecord]:
        return list(record.checkpoints.values())

    async def restore(self, record: SandboxRecord, checkpoint_id: str) -> CheckpointRecord:
        self._check_manual(record)
        checkpoint = self._get(record, checkpoint_id)
        with anyio.CancelScope(shield=True):
            async with self._commit_lock(record):
                await self._fs.restore(record.id, self._dir(record, checkpoint.id))
        return checkpoint

    async def delete(self, record: SandboxRecord, checkpoint_id: str) -> None:
        checkpoint = self._get(record, checkpoint_id)
        with anyio.CancelScope(shield=True):
            # Under the lock a restore holds: its checkpoint is not removed as it is read.
            async with self._commit_lock(record):
                if record.checkpoints.pop(checkpoint.id, None) is None:
                    return  # (deleted by a call at once)
                await anyio.to_thread.run_sync(remove_tree, self._dir(record, checkpoint.id))

    async def seed(self, parent: SandboxRecord, delta: Path) -> None:
        """Make ``delta`` (a new sandbox's, not there yet) a copy of ``parent``'s layer."""
        with anyio.CancelScope(shield=True):
            async with self._commit_lock(parent):
                try:
                    await self._fs.capture(parent.id, delta, self._most_entries, self._most_bytes)
                except BaseException:
                    await anyio.to_thread.run_sync(remove_tree, delta)
                    raise
