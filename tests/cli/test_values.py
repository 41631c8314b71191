"""The CLI's value parsers and the command line it builds: pure, fast."""

from __future__ import annotations

import shlex

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentfense import PermissionRule
from agentfense.cli._run import command_line, exit_status
from agentfense.cli._values import (
    parse_count,
    parse_cpus,
    parse_env,
    parse_rule,
    parse_seconds,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512m", 512 << 20),
        ("1g", 1 << 30),
        ("1G", 1 << 30),
        ("1.5g", 3 << 29),
        ("64MiB", 64 << 20),
        ("64mb", 64 << 20),
        ("100k", 102_400),
        ("1048576", 1 << 20),
        (" 2t ", 2 << 40),
    ],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "m", "-1m", "0", "0.0001", "1x", "1 g", "1e3", "2000t"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match=r"size|memory"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "quota"), [("0.5", 50_000), ("2", 200_000), ("0.01", 1_000), ("1.25", 125_000)]
)
def test_cpus_become_a_quota_per_100ms(text: str, quota: int) -> None:
    assert parse_cpus(text) == quota


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "half", "0.001", "5000"])
def test_bad_cpus(text: str) -> None:
    with pytest.raises(ValueError, match="CPUs"):
        parse_cpus(text)


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("**/*.log=none", PermissionRule("**/*.log", "none")),
        ("/output/**=WRITE", PermissionRule("/output/**", "write")),
        ("a=b.txt=view", PermissionRule("a=b.txt", "view")),  # the last = splits
        ("secret.txt= read", PermissionRule("secret.txt", "read")),
    ],
)
def test_rules(text: str, rule: PermissionRule) -> None:
    assert parse_rule(text) == rule


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("**/*.py", "is not PATTERN=LEVEL"),
        ("=read", "is not PATTERN=LEVEL"),
        ("x=all", "'all' in 'x=all' is not a level: use one of none, view, read, write"),
        ("x\x00=read", "NUL"),
    ],
)
def test_bad_rules(text: str, said: str) -> None:
    with pytest.raises(ValueError, match=said.replace("(", r"\(")):
        parse_rule(text)


def test_env() -> None:
    assert parse_env("A=1") == ("A", "1")
    assert parse_env("_x=a=b c") == ("_x", "a=b c")
    assert parse_env("EMPTY=") == ("EMPTY", "")
    for bad in ("A", "=1", "1A=2", "A B=1", "A-B=1"):
        with pytest.raises(ValueError, match="NAME=VALUE"):
            parse_env(bad)
    with pytest.raises(ValueError, match="NUL"):
        parse_env("A=\x00")


def test_counts_and_seconds() -> None:
    assert parse_count("64") == 64
    assert parse_seconds("0.5") == 0.5
    for bad in ("0", "-3", "x", "1.5", str(1 << 31)):
        with pytest.raises(ValueError, match=r"whole number|above 0"):
            parse_count(bad)
    for bad in ("0", "-1", "inf", "nan", "soon"):
        with pytest.raises(ValueError, match="seconds"):
            parse_seconds(bad)


def test_one_argument_is_a_shell_line_several_an_argv() -> None:
    assert command_line(["ls src | wc -l"]) == "ls src | wc -l"
    assert command_line(["echo", "a  b", "c;d"]) == "echo 'a  b' 'c;d'"


@given(st.lists(st.text(st.characters(exclude_characters="\x00")), min_size=2))
def test_several_arguments_reach_the_shell_as_they_are(argv: list[str]) -> None:
    assert shlex.split(command_line(argv)) == argv


@pytest.mark.parametrize(
    ("reported", "ours"),
    [(0, 0), (7, 7), (255, 255), (-9, 137), (-2, 130), (256, 125), (512, 125), (-1000, 125)],
)
def test_exit_codes_no_process_can_have_are_never_success(reported: int, ours: int) -> None:
    assert exit_status(reported) == ours
