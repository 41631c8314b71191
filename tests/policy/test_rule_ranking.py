"""How a user's rules rank against a preset's: a rule for an exact path at the default
priority outranks the preset's rules; every other rule keeps its priority; a rule that is
still outranked where it applies is named in a ``RuleShadowedWarning``."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentfense import (
    AsyncSandbox,
    ConnectionError,
    InvalidConfigurationError,
    PermissionRule,
    RuleShadowedWarning,
    extend_preset,
    get_preset,
    list_presets,
    presets,
)
from agentfense._rule_ranking import MAX_CHECKED_RULES
from agentfense.policy import Policy
from agentfense.presets import resolve_permissions
from agentfense.types import Permission

NONE, VIEW, READ, WRITE = Permission.NONE, Permission.VIEW, Permission.READ, Permission.WRITE


def quietly(preset: str | None, *rules: PermissionRule) -> list[PermissionRule]:
    """``resolve_permissions``, failing on any warning (filterwarnings=error does that too)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return resolve_permissions(preset, list(rules))


def shadow_warnings(preset: str | None, *rules: PermissionRule) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resolve_permissions(preset, list(rules))
    assert all(w.category is RuleShadowedWarning for w in caught)
    return [str(w.message) for w in caught]


def test_an_exact_path_uncovers_a_file_the_preset_hides() -> None:
    rules = quietly("agent-safe", PermissionRule("/.env.example", "read"))
    assert rules[-1] == PermissionRule("/.env.example", "read", priority=101)
    policy = Policy(rules)
    assert policy.level(".env.example") is READ
    assert policy.level(".env") is NONE
    assert policy.level("app/.env.example") is NONE  # another path: still the preset's
    assert policy.level("README.md") is READ


@pytest.mark.parametrize(
    "rule",
    [
        PermissionRule("config/.npmrc", "read"),  # a glob without a wildcard
        PermissionRule("config/.npmrc", "read", "file"),
        {"pattern": "config/.npmrc", "permission": "read"},
    ],
    ids=["glob", "file", "dict"],
)
def test_every_form_of_an_exact_path_is_ranked_above_the_preset(
    rule: PermissionRule | dict[str, str],
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rules = resolve_permissions("development", [rule])
    assert rules[-1].priority == 101
    assert Policy(rules).level("config/.npmrc") is READ


def test_an_exact_path_can_also_take_away() -> None:
    rules = quietly("agent-safe", PermissionRule("output/keep.txt", "read"))
    policy = Policy(rules)
    assert policy.level("output/keep.txt") is READ
    assert policy.level("output/other.txt") is WRITE


def test_patterns_and_directories_keep_their_priority_and_secrets_stay_hidden() -> None:
    given = [PermissionRule("src/**", "write"), PermissionRule("docs", "write", "directory")]
    rules = quietly("agent-safe", *given)
    assert rules[-2:] == given
    policy = Policy(rules)
    assert policy.level("src/a.py") is WRITE
    assert policy.level("src/.env") is NONE
    assert policy.level("docs/.env") is NONE


def test_an_explicit_priority_is_sent_as_given() -> None:
    given = PermissionRule("/.env.example", "read", priority=5)
    with pytest.warns(RuleShadowedWarning):
        rules = resolve_permissions("agent-safe", [given])
    assert rules[-1] == given
    assert Policy(rules).level(".env.example") is NONE
    high = PermissionRule("**/.npmrc", "read", priority=100)
    assert quietly("agent-safe", high)[-1] == high


def test_without_a_preset_rules_are_sent_as_given() -> None:
    given = [PermissionRule("**", "read"), PermissionRule("/notes.txt", "write")]
    assert quietly(None, *given) == given


def test_the_rank_is_above_the_presets_highest_priority() -> None:
    assert quietly("read-only", PermissionRule("a.txt", "write"))[-1].priority == 1
    assert quietly("view-only", PermissionRule("a.txt", "write"))[-1].priority == 101


def test_extend_preset_ranks_additions_and_overrides_alike() -> None:
    rules = extend_preset(
        "agent-safe",
        additions=[PermissionRule("/.env.example", "read")],
        overrides=[PermissionRule("output/**", "read", priority=10)],
    )
    assert [r.pattern for r in rules].count("output/**") == 1
    policy = Policy(rules)
    assert (policy.level(".env.example"), policy.level("output/a")) == (READ, READ)
    assert rules[: len(get_preset("agent-safe")) - 1] == [
        r for r in get_preset("agent-safe") if r.pattern != "output/**"
    ]


def test_a_pattern_the_secrets_outrank_is_named() -> None:
    [message] = shadow_warnings("agent-safe", PermissionRule("**/.npmrc", "read"))
    assert message == (
        "permission rule '**/.npmrc' (read) has no effect on /workspace/.npmrc: preset "
        "'agent-safe' rule '**/.[nN][pP][mM][rR][cC]' (none, priority 100) outranks it; give "
        "yours priority=101 to outrank it"
    )


def test_a_pattern_a_preset_area_outranks_is_named() -> None:
    [message] = shadow_warnings("agent-safe", PermissionRule("output/**", "read"))
    assert "preset 'agent-safe' rule 'output/**' (write, priority 10)" in message
    assert "priority=11" in message


def test_an_exact_path_given_too_low_a_priority_is_named() -> None:
    [message] = shadow_warnings("agent-safe", PermissionRule(".env.example", "read", priority=9))
    assert "'**/.[eE][nN][vV]*' (none, priority 100)" in message


def test_a_rule_of_the_user_outranked_by_another_of_theirs_is_named() -> None:
    [message] = shadow_warnings(
        None, PermissionRule("src/*.py", "read"), PermissionRule("src/**", "write", priority=1)
    )
    assert message.startswith("permission rule 'src/*.py' (read) has no effect on ")
    assert "/workspace/src/x.py: your rule 'src/**' (write, priority 1)" in message


@pytest.mark.parametrize(
    "rule",
    [
        PermissionRule("**", "write"),  # the secrets stay hidden, but it decides elsewhere
        PermissionRule("src/**", "none"),
        PermissionRule("**/*.env", "read"),  # x.env is not a secret, .env is
        PermissionRule("**/.env*", "none"),  # outranked, but to the same level
        PermissionRule("output/**", "write"),
    ],
)
def test_a_rule_that_decides_where_it_applies_is_not_named(rule: PermissionRule) -> None:
    assert shadow_warnings("agent-safe", rule) == []


def test_the_warning_points_at_the_callers_line() -> None:
    with pytest.warns(RuleShadowedWarning) as caught:
        extend_preset("agent-safe", additions=[PermissionRule("**/.npmrc", "read")])
    assert caught[0].filename == __file__


def test_invalid_rules_are_left_to_the_server_to_refuse() -> None:
    # No warning and no error here: the server names the rule (INVALID_ARGUMENT).
    rules = quietly("agent-safe", PermissionRule("a/[b", "read"))
    with pytest.raises(InvalidConfigurationError, match=r"unbalanced '\['"):
        Policy(rules)


def test_an_unknown_preset_suggests_the_nearest() -> None:
    with pytest.raises(InvalidConfigurationError, match="did you mean 'agent-safe'"):
        get_preset("agent_safe")


def test_a_view_rule_for_one_path_under_view_only() -> None:
    rules = quietly("view-only", PermissionRule("README.md", "read"))
    policy = Policy(rules)
    assert (policy.level("README.md"), policy.level("main.py")) == (READ, VIEW)


def test_the_rank_stays_within_the_wires_int32(monkeypatch: pytest.MonkeyPatch) -> None:
    top = (1 << 31) - 1
    highest = (PermissionRule("**/*.txt", "none", priority=top),)
    monkeypatch.setitem(presets._PRESETS, "test-highest", highest)  # as register_preset does
    rules = quietly("test-highest", PermissionRule("notes.txt", "read"))
    assert rules[-1].priority == top
    assert Policy(rules).level("notes.txt") is READ


@pytest.mark.anyio
async def test_from_locals_warning_points_at_the_callers_line(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a\n")
    with pytest.warns(RuleShadowedWarning) as caught, pytest.raises(ConnectionError):
        await AsyncSandbox.from_local(
            tmp_path,
            preset="agent-safe",
            permissions=[PermissionRule("**/.npmrc", "read")],
            endpoint=f"unix:{tmp_path}/no-server.sock",
        )
    assert caught[0].filename == __file__


NAMES = st.sampled_from(
    [".env", ".env.example", "x.key", ".git", "config", "output", "tmp", "src", "a.py", ".npmrc"]
)
PATHS = st.lists(NAMES, min_size=1, max_size=4).map("/".join)


@given(
    preset=st.sampled_from(list_presets()),
    path=PATHS,
    other=PATHS,
    level=st.sampled_from(list(Permission)),
    leading_slash=st.booleans(),
)
def test_an_exact_path_gets_its_level_and_no_other_path_changes(
    preset: str, path: str, other: str, level: Permission, leading_slash: bool
) -> None:
    given_rule = PermissionRule("/" + path if leading_slash else path, level)
    policy = Policy(quietly(preset, given_rule))
    assert policy.level(path) is level
    if other != path:
        assert policy.level(other) is Policy(get_preset(preset)).level(other)


def test_the_check_is_bounded() -> None:
    outranked = [
        PermissionRule(f".env.x{i}", "read", priority=1) for i in range(MAX_CHECKED_RULES + 20)
    ]
    exact = [PermissionRule(f"src/f{i}.py", "write") for i in range(1000)]
    assert len(shadow_warnings("agent-safe", *exact, *outranked)) == MAX_CHECKED_RULES
