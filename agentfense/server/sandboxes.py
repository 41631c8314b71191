"""The sandbox manager: the lifecycle of every sandbox (create, start, stop, destroy, expiry).

States: pending → running ⇄ stopped, and error when the runtime fails. A sandbox's processes
live from start to stop; a command enters the running sandbox through ``commands``. The
records live in ``sandbox_table``; the runtimes come from ``runtimes.lookup``. Everything here
raises the SDK's typed errors (``agentfense.errors``); the gRPC layer turns them into
statuses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import secrets
from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path

import anyio
import anyio.abc

from ..errors import (
    InvalidConfigurationError,
    ResourceLimitExceededError,
    SandboxError,
    SandboxNotFoundError,
    StatusCode,
)
from ..fs import control
from ..fs._host import remove_tree
from ..policy import uniform_level, validate_rules
from ..runtimes._uids import NoUidLeft, UidPool
from ..runtimes.base import (
    RuntimeError_,
    SandboxSpec,
)
from ..runtimes.lookup import Runtimes
from ..types import (
    CommitMode,
    Permission,
    PermissionRule,
    ResourceLimits,
    RuntimeType,
    SandboxStatus,
)
from ._contained import ContainedTaskGroup
from ._descriptors import check_headroom
from ._paths import InvalidPathError, normalize_relpath
from .audit_log import AuditLog
from .checkpoints import Checkpoints
from .codebases import CodebaseStore
from .commands import Commands, ExecParams
from .config import ServerConfig
from .execution import OnOutput, Outcome
from .fs_supervisor import FsSupervisor
from .log_lines import Value, log_event
from .metrics import ServerMetrics
from .network.policy import NetworkPolicy
from .sandbox_checks import MOST_EXPIRES_IN, check_labels, check_resources
from .sandbox_network import SandboxNetworks
from .sandbox_table import SandboxRecord, SandboxTable, now
from .session_registry import SessionRegistry

_log = logging.getLogger("agentfense.server")
_lifecycle = logging.getLogger("agentfense.server.lifecycle")


class SandboxManager:
    """Owns every sandbox of the server. Use as ``async with SandboxManager(...)``."""

    def __init__(
        self,
        config: ServerConfig,
        codebases: CodebaseStore,
        metrics: ServerMetrics,
        audit: AuditLog | None = None,
    ) -> None:
        self._config = config
        self.networks = SandboxNetworks(config, audit)
        self._metrics = metrics
        self._codebases = codebases
        self._sandboxes = SandboxTable()
        # Only root can give sandboxes uids of their own; otherwise they run as the server.
        self._uids: UidPool | None = None
        self._gid = os.getegid()
        if os.geteuid() == 0:
            self._gid = config.sandbox_uid
            if config.sandbox_uid_count:
                self._uids = UidPool(config.sandbox_uid_first, config.sandbox_uid_count)
        self._runtimes = Runtimes(
            config.state_dir,
            docker_host=config.docker_host,
            server_label=hashlib.sha256(str(config.state_dir).encode()).hexdigest()[:16],
        )
        self._runtimes[RuntimeType.BWRAP]  # (made now: it notes what a killed server left)
        self._deltas = config.state_dir / "deltas"
        self._fs = FsSupervisor(config.state_dir, on_lost=self._view_lost, metrics=metrics)
        self._task_group: anyio.abc.TaskGroup | None = None
        self._commit_locks: dict[str, anyio.Lock] = {}  # sandbox id: its commit_lock
        self._making_on: dict[str, int] = {}  # codebase id: sandboxes being made on it
        self._quotas = config.quota_table()
        self.commands = Commands(config, self.commit, metrics)
        self.checkpoints = Checkpoints(
            self._fs,
            self._deltas,
            self.commit_lock,
            (config.max_delta_entries, config.max_delta_bytes),
        )
        self.sessions = SessionRegistry(
            self._sandboxes,
            self.commands,
            lambda: self.task_group,
            most_per_sandbox=config.max_sessions_per_sandbox,
            quotas=self._quotas,
            metrics=metrics,
        )
        metrics.watch(
            lambda: [(record.status, record.runtime) for record in self._sandboxes],
            self.sessions.open_count,
        )

    def _event(
        self, event: str, record: SandboxRecord, level: int = logging.INFO, **more: Value
    ) -> None:
        """One lifecycle line of the sandbox (with its ids, owner and runtime), counted."""
        self._metrics.lifecycle.labels(event.replace(" ", "_")).inc()
        log_event(
            _lifecycle,
            level,
            event,
            sandbox_id=record.id,
            codebase_id=record.codebase_id,
            tenant=record.tenant,
            owner=record.owner_id,
            runtime=record.runtime.value,
            **more,
        )

    @property
    def task_group(self) -> anyio.abc.TaskGroup:
        """Where the server's long-lived tasks run (sandbox agents, session readers)."""
        assert self._task_group is not None
        return self._task_group

    async def __aenter__(self) -> SandboxManager:
        self._task_group = ContainedTaskGroup(anyio.create_task_group(), _log)
        await self._task_group.__aenter__()
        try:
            await self._fs.start(self._task_group)
        except BaseException:
            self._task_group.cancel_scope.cancel()
            await self._task_group.__aexit__(None, None, None)
            raise
        self._task_group.start_soon(self._expire_loop)
        for kind in RuntimeType:
            self._task_group.start_soon(self._runtimes[kind].remove_leftovers)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task_group is not None
        with anyio.CancelScope(shield=True):
            await self.shutdown()
            await self._fs.stop()
        self._task_group.cancel_scope.cancel()
        await self._task_group.__aexit__(None, None, None)
        self._runtimes.close()

    async def shutdown(self) -> None:
        """Stop every running sandbox, committing what they wrote (the server is going away)."""
        async with anyio.create_task_group() as tg:
            for record in self._sandboxes:
                tg.start_soon(self._stop_record, record)

    # -- views ------------------------------------------------------------------------------

    def _view_spec(self, record: SandboxRecord) -> control.AddView:
        config = self._config
        return control.AddView(
            id=record.id,
            lower=str(self._codebases.files_dir(record.codebase_id)),
            delta=str(self._deltas / record.id),
            rules=record.permissions,
            uid=record.host_uid,
            gid=self._gid,
            limits=control.Limits(
                delta_bytes=config.max_delta_bytes,
                delta_entries=config.max_delta_entries,
                codebase_bytes=config.max_codebase_bytes,
                codebase_entries=config.max_codebase_entries,
            ),
            review=record.commit_mode is CommitMode.MANUAL,
        )

    async def _view_lost(self, view_id: str, reason: str) -> None:
        """The view could not be served again after the fs process died: its sandbox's
        /workspace is gone, and it says so."""
        record = self._sandboxes.find(view_id)
        if record is None:
            return
        handle, record.handle = record.handle, None
        if handle is not None:
            await handle.stop()
        record.status = SandboxStatus.ERROR
        record.error = f"{reason}; destroy the sandbox and create it again"

    def codebase_root(self, record: SandboxRecord) -> Path:
        """Where the sandbox's codebase's files are on the host."""
        return self._codebases.files_dir(record.codebase_id)

    def view_owner(self, record: SandboxRecord) -> tuple[int, int]:
        """The uid and gid the sandbox's view belongs to (its processes' on the host)."""
        return record.host_uid, self._gid

    def _take_uid(self) -> int:
        """A host uid for a new sandbox (its own, when the server can give it one)."""
        if os.geteuid() != 0:
            return os.geteuid()
        if self._uids is None:
            return self._config.sandbox_uid
        try:
            return self._uids.take()
        except NoUidLeft as exc:
            raise ResourceLimitExceededError(str(exc)) from None

    def view_root(self, sandbox_id: str) -> tuple[SandboxRecord, Path]:
        """The sandbox and its view (its files as it sees them, whatever its state)."""
        record = self.get(sandbox_id)
        return record, self._fs.view_path(record.id)

    def commit_lock(self, record: SandboxRecord) -> anyio.Lock:
        """Held by every commit of the sandbox: whoever holds it (a file write putting its
        content in place) is sure that no commit sees its view half-changed."""
        return self._commit_locks.setdefault(record.id, anyio.Lock())

    async def commit(self, record: SandboxRecord) -> bool:
        """Apply what the sandbox wrote since the last commit to its codebase (under
        ``commit="manual"``, nothing: that waits for ``commit_changes``); whether a write
        was refused meanwhile for its delta limit."""
        manual = record.commit_mode is CommitMode.MANUAL
        with anyio.CancelScope(shield=True):
            async with self.commit_lock(record):
                if not self._fs.may_have_changed(record.id, since_asked=manual):
                    self._metrics.commits.labels("unchanged").inc()  # (most commands read)
                    return False
                try:
                    if manual:  # (only what its requests did, for the command's result)
                        reply = await self._fs.apply(record.id, ())
                    else:
                        reply = await self._fs.commit(record.id)
                except BaseException:
                    self._metrics.commits.labels("failed").inc()
                    raise
            await self._committed(record, reply)
        return reply.over_limit

    # -- review -----------------------------------------------------------------------------

    async def watch_events(self, sandbox_id: str, after: int, wait: float) -> control.Events:
        """The sandbox's events after ``after`` (see ``fs/_events.py``), waiting up to
        ``wait`` seconds for one; SandboxNotFoundError once the sandbox is gone."""
        record = self.get(sandbox_id)
        try:
            return await self._fs.watch_events(record.id, after, wait)
        except SandboxError:
            self.get(sandbox_id)  # (destroyed meanwhile: not found)
            raise

    async def list_changes(self, sandbox_id: str, paths: tuple[str, ...] | None) -> control.Changes:
        record = self.get(sandbox_id)
        return await self._fs.list_changes(record.id, paths)

    async def commit_changes(
        self, sandbox_id: str, paths: tuple[str, ...] | None, *, overwrite: bool
    ) -> control.Committed:
        """Apply the sandbox's changes at ``paths`` (None: all) to its codebase, checked for
        conflicts under ``commit="manual"`` unless ``overwrite``."""
        record = self.get(sandbox_id)
        with anyio.CancelScope(shield=True):  # (begun, it is seen through)
            async with self.commit_lock(record):
                reply = await self._fs.apply(record.id, paths, overwrite=overwrite)
            await self._committed(record, reply)
        return reply

    async def discard_changes(
        self, sandbox_id: str, paths: tuple[str, ...] | None
    ) -> control.Committed:
        """Give the sandbox back its codebase's entries at ``paths`` (None: everywhere)."""
        record = self.get(sandbox_id)
        with anyio.CancelScope(shield=True):
            async with self.commit_lock(record):
                reply = await self._fs.discard(record.id, paths)
        return reply

    async def _committed(self, record: SandboxRecord, reply: control.Committed) -> None:
        """Count what a commit did, and what the codebase became."""
        self._metrics.commits.labels("changed" if reply.changed else "unchanged").inc()
        self._metrics.committed_entries.inc(reply.changed)
        self._metrics.committed_bytes.inc(reply.written)
        for op, count in zip(control.FS_OPS, reply.ops, strict=True):
            if count:
                self._metrics.fs_requests.labels(op).inc(count)
        self._codebases.usage_changed(  # (its files: a number not known, if any changed)
            record.codebase_id,
            reply.bytes_delta,
            reply.entries_delta,
            None if reply.changed else 0,
        )
        if reply.changed:  # nothing changed (every read-only exec): no meta write
            try:
                await self._codebases.touch(record.codebase_id)
            except OSError as exc:  # (a full disk): the command's result matters more
                _log.warning("codebase %s: updated_at not saved: %s", record.codebase_id, exc)

    # -- queries ----------------------------------------------------------------------------

    async def codebase_changed(self, codebase_id: str, paths: list[str]) -> None:
        """An upload changed ``paths`` of the codebase: its sandboxes' kernels drop what they
        cached of them (and of the directories the upload may have made) at once."""
        changed: set[str] = set()
        for path in paths:
            with contextlib.suppress(InvalidPathError):  # (uploaded: it was valid)
                parts = normalize_relpath(path).split("/")
                changed.update("/".join(parts[: n + 1]) for n in range(len(parts)))
        with anyio.CancelScope(shield=True):
            await self._fs.changed(self._codebases.files_dir(codebase_id), sorted(changed))

    def uses_codebase(self, codebase_id: str) -> bool:
        """Whether a sandbox uses the codebase, or is being made on it."""
        return codebase_id in self._making_on or self._sandboxes.uses_codebase(codebase_id)

    @contextlib.contextmanager
    def _making(self, codebase_id: str) -> Iterator[None]:
        """A sandbox is being made on the codebase (it cannot be deleted meanwhile)."""
        self._making_on[codebase_id] = self._making_on.get(codebase_id, 0) + 1
        try:
            yield
        finally:
            left = self._making_on.pop(codebase_id) - 1
            if left:
                self._making_on[codebase_id] = left

    @property
    def fs_launches(self) -> int:
        """The permission filesystem processes started so far (a sandbox's events are its
        process's: a new one counts them anew, and knows nothing of the old one's)."""
        return self._fs.launches

    def find(self, sandbox_id: str) -> SandboxRecord | None:
        return self._sandboxes.find(sandbox_id)

    def get(self, sandbox_id: str) -> SandboxRecord:
        return self._sandboxes.get(sandbox_id)

    def list(
        self, codebase_id: str, page_size: int, page_token: str
    ) -> tuple[list[SandboxRecord], str]:
        return self._sandboxes.page(codebase_id, page_size, page_token)

    # -- lifecycle --------------------------------------------------------------------------

    async def create(
        self,
        *,
        codebase_id: str,
        permissions: Sequence[PermissionRule],
        runtime: RuntimeType,
        image: str,
        resources: ResourceLimits,
        labels: Mapping[str, str],
        expires_in: timedelta | None,
        keep_home: bool = False,
        start: bool = False,
        commit_mode: CommitMode = CommitMode.AUTO,
        network: Sequence[str] = (),
    ) -> SandboxRecord:
        """A new sandbox; with ``start``, started too (or, when it cannot start, destroyed,
        and the start's error raised)."""
        if not codebase_id:
            raise InvalidConfigurationError("codebase_id must not be empty")
        check_labels(labels)
        policy = self.networks.policy(network)
        if len(image) > 4096 or "\x00" in image:
            raise InvalidConfigurationError("image must be at most 4096 characters, without NUL")
        if expires_in is not None and expires_in < timedelta(0):
            raise InvalidConfigurationError("expires_in must not be negative")
        if expires_in is not None and expires_in > MOST_EXPIRES_IN:
            raise InvalidConfigurationError(
                f"expires_in must be at most {MOST_EXPIRES_IN.days} days"
            )
        codebase = await self._codebases.get(codebase_id)  # (the caller's, or not found)
        held = self._sandboxes.held_by(codebase.tenant)
        with self._quotas.reserve(codebase.tenant, "sandboxes", held), self._making(codebase.id):
            record = await self._make(
                codebase.id,
                codebase.owner_id,
                codebase.tenant,
                permissions=permissions,
                runtime=runtime,
                image=image,
                resources=resources,
                labels=labels,
                keep_home=keep_home,
                prepare=start,
                commit_mode=commit_mode,
                network=policy,
            )
        if expires_in:
            record.expires_at = record.created_at + expires_in
        self._event(
            "sandbox created",
            record,
            image=record.image or None,
            expires_in=expires_in.total_seconds() if expires_in else None,
        )
        return await self._started(record) if start else record

    async def _started(self, record: SandboxRecord) -> SandboxRecord:
        """The new sandbox started; destroyed (and the start's error raised) if it cannot."""
        try:
            return await self.start(record.id)
        except BaseException as exc:
            why = "could not start" if isinstance(exc, Exception) else "cancelled as it started"
            with anyio.CancelScope(shield=True):
                await self.destroy(record.id, why=why)
            raise

    async def fork(self, sandbox_id: str, *, start: bool) -> SandboxRecord:
        """A new sandbox like ``sandbox_id`` (its codebase, rules, limits, runtime, image,
        labels, commit mode), whose changes start as a copy of its changes; started too
        with ``start`` (as ``create`` does)."""
        parent = self.get(sandbox_id)
        codebase = await self._codebases.get(parent.codebase_id)
        held = self._sandboxes.held_by(codebase.tenant)
        with self._quotas.reserve(codebase.tenant, "sandboxes", held), self._making(codebase.id):
            record = await self._make(
                codebase.id,
                codebase.owner_id,
                codebase.tenant,
                permissions=parent.permissions,
                runtime=parent.runtime,
                image=parent.image,
                resources=parent.resources,
                labels=parent.labels,
                keep_home=parent.keep_home,
                prepare=start,
                commit_mode=parent.commit_mode,
                network=parent.network,
                seed=parent,
            )
        self._event("sandbox forked", record, parent=parent.id)
        return await self._started(record) if start else record

    async def _make(
        self,
        codebase_id: str,
        owner_id: str,
        tenant: str,
        *,
        permissions: Sequence[PermissionRule],
        runtime: RuntimeType,
        image: str,
        resources: ResourceLimits,
        labels: Mapping[str, str],
        keep_home: bool,
        prepare: bool,
        commit_mode: CommitMode,
        network: NetworkPolicy,
        seed: SandboxRecord | None = None,
    ) -> SandboxRecord:
        """The new sandbox, in the table when this returns (its quota reserved meanwhile).
        With ``prepare`` (a start follows at once), its runtime begins the start's longest
        wait meanwhile (``Runtime.prepare``; ``start`` takes it, ``destroy`` lets it go)."""
        resources = self._with_server_limits(resources, runtime)
        check_resources(resources)
        validate_rules(permissions)
        await self._check_runtime(runtime, image, resources)
        record = SandboxRecord(
            id="sb_" + secrets.token_hex(8),
            codebase_id=codebase_id,
            permissions=tuple(permissions),
            runtime=runtime,
            image=image,
            resources=resources,
            labels=dict(labels),
            owner_id=owner_id,
            tenant=tenant,
            keep_home=keep_home,
            commit_mode=commit_mode,
        )
        self.networks.give(record, network)
        record.host_uid = self._take_uid()
        if prepare and _has_headroom():  # (else the start refuses, before it begins anything)
            record.prepared = self._runtimes[runtime].prepare(record.id, resources, self.task_group)
        try:
            if seed is not None:  # (its delta: a copy of the parent's layer)
                await self.checkpoints.seed(seed, self._deltas / record.id)
            spec = dataclasses.replace(self._view_spec(record), seeded=seed is not None)
            await self._fs.add_view(spec, seeded=seed is not None)
        except BaseException:
            _release_prepared(record)
            self._release_uid(record)
            if seed is not None:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(remove_tree, self._deltas / record.id)
            raise
        self._sandboxes.add(record)
        return record

    def _release_uid(self, record: SandboxRecord) -> None:
        if self._uids is not None:
            self._uids.release(record.host_uid)

    def _with_server_limits(
        self, resources: ResourceLimits, runtime: RuntimeType
    ) -> ResourceLimits:
        """The server's default limits where the request sets none; its maxima enforced."""
        values = {}
        # A runtime that cannot enforce limits here (bwrap in a server not root) starts
        # sandboxes without the default ones rather than refuse them all.
        defaults = self._runtimes[runtime].limits_problem() is None
        for name in ("memory_bytes", "cpu_quota", "pids_limit"):
            most = getattr(self._config, f"max_{name}")
            default = getattr(self._config, f"default_{name}") if defaults else 0
            value = getattr(resources, name) or (min(default, most) if most else default)
            value = value or most or None  # with a maximum, "no limit" is the maximum
            if most and value and value > most:
                raise InvalidConfigurationError(
                    f"resources.{name} must be at most {most} on this server (max_{name})"
                )
            values[name] = value
        return dataclasses.replace(resources, **values)

    async def _check_runtime(
        self, runtime: RuntimeType, image: str, resources: ResourceLimits
    ) -> None:
        """Refuse, with a sentence, a sandbox this server cannot run."""
        if runtime is RuntimeType.DOCKER and not image:
            raise InvalidConfigurationError("image is required with runtime 'docker'")
        problem = await self._runtimes[runtime].problem(image, resources)
        if problem is not None:
            raise SandboxError(problem, code=StatusCode.FAILED_PRECONDITION)

    async def start(self, sandbox_id: str) -> SandboxRecord:
        record = self.get(sandbox_id)
        try:
            return await self._start(record)
        finally:
            _release_prepared(record)  # (what the start did not take)

    async def _start(self, record: SandboxRecord) -> SandboxRecord:
        async with record.lock:
            if record.status is SandboxStatus.RUNNING and record.handle and record.handle.alive:
                return record
            assert self._task_group is not None
            check_headroom(f"sandbox {record.id} cannot start")
            dead, record.handle = record.handle, None
            if dead is not None:  # its processes died: what is left of them goes first
                await dead.stop()
            began = anyio.current_time()
            await self._fs.wait_ready()
            spec = SandboxSpec(
                sandbox_id=record.id,
                workspace=self._fs.view_path(record.id),
                host_uid=record.host_uid,
                host_gid=self._gid,
                image=record.image,
                resources=record.resources,
                keep_home=record.keep_home,
                max_processes=self._config.sandbox_max_processes,
                tmpfs_bytes=self._config.sandbox_tmpfs_bytes,
                read_only_source=(
                    self._codebases.files_dir(record.codebase_id)
                    if uniform_level(record.permissions) is Permission.READ
                    else None
                ),
            )
            try:
                runtime = self._runtimes[record.runtime]
                prepared, record.prepared = record.prepared, None
                record.handle = await runtime.start(spec, self._task_group, prepared)
                try:
                    await self.networks.start(record, record.handle, self._task_group)
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        handle, record.handle = record.handle, None
                        await handle.stop()
                    raise
            except RuntimeError_ as exc:  # (what the caller can act on: limits, the image...)
                record.status, record.error = SandboxStatus.ERROR, str(exc)
                self._event("sandbox start failed", record, logging.WARNING, error=str(exc))
                raise SandboxError(
                    f"sandbox {record.id} could not start: {exc}",
                    code=StatusCode.FAILED_PRECONDITION,
                ) from None
            record.status, record.error = SandboxStatus.RUNNING, ""
            record.started_at, record.stopped_at = now(), None
            self._event("sandbox started", record, seconds=anyio.current_time() - began)
            return record

    async def stop(self, sandbox_id: str) -> SandboxRecord:
        record = self.get(sandbox_id)
        await self._stop_record(record)
        return record

    async def _stop_record(self, record: SandboxRecord) -> None:
        with anyio.CancelScope(shield=True):
            async with record.lock:
                await self.sessions.close_all(record.id, forget=False)
                handle, record.handle = record.handle, None
                self.networks.stop(record)
                if handle is not None:
                    await handle.stop()
                    await self.commit(record)
                if record.status is SandboxStatus.RUNNING:
                    record.status = SandboxStatus.STOPPED
                    record.stopped_at = now()
                    ran = record.stopped_at - (record.started_at or record.stopped_at)
                    self._event("sandbox stopped", record, ran_seconds=ran.total_seconds())

    async def destroy(self, sandbox_id: str, *, why: str = "requested") -> None:
        record = self.get(sandbox_id)
        await self._stop_record(record)
        with anyio.CancelScope(shield=True):
            _release_prepared(record)
            await self.commit(record)  # what file operations of a stopped sandbox wrote
            self._sandboxes.remove(record.id)
            self._commit_locks.pop(record.id, None)
            await self.sessions.close_all(record.id, forget=True)
            await self._fs.remove_view(record.id)
            await anyio.to_thread.run_sync(remove_tree, self._deltas / record.id)
            self._release_uid(record)
        lived = now() - record.created_at
        self._event("sandbox destroyed", record, why=why, lived_seconds=lived.total_seconds())

    async def _expire_loop(self) -> None:
        """Destroy each sandbox past its expiry. One whose destroy fails is marked (status
        error, with why) and tried again later, ever less often: never the loop's end."""
        interval = self._config.expiry_check_interval
        retry: dict[str, tuple[float, float]] = {}  # sandbox id: (next attempt, back-off)
        while True:
            await anyio.sleep(interval)
            moment = now()
            for record in self._sandboxes:
                if record.expires_at is None or record.expires_at > moment:
                    continue
                attempt_at, back_off = retry.get(record.id, (0.0, interval))
                if anyio.current_time() < attempt_at:
                    continue
                if record.id not in retry:
                    self._event("sandbox expired", record, expires_at=record.expires_at.isoformat())
                try:
                    await self.destroy(record.id, why="expired")
                except SandboxNotFoundError:  # destroyed meanwhile
                    pass
                except Exception as exc:
                    back_off = min(back_off * 2, 60.0)
                    retry[record.id] = (anyio.current_time() + back_off, back_off)
                    why = exc.message if isinstance(exc, SandboxError) else repr(exc)
                    _log.error("sandbox %s expired but could not be destroyed: %s", record.id, why)
                    if record.id in self._sandboxes:
                        record.status = SandboxStatus.ERROR
                        record.error = (
                            f"the sandbox expired but could not be destroyed ({why}); "
                            f"the server tries again in {back_off:g} s"
                        )
                    continue
                retry.pop(record.id, None)
            for gone in [ident for ident in retry if ident not in self._sandboxes]:
                del retry[gone]

    # -- commands ---------------------------------------------------------------------------

    async def exec(
        self, sandbox_id: str, params: ExecParams, on_output: OnOutput | None = None
    ) -> Outcome:
        record, handle = self._sandboxes.running(sandbox_id)
        return await self.commands.exec(record, handle, params, on_output)

    def __iter__(self) -> Iterator[SandboxRecord]:
        return iter(self._sandboxes)


__all__ = ["ExecParams", "SandboxManager", "SandboxRecord"]


def _has_headroom() -> bool:
    """Whether a start would pass ``check_headroom``: what it begins ahead
    (``Runtime.prepare``) takes descriptors too, and with none left it could not even be
    let go whole (removing a cgroup lists it)."""
    try:
        check_headroom("")
    except ResourceLimitExceededError:
        return False
    return True


def _release_prepared(record: SandboxRecord) -> None:
    prepared, record.prepared = record.prepared, None
    if prepared is not None:
        prepared.release()
