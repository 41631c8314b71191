"""What the server puts on the wire is what the SDK reads back: Hypothesis round trips
through real message bytes, server conversion out, SDK conversion in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TypeVar

import betterproto
from hypothesis import given
from hypothesis import strategies as st

from agentfense import _convert as sdk
from agentfense import _timeouts as timeouts
from agentfense._proto.sandbox import v1 as pb
from agentfense.server._codebase_tree import FileRecord
from agentfense.server._grpc import convert
from agentfense.server.codebases import CodebaseRecord
from agentfense.server.commands import ExecParams
from agentfense.server.execution import Outcome
from agentfense.server.sandbox_table import SandboxRecord
from agentfense.types import (
    PatternType,
    Permission,
    PermissionRule,
    ResourceLimits,
    RuntimeType,
    SandboxStatus,
)

M = TypeVar("M", bound=betterproto.Message)

text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"))
moments = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(9000, 1, 1), timezones=st.just(UTC)
).map(lambda moment: moment.replace(microsecond=moment.microsecond // 1000 * 1000))
ids = st.from_regex(r"\Asb_[0-9a-f]{16}\Z")
limits = st.builds(
    ResourceLimits,
    memory_bytes=st.none() | st.integers(1, 2**62),
    cpu_quota=st.none() | st.integers(1, 10**9),
    cpu_shares=st.none() | st.integers(2, 262_144),
    pids_limit=st.none() | st.integers(8, 4_194_304),
)
rules = st.builds(
    PermissionRule,
    pattern=st.from_regex(r"\A[a-z*/._-]{1,40}\Z"),
    permission=st.sampled_from(Permission),
    type=st.sampled_from(PatternType),
    priority=st.integers(-(2**31), 2**31 - 1),
)


def _wire(message: M) -> M:
    """``message`` after a trip through its bytes."""
    return type(message)().parse(bytes(message))


@given(
    ident=ids,
    status=st.sampled_from(SandboxStatus),
    runtime=st.sampled_from(RuntimeType),
    permissions=st.lists(rules, max_size=5).map(tuple),
    labels=st.dictionaries(text.filter(bool), text, max_size=4),
    resources=limits,
    created=moments,
    started=st.none() | moments,
    expires=st.none() | moments,
    keep_home=st.booleans(),
)
def test_a_sandbox_reads_back_as_it_was_sent(
    ident: str,
    status: SandboxStatus,
    runtime: RuntimeType,
    permissions: tuple[PermissionRule, ...],
    labels: dict[str, str],
    resources: ResourceLimits,
    created: datetime,
    started: datetime | None,
    expires: datetime | None,
    keep_home: bool,
) -> None:
    record = SandboxRecord(
        id=ident,
        codebase_id="cb_0123456789abcdef",
        permissions=permissions,
        runtime=runtime,
        image="python:3.11-slim",
        resources=resources,
        labels=labels,
        status=status,
        created_at=created,
        started_at=started,
        expires_at=expires,
        keep_home=keep_home,
    )
    info = sdk.sandbox_from_pb(pb.Sandbox().parse(convert.sandbox_reply(record).data))
    assert info == sdk.sandbox_from_pb(_wire(convert.sandbox_to_pb(record)))  # (in a listing)
    assert (info.id, info.codebase_id, info.status, info.runtime) == (
        ident,
        record.codebase_id,
        status,
        runtime,
    )
    assert (info.permissions, dict(info.labels), info.resources) == (permissions, labels, resources)
    assert (info.created_at, info.started_at, info.expires_at) == (created, started, expires)
    assert (info.image, info.keep_home) == (record.image, keep_home)


def test_a_replys_rules_are_encoded_once_per_set_and_a_long_set_never_kept() -> None:
    def record(permissions: tuple[PermissionRule, ...]) -> SandboxRecord:
        return SandboxRecord(
            "sb_0123456789abcdef", "cb_1", permissions, RuntimeType.BWRAP, "", ResourceLimits(), {}
        )

    few = tuple(PermissionRule(f"dir{n}/**") for n in range(3))
    many = tuple(PermissionRule(f"file{n}", type=PatternType.FILE) for n in range(600))
    kept = convert._kept_rules_field
    kept.cache_clear()
    for _ in range(3):
        convert.sandbox_reply(record(few))
    assert (kept.cache_info().misses, kept.cache_info().hits) == (1, 2)
    reply = convert.sandbox_reply(record(many))
    assert kept.cache_info().currsize == 1
    assert sdk.sandbox_from_pb(pb.Sandbox().parse(reply.data)).permissions == many


@given(rule=rules)
def test_a_rule_reads_back_as_it_was_sent(rule: PermissionRule) -> None:
    assert sdk.rule_from_pb(_wire(sdk.rule_to_pb(rule))) == rule


@given(
    stdout=st.binary(max_size=200),
    stderr=st.binary(max_size=200),
    exit_code=st.integers(-(2**31), 2**31 - 1),
    duration=st.floats(0, 10**6),
    limit=st.sampled_from(["", "memory", "pids", "disk"]),
)
def test_an_outcome_reads_back_as_its_result(
    stdout: bytes, stderr: bytes, exit_code: int, duration: float, limit: str
) -> None:
    outcome = Outcome(stdout, stderr, exit_code, duration, timed_out=False, limit_exceeded=limit)
    result = sdk.exec_result_from_pb(_wire(convert.exec_result_to_pb(outcome)))
    assert result.stdout == stdout.decode(errors="replace")
    assert result.stderr == stderr.decode(errors="replace")
    assert result.exit_code == exit_code
    assert abs(result.duration - timedelta(seconds=duration)) <= timedelta(microseconds=1)
    assert result.limit_exceeded == (limit or None)


@given(
    command=text.filter(str.strip),
    stdin=text,
    env=st.dictionaries(st.from_regex(r"\A[A-Z_][A-Z0-9_]{0,10}\Z"), text, max_size=4),
    workdir=text,
    timeout=st.none() | st.just(0.0) | st.floats(0.001, 10**5),
)
def test_an_exec_request_reads_back_as_its_parameters(
    command: str, stdin: str, env: dict[str, str], workdir: str, timeout: float | None
) -> None:
    request = pb.ExecRequest(sandbox_id="sb_0", command=command, stdin=stdin, env=env)
    request.workdir = workdir
    duration, request.no_timeout = timeouts.to_wire(timeout)
    if duration is not None:
        request.timeout = duration
    params = convert.exec_params_from_pb(_wire(request))
    assert params == ExecParams(
        command=command,
        stdin=stdin.encode(),
        env=env,
        workdir=workdir,
        timeout=params.timeout,
    )
    if timeout is None or timeout == 0:
        assert params.timeout == timeout
    else:
        assert params.timeout is not None
        assert abs(params.timeout - timeout) < 1e-6


@given(
    name=text, owner=text, size=st.integers(0, 2**62), count=st.integers(0, 2**31 - 1), at=moments
)
def test_a_codebase_reads_back_as_it_was_sent(
    name: str, owner: str, size: int, count: int, at: datetime
) -> None:
    record = CodebaseRecord("cb_0123456789abcdef", name, owner, created_at=at, updated_at=at)
    codebase = sdk.codebase_from_pb(_wire(convert.codebase_to_pb(record, size, count)))
    assert (codebase.id, codebase.name, codebase.owner_id) == (record.id, name, owner)
    assert (codebase.size, codebase.file_count) == (size, count)
    assert (codebase.created_at, codebase.updated_at) == (at, at)


@given(path=st.from_regex(r"\A[a-z]{1,8}(/[a-z]{1,8}){0,3}\Z"), size=st.integers(0, 2**62))
def test_a_file_entry_reads_back_as_it_was_sent(path: str, size: int) -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    record = FileRecord(path, path.rsplit("/", 1)[-1], is_dir=False, size=size, modified_at=at)
    info = sdk.file_info_from_pb(_wire(convert.file_info_to_pb(record)))
    assert (info.path, info.name, info.is_dir, info.size, info.modified_at) == (
        path,
        record.name,
        False,
        size,
        at,
    )
