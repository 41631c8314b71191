"""Properties of the path normaliser that every file RPC relies on."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentfense.server._paths import InvalidPathError, normalize_relpath

segments = st.one_of(
    st.sampled_from(["", ".", "..", "a", "b.txt", "\\", "..a", ".hidden", "a\\..\\b"]),
    st.text(min_size=1, max_size=12),
)
paths = st.lists(segments, max_size=8).map("/".join) | st.text(max_size=40)


def _normalized(raw: str) -> str | None:
    try:
        return normalize_relpath(raw, allow_root=True)
    except InvalidPathError:
        return None


@given(paths)
def test_result_is_relative_without_dotdot(raw: str) -> None:
    result = _normalized(raw)
    if result is None:
        return
    assert not result.startswith("/")
    assert ".." not in result.split("/")
    assert "." not in result.split("/")
    assert "" not in result.split("/") or result == ""
    assert "\x00" not in result


@given(paths)
def test_normalization_is_idempotent(raw: str) -> None:
    result = _normalized(raw)
    if result is not None:
        assert normalize_relpath(result, allow_root=True) == result


@given(paths, paths)
def test_nul_anywhere_is_refused(before: str, after: str) -> None:
    with pytest.raises(InvalidPathError, match="NUL"):
        normalize_relpath(before + "\x00" + after, allow_root=True)


@given(st.lists(st.sampled_from(["a", "b", ".", ""]), max_size=4), st.lists(segments, max_size=4))
def test_dotdot_segment_is_refused_anywhere(head: list[str], tail: list[str]) -> None:
    raw = "/".join([*head, "..", *tail])
    if "\x00" in raw:
        return
    with pytest.raises(InvalidPathError):
        normalize_relpath(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/a/b.txt", "a/b.txt"),
        ("a//./b.txt/", "a/b.txt"),
        ("///workspace/x", "workspace/x"),
        ("a\\..\\b", "a\\..\\b"),
        ("..a/b..", "..a/b.."),
    ],
)
def test_examples(raw: str, expected: str) -> None:
    assert normalize_relpath(raw) == expected


@pytest.mark.parametrize("raw", ["", "/", ".", "/./"])
def test_root_needs_allow_root(raw: str) -> None:
    assert normalize_relpath(raw, allow_root=True) == ""
    with pytest.raises(InvalidPathError):
        normalize_relpath(raw)


def test_length_limits() -> None:
    assert normalize_relpath("x" * 255) == "x" * 255
    with pytest.raises(InvalidPathError, match="255 bytes"):
        normalize_relpath("x" * 256)
    with pytest.raises(InvalidPathError, match="255 bytes"):
        normalize_relpath("é" * 128)  # 256 bytes in UTF-8
    deep = "/".join(["abcdefg"] * 512)  # 4095 bytes
    assert normalize_relpath(deep) == deep
    with pytest.raises(InvalidPathError, match="4096 bytes"):
        normalize_relpath(deep + "/xy")


def test_message_names_the_field() -> None:
    with pytest.raises(InvalidPathError) as info:
        normalize_relpath("a/../b")
    assert str(info.value) == "path must not contain '..'"
    assert info.value.for_field("file_path") == "file_path must not contain '..'"
