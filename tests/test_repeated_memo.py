"""The repeated-field memo: a message decoded through it equals the message decoded whole,
whatever its fields and their order; each message gets a list of its own; the table stays
bounded, and long runs are never kept."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from agentfense import _repeated_memo as memo
from agentfense._proto.sandbox import v1 as pb
from agentfense._repeated_memo import RepeatedMemo, split_field

rules = st.builds(
    pb.PermissionRule,
    pattern=st.text(max_size=40),
    type=st.sampled_from(list(pb.PatternType)),
    permission=st.sampled_from(list(pb.Permission)),
    priority=st.integers(-(2**31), 2**31 - 1),
)
sandboxes = st.builds(
    pb.Sandbox,
    id=st.text(max_size=20),
    codebase_id=st.text(max_size=20),
    permissions=st.lists(rules, max_size=12),
    labels=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=4),
    created_at=st.datetimes(
        min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
    ),
    image=st.text(max_size=20),
    keep_home=st.booleans(),
)


def _decode(raw: bytes) -> pb.Sandbox:
    return pb.Sandbox().parse(raw)


@given(sandboxes)
def test_a_message_decoded_through_the_memo_is_the_message(sandbox: pb.Sandbox) -> None:
    data = bytes(sandbox)
    table = RepeatedMemo(3, "permissions")
    assert table.decode(data, _decode) == pb.Sandbox().parse(data)
    assert table.decode(data, _decode) == pb.Sandbox().parse(data)  # (kept, the second time)


@given(sandboxes)
def test_records_interleaved_with_other_fields_keep_their_order(sandbox: pb.Sandbox) -> None:
    # Proto allows a repeated field's records anywhere among the others: put each rule's
    # record after another field's.
    split = split_field(bytes(sandbox), 3)
    assert split is not None
    rest, records = split
    interleaved = b"".join(
        bytes(pb.Sandbox(permissions=[rule])) + bytes(pb.Sandbox(image=f"{n}"))
        for n, rule in enumerate(sandbox.permissions)
    )
    data = rest + interleaved
    assert RepeatedMemo(3, "permissions").decode(data, _decode) == pb.Sandbox().parse(data)
    assert records == b"".join(bytes(pb.Sandbox(permissions=[r])) for r in sandbox.permissions)


def test_each_message_gets_a_list_of_its_own() -> None:
    data = bytes(pb.Sandbox(id="a", permissions=[pb.PermissionRule(pattern="**")]))
    table = RepeatedMemo(3, "permissions")
    first, second = table.decode(data, _decode), table.decode(data, _decode)
    first.permissions.append(pb.PermissionRule(pattern="more"))
    assert [r.pattern for r in second.permissions] == ["**"]
    assert [r.pattern for r in table.decode(data, _decode).permissions] == ["**"]


def test_the_table_is_bounded_and_long_runs_are_not_kept() -> None:
    table = RepeatedMemo(3, "permissions")
    for n in range(memo.MOST * 3):
        table.decode(bytes(pb.Sandbox(permissions=[pb.PermissionRule(pattern=f"{n}")])), _decode)
    assert len(table._kept) == memo.MOST
    long = pb.Sandbox(permissions=[pb.PermissionRule(pattern="x" * 4000) for _ in range(20)])
    assert len(bytes(long)) > memo.MOST_BYTES
    assert table.decode(bytes(long), _decode) == long
    assert len(table._kept) == memo.MOST
    assert all(len(kept) <= memo.MOST_BYTES for kept in table._kept)


def test_bytes_that_do_not_scan_go_to_the_decoder_whole() -> None:
    broken = bytes(pb.Sandbox(id="a")) + b"\x1a\xff"  # field 3, a length past the end
    assert split_field(broken, 3) is None
    seen: list[bytes] = []

    def decode(raw: bytes) -> pb.Sandbox:
        seen.append(raw)
        return pb.Sandbox()

    RepeatedMemo(3, "permissions").decode(broken, decode)
    assert seen == [broken]
