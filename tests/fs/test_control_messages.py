"""The fs control channel's messages (no fs process): every message survives encode and
decode unchanged, and decode refuses anything ``encode`` does not make with one typed
error, a sentence, and the request's ``seq`` when that much could be read."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentfense._json_messages import MAX_INT, MessageError
from agentfense.fs import control
from agentfense.types import PatternType, Permission, PermissionRule

seqs = st.integers(0, MAX_INT)
counts = st.integers(0, MAX_INT)
# What the kernel takes as a name or a path: no NUL, not empty.
paths = st.text(st.characters(blacklist_characters="\x00"), min_size=1)
rules = st.builds(
    PermissionRule,
    pattern=st.text(min_size=1).filter(lambda p: p.strip() and "\x00" not in p),
    permission=st.sampled_from(Permission),
    type=st.sampled_from(PatternType),
    priority=st.integers(-MAX_INT, MAX_INT),
)
limits = st.builds(
    control.Limits,
    delta_bytes=counts,
    delta_entries=counts,
    codebase_bytes=counts,
    codebase_entries=counts,
    node_bytes=counts,
)
selections = st.none() | st.lists(st.text()).map(tuple)
requests = st.one_of(
    st.builds(
        control.AddView,
        id=paths,
        lower=paths,
        delta=paths,
        rules=st.lists(rules, max_size=5).map(tuple),
        uid=st.integers(0, control.MAX_UID),
        gid=st.integers(0, control.MAX_UID),
        limits=limits,
        recover=st.booleans(),
        seq=seqs,
    ),
    st.builds(control.RemoveView, id=paths, seq=seqs),
    st.builds(control.Commit, id=paths, seq=seqs),
    st.builds(control.ListChanges, id=paths, paths=selections, seq=seqs),
    st.builds(control.Apply, id=paths, paths=selections, overwrite=st.booleans(), seq=seqs),
    st.builds(control.Discard, id=paths, paths=selections, seq=seqs),
    st.builds(
        control.Capture, id=paths, target=paths, most_entries=counts, most_bytes=counts, seq=seqs
    ),
    st.builds(control.Restore, id=paths, source=paths, seq=seqs),
    st.builds(control.Changed, lower=paths, paths=st.lists(st.text()).map(tuple), seq=seqs),
    st.builds(control.Ping, seq=seqs),
)
replies = st.one_of(
    st.builds(control.Done, seq=seqs),
    st.builds(
        control.Committed,
        changed=counts,
        kept=counts,
        over_limit=st.booleans(),
        written=counts,
        ops=st.lists(counts, min_size=len(control.FS_OPS), max_size=len(control.FS_OPS)).map(tuple),
        applied=st.lists(st.text()).map(tuple),
        conflicts=st.lists(st.tuples(st.text(), st.text())).map(tuple),
        seq=seqs,
    ),
    st.builds(
        control.Changes,
        changes=st.lists(
            st.builds(
                control.ChangeEntry,
                path=st.text(),
                kind=st.sampled_from(["added", "modified", "deleted", "type_changed"]),
                type=st.sampled_from(["file", "directory", "symlink", "other"]),
                size=counts,
                mode=st.integers(0, 0o7777),
            ),
            max_size=4,
        ).map(tuple),
        total=counts,
        seq=seqs,
    ),
    st.builds(
        control.Captured, entries=counts, bytes=counts, made=counts, allocated=counts, seq=seqs
    ),
    st.builds(control.Failed, message=st.text(), seq=seqs),
)


@settings(deadline=None)  # a shared 2-core machine: time is no property here
@given(requests)
def test_every_request_round_trips(message: control.Request) -> None:
    data = message.encode()
    assert control.decode_request(data) == message
    assert type(message).decode(data) == message


@settings(deadline=None)  # a shared 2-core machine: time is no property here
@given(replies)
def test_every_reply_round_trips(message: control.Reply) -> None:
    data = message.encode()
    assert control.decode_reply(data) == message
    assert type(message).decode(data) == message


def _commit(**changes: object) -> bytes:
    fields: dict[str, object] = {"op": "commit", "seq": 7, "id": "sb_1"}
    fields.update(changes)
    return json.dumps({k: v for k, v in fields.items() if v is not ...}).encode()


def _refused(data: bytes, *words: str) -> MessageError:
    with pytest.raises(MessageError) as caught:
        control.decode_request(data)
    for word in words:
        assert word in str(caught.value)
    return caught.value


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (_commit(id=5), ("commit", "id must be a string", "5")),
        (_commit(id=""), ("id must be a path",)),
        (_commit(id="a\x00b"), ("id must be a path",)),
        (_commit(id=...), ("'id' is missing",)),
        (_commit(extra=1), ("unknown fields ['extra']",)),
        (_commit(op="format"), ("op 'format' is not one of", "add_view")),
        (_commit(op=...), ("op None",)),
        (_commit(op="done"), ("op 'done' is not one of",)),  # a reply is no request
    ],
)
def test_a_malformed_request_is_refused_and_says_which_it_was(
    data: bytes, words: tuple[str, ...]
) -> None:
    """Its seq comes along: the fs process answers that request with Failed."""
    assert _refused(data, *words).seq == 7


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (_commit(seq="7"), ("seq must be an integer",)),
        (_commit(seq=-1), ("seq must be an integer",)),
        (_commit(seq=1 << 63), ("seq must be an integer",)),
        (_commit(seq=True), ("seq must be an integer",)),
        (_commit(seq=...), ("'seq' is missing",)),
        (b"\xff\xfe", ("not JSON",)),
        (b"{", ("not JSON",)),
        (b"[1, 2]", ("a JSON list, not an object",)),
        (b"[" * 100_000 + b"]" * 100_000, ("nested too deeply",)),
        (b"", ("not JSON",)),
    ],
)
def test_a_message_with_no_readable_seq_is_refused(data: bytes, words: tuple[str, ...]) -> None:
    assert _refused(data, *words).seq is None


def test_fields_of_the_wrong_type_are_refused() -> None:
    spec = control.AddView(
        id="sb_1", lower="/c", delta="/d", rules=(PermissionRule("**"),), uid=1000, gid=1000
    )
    good = json.loads(spec.encode())
    for name, bad, words in [
        ("uid", "1000", "uid must be an integer"),
        ("uid", 1000.0, "uid must be an integer"),
        ("uid", True, "uid must be an integer"),
        ("uid", -1, "uid must be an integer from 0"),
        ("gid", 1 << 32, "gid must be an integer"),
        ("recover", 1, "recover must be true or false"),
        ("rules", {"pattern": "**"}, "rules must be a list of objects"),
        ("rules", ["**"], "rules must be a list of objects"),
        ("limits", [], "limits must be an object"),
    ]:
        _refused(json.dumps({**good, name: bad}).encode(), "add_view", words)
    for name, bad, words in [
        ("delta_bytes", -5, "add_view.limits: delta_bytes must be an integer from 0"),
        ("node_bytes", None, "node_bytes must be an integer"),
    ]:
        data = json.dumps({**good, "limits": {**good["limits"], name: bad}}).encode()
        _refused(data, words)
    rule = good["rules"][0]
    bad_rules: list[tuple[dict[str, object], str]] = [
        ({"permission": "own"}, "add_view.rules[0]: permission must be one of"),
        ({"type": "regex"}, "pattern type must be one of"),
        ({"pattern": ""}, "pattern must be a non-empty string"),
        ({"priority": 1.5}, "priority must be an integer"),
        ({"owner": "me"}, "unknown fields ['owner']"),
    ]
    for changes, words in bad_rules:
        _refused(json.dumps({**good, "rules": [{**rule, **changes}]}).encode(), words)
    missing = {k: v for k, v in rule.items() if k != "type"}
    _refused(json.dumps({**good, "rules": [missing]}).encode(), "'type' is missing")


def test_replies_are_checked_as_strictly() -> None:
    committed = json.loads(control.Committed(3, 1, False, 10, seq=9).encode())
    for name, bad in [("changed", "3"), ("kept", -1), ("over_limit", 0), ("written", -1)]:
        with pytest.raises(MessageError, match=f"committed: {name} must be") as caught:
            control.decode_reply(json.dumps({**committed, name: bad}).encode())
        assert caught.value.seq == 9
    for ops, words in [
        ({"read": -1}, "committed.ops: read must be"),
        ({"no_such_op": 1}, r"committed.ops: unknown fields \['no_such_op'\]"),
        ([1, 2], "committed: ops must be an object"),
    ]:
        with pytest.raises(MessageError, match=words):
            control.decode_reply(json.dumps({**committed, "ops": ops}).encode())
    bad_fields: list[tuple[dict[str, object], str]] = [
        ({"conflicts": [{"path": "a"}]}, r"committed.conflicts\[0\]: the field 'why' is missing"),
        ({"applied": [1]}, "applied must be a list of strings"),
    ]
    for bad, words in bad_fields:
        with pytest.raises(MessageError, match=words):
            control.decode_reply(json.dumps({**committed, **bad}).encode())
    changes = json.loads(control.Changes((), 0, seq=9).encode())
    entry = {"path": "a", "kind": "added", "type": "file", "size": 1, "mode": 0o644}
    bad_entries: list[tuple[dict[str, object], str]] = [
        ({"kind": "renamed"}, "kind 'renamed' or type 'file' is not known"),
        ({"type": "socket"}, "type 'socket' is not known"),
        ({"size": -1}, "size must be an integer from 0"),
    ]
    for change, words in bad_entries:
        bad_changes = {**changes, "changes": [{**entry, **change}]}
        with pytest.raises(MessageError, match=words):
            control.decode_reply(json.dumps(bad_changes).encode())
    expected = "op 'commit' is not one of captured, changes, committed, done"
    with pytest.raises(MessageError, match=expected):
        control.decode_reply(control.Commit("sb_1", seq=9).encode())
    with pytest.raises(MessageError, match="op 'done' is not one of committed"):
        control.Committed.decode(control.Done(seq=9).encode())


def test_an_oversize_message_is_refused_before_it_is_parsed() -> None:
    data = control.Changed("/c", ("x" * 1024,) * (control.MAX_MESSAGE // 1024), seq=1).encode()
    assert len(data) > control.MAX_MESSAGE
    _refused(data, f"at most {control.MAX_MESSAGE} are taken")
