"""The repeated-field memo: a message decoded through it equals the message decoded whole,
whatever its fields and their order; each message gets a list of its own; the table stays
bounded, and long runs are never kept; known records skip the check, nothing else does; the
rules of the objects it shares are converted once."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentfense import _convert as convert
from agentfense import _repeated_memo as memo
from agentfense._convert import rules_from_pb
from agentfense._proto.sandbox import v1 as pb
from agentfense._repeated_memo import RepeatedMemo, split_field
from agentfense.errors import InvalidConfigurationError
from agentfense.types import Permission, PermissionRule

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


def test_the_check_sees_every_byte_until_the_records_are_known() -> None:
    """Known records were checked when first seen: later messages with them have only their
    other fields checked (a server's wire checks), and those other fields always are."""
    rules = [pb.PermissionRule(pattern="**", permission=pb.Permission(pb.Permission.READ))]
    first = bytes(pb.Sandbox(id="a", permissions=rules))
    second = bytes(pb.Sandbox(id="b", image="i", permissions=rules))
    checked: list[bytes] = []
    table = RepeatedMemo(3, "permissions")
    table.decode(first, _decode, checked.append)
    table.decode(second, _decode, checked.append)
    assert checked == [first, bytes(pb.Sandbox(id="b", image="i"))]

    def refuse(data: bytes) -> None:
        raise ValueError("refused")

    for data in (second, bytes(pb.Sandbox(permissions=[pb.PermissionRule(pattern="new")]))):
        with pytest.raises(ValueError, match="refused"):
            table.decode(data, _decode, refuse)
    assert len(table._kept) == 1  # (records refused with their message are not kept)


def test_a_list_of_rules_is_converted_once_per_set_of_objects() -> None:
    """``rules_from_pb`` keeps what it made for the very objects a memo shares between
    messages; other objects, even equal ones, are converted (and checked) anew."""
    rule = pb.PermissionRule(pattern="src/**", permission=pb.Permission(pb.Permission.READ))
    data = bytes(pb.Sandbox(permissions=[rule]))
    table = RepeatedMemo(3, "permissions")
    one, two = table.decode(data, _decode), table.decode(data, _decode)
    made = rules_from_pb(one.permissions)
    assert made == (PermissionRule("src/**", Permission.READ),)
    assert rules_from_pb(two.permissions) is made
    equal = pb.Sandbox().parse(data).permissions
    assert equal[0] is not one.permissions[0]
    assert rules_from_pb(equal) == made
    assert rules_from_pb(equal) is not made
    bad = [pb.PermissionRule(pattern="x")]  # (no level)
    for _ in range(2):  # (refused each time: nothing refused is kept)
        with pytest.raises(InvalidConfigurationError, match=r"permissions\[0\]"):
            rules_from_pb(bad)
    for n in range(convert._KEPT_LISTS * 2):
        rules_from_pb(
            [pb.PermissionRule(pattern=f"{n}", permission=pb.Permission(pb.Permission.READ))]
        )
    assert len(convert._kept) == convert._KEPT_LISTS
