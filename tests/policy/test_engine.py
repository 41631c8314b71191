"""The policy engine: levels, precedence, validation and ``may_grant_below``."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentfense.errors import InvalidConfigurationError
from agentfense.policy import (
    MAX_RULES,
    MAX_WILDCARD_RULES,
    Policy,
    compile_pattern,
    uniform_level,
    validate_rules,
)
from agentfense.presets import get_preset
from agentfense.types import PatternType, Permission, PermissionRule

GLOB, DIRECTORY, FILE = PatternType.GLOB, PatternType.DIRECTORY, PatternType.FILE
NONE, VIEW, READ, WRITE = Permission.NONE, Permission.VIEW, Permission.READ, Permission.WRITE


def rule(
    pattern: str, permission: Permission, type: PatternType = GLOB, priority: int = 0
) -> PermissionRule:
    return PermissionRule(pattern, permission, type, priority)


AGENT_SAFE = [
    (".env", NONE),
    ("a/b/.env.local", NONE),
    ("secrets/x", NONE),
    ("secrets", NONE),
    ("x/secrets/y/z", NONE),
    ("k.key", NONE),
    ("deep/k.pem", NONE),
    ("credentials.json", NONE),
    ("src/credentials", NONE),
    (".git/config", NONE),
    (".git", NONE),
    ("sub/.git/HEAD", NONE),
    ("src/a.py", READ),
    ("", READ),
    ("src", READ),
    (".gitignore", READ),
    ("output/r.txt", WRITE),
    ("output", WRITE),
    ("tmp/x/y", WRITE),
    ("src/output/r.txt", READ),
]


@pytest.mark.parametrize(("path", "level"), AGENT_SAFE)
def test_agent_safe_preset(path: str, level: Permission) -> None:
    assert Policy(get_preset("agent-safe")).level(path) is level


DEVELOPMENT = [
    (".env", NONE),
    ("a/b/.env.local", NONE),
    ("x/secrets/y/z", NONE),
    ("k.key", NONE),
    ("deep/k.pem", NONE),
    ("credentials.json", NONE),
    (".git/config", NONE),
    (".git", NONE),
    ("src/a.py", WRITE),
    ("", WRITE),
    ("output/r.txt", WRITE),
]


@pytest.mark.parametrize(("path", "level"), DEVELOPMENT)
def test_development_preset(path: str, level: Permission) -> None:
    assert Policy(get_preset("development")).level(path) is level


@pytest.mark.parametrize(("preset", "level"), [("read-only", READ), ("full-access", WRITE)])
def test_whole_workspace_presets(preset: str, level: Permission) -> None:
    policy = Policy(get_preset(preset))
    assert [policy.level(p) for p in ("", "a", "a/.env", ".git/x")] == [level] * 4


def test_no_rule_means_none() -> None:
    assert Policy([]).level("a") is NONE
    assert Policy([]).winning_rule("a") is None
    policy = Policy([rule("src/**", READ)])
    assert policy.level("docs/a") is NONE
    assert policy.level("") is NONE


PRECEDENCE = [
    # Higher priority wins over type, specificity and order.
    ([rule("a/b.txt", WRITE, FILE), rule("**", NONE, priority=1)], "a/b.txt", NONE),
    ([rule("**", NONE, priority=1), rule("a/b.txt", WRITE, FILE)], "a/b.txt", NONE),
    # Then file > directory > glob, whatever the specificity.
    ([rule("a/b.txt", READ, FILE), rule("a", WRITE, DIRECTORY)], "a/b.txt", READ),
    ([rule("a", WRITE, DIRECTORY), rule("a/b.txt", VIEW, GLOB)], "a/b.txt", WRITE),
    ([rule("/", VIEW, DIRECTORY), rule("a/b.txt", WRITE)], "a/b.txt", VIEW),
    # Then the more specific pattern, whatever the order.
    ([rule("src/*.py", WRITE), rule("**/*.py", READ)], "src/a.py", WRITE),
    ([rule("**/secrets/**", NONE), rule("**", READ)], "x/secrets/y", NONE),
    ([rule("a/b", READ, DIRECTORY), rule("a", WRITE, DIRECTORY)], "a/b/c", READ),
    ([rule("a", WRITE, DIRECTORY), rule("a/b", READ, DIRECTORY)], "a/b/c", READ),
    ([rule("**/*.key", NONE), rule("**", WRITE)], "k.key", NONE),
    # Then the later rule: a user rule appended after the preset's wins a tie.
    ([rule("**", READ), rule("**", WRITE)], "x", WRITE),
    ([rule("**", WRITE), rule("**", READ)], "x", READ),
    # The preset hides secrets at priority 100: a user rule wins the tie at that priority ...
    ([*get_preset("agent-safe"), rule("**/.env*", READ, priority=100)], "a/.env", READ),
    # ... and cannot uncover them at the default priority.
    ([*get_preset("agent-safe"), rule("**/.env*", READ)], "a/.env", NONE),
    ([*get_preset("agent-safe")], "output/.env", NONE),
    ([*get_preset("agent-safe")], "output/report.txt", WRITE),
    ([*get_preset("agent-safe"), rule("**", WRITE)], "src/a.py", WRITE),
    ([*get_preset("agent-safe"), rule("**", WRITE)], "k.key", NONE),
]


@pytest.mark.parametrize(("rules", "path", "level"), PRECEDENCE)
def test_precedence(rules: list[PermissionRule], path: str, level: Permission) -> None:
    assert Policy(rules).level(path) is level


def test_winning_rule_and_describe() -> None:
    rules = [rule("**", NONE), rule("docs", VIEW, DIRECTORY, priority=2), rule("**/*.py", READ)]
    policy = Policy(rules)
    assert policy.winning_rule("src/a.py") is rules[2]
    assert policy.describe("src/a.py") == "src/a.py: read (rule 2 '**/*.py')"
    assert policy.describe("docs/x") == "docs/x: view (rule 1 directory 'docs', priority 2)"
    assert policy.describe("") == "/: none (rule 0 '**')"
    assert Policy([]).describe("a") == "a: none (no rule matches)"


def test_query_paths_tolerate_slashes() -> None:
    policy = Policy(get_preset("agent-safe"))
    assert policy.level("/output/r.txt") is WRITE
    assert policy.level("output/") is WRITE
    assert policy.level("/") is READ
    assert policy.level(".") is READ


def test_rules_are_kept_in_order() -> None:
    rules = get_preset("agent-safe")
    assert Policy(rules).rules == tuple(rules)


def _bypass(pattern: object, permission: object, type: object = GLOB) -> PermissionRule:
    bad = object.__new__(PermissionRule)
    for name, value in (
        ("pattern", pattern),
        ("permission", permission),
        ("type", type),
        ("priority", 0),
    ):
        object.__setattr__(bad, name, value)
    return bad


def test_invalid_rule_is_named_by_index_and_pattern() -> None:
    rules = [rule("**", READ), rule("src/**", WRITE), rule("a/[b", READ)]
    message = "permissions[2] ('a/[b'): unbalanced '[' in glob"
    with pytest.raises(InvalidConfigurationError) as info:
        Policy(rules)
    assert str(info.value) == message
    with pytest.raises(InvalidConfigurationError) as info:
        validate_rules(rules)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        (_bypass("", READ), "permissions[1] (''): empty pattern"),
        (_bypass("  ", READ), "empty pattern"),
        (_bypass("a\x00", READ), "NUL"),
        (rule("a/../b", READ), "permissions[1] ('a/../b'): '..' segment"),
        (rule("./b", READ, DIRECTORY), "'.' segment"),
        (rule("a//b", READ, FILE), "empty segment"),
        (rule("a" * 4097, READ), "longer than 4096"),
        (_bypass("a", "read"), "permissions[1] ('a'): permission must be a Permission"),
        (_bypass("a", READ, "glob"), "type must be a PatternType"),
    ],
)
def test_invalid_rules(bad: PermissionRule, fragment: str) -> None:
    with pytest.raises(InvalidConfigurationError, match=r"^permissions\[1\]") as info:
        validate_rules([rule("**", READ), bad])
    assert fragment in str(info.value)


def test_non_rules_are_rejected() -> None:
    with pytest.raises(InvalidConfigurationError, match=r"permissions\[0\]: expected"):
        Policy([{"pattern": "**"}])  # type: ignore[list-item]
    with pytest.raises(InvalidConfigurationError, match="list of rules"):
        Policy("**")  # type: ignore[arg-type]


def test_valid_rules_pass_validation() -> None:
    validate_rules(get_preset("agent-safe"))
    validate_rules([])


# --- may_grant_below ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("directory", "expected"),
    [
        (".git", False),
        ("sub/.git", False),
        ("secrets", False),
        ("a/secrets", False),
        ("src", True),
        ("", True),
        ("output", True),
        ("tmp", True),
    ],
)
def test_may_grant_below_agent_safe(directory: str, expected: bool) -> None:
    assert Policy(get_preset("agent-safe")).may_grant_below(directory) is expected


@pytest.mark.parametrize(
    ("rules", "directory", "expected"),
    [
        ([rule("**", NONE), rule("/docs/**", READ)], "", True),
        ([rule("**", NONE), rule("/docs/**", READ)], "docs", True),
        ([rule("**", NONE), rule("/docs/**", READ)], "docs/a", True),
        ([rule("**", NONE), rule("/docs/**", READ)], "src", False),
        ([rule("**/*.py", READ)], "", True),
        ([rule("**/*.py", READ)], "a/b", True),
        ([rule("**/*.py", READ)], ".git", True),
        ([], "", False),
        ([rule("a/b.txt", READ, FILE)], "a", True),
        ([rule("a/b.txt", READ, FILE)], "a/b.txt", False),  # the path itself is not below
        ([rule("a/b.txt", READ, FILE)], "b", False),
        ([rule("docs", VIEW, DIRECTORY)], "", True),
        ([rule("docs", VIEW, DIRECTORY)], "docs/x", True),
        ([rule("docs", VIEW, DIRECTORY)], "doc", False),
        ([rule("src/*", READ), rule("src/*/**", NONE)], "src", True),
        ([rule("src/*", READ), rule("src/*/**", NONE)], "src/a", False),
        # A granting rule that beats the hiding one still reaches below it.
        ([rule("**", READ), rule("**/.git/**", NONE), rule(".git/hooks/**", READ)], ".git", True),
        ([rule(".git/x", READ, priority=-1), rule("**/.git/**", NONE)], ".git", False),
        ([rule(".git/x", READ, FILE), rule("**/.git/**", NONE)], ".git", True),
    ],
)
def test_may_grant_below(rules: list[PermissionRule], directory: str, expected: bool) -> None:
    assert Policy(rules).may_grant_below(directory) is expected


# --- properties --------------------------------------------------------------------------------

NAMES = ["a", "b", "ab", ".git", "x.key", "secrets", "c.py"]
segments = st.sampled_from(
    ["a", "b", "*", "**", "?", "a*", "*.py", "[ab]", "[!a]*", ".git", "secrets", "*.key"]
)
patterns = st.builds(
    lambda lead, parts: lead + "/".join(parts),
    st.sampled_from(["", "/"]),
    st.lists(segments, min_size=1, max_size=4),
)
rules = st.builds(
    PermissionRule,
    pattern=patterns,
    permission=st.sampled_from(list(Permission)),
    type=st.sampled_from(list(PatternType)),
    priority=st.integers(-1, 1),
).map(
    # `**` is rejected in file and directory patterns.
    lambda r: (
        r
        if r.type is GLOB
        else PermissionRule(r.pattern.replace("**", "ab"), r.permission, r.type, r.priority)
    )
)
rule_lists = st.lists(rules, max_size=8)
paths = st.lists(st.sampled_from(NAMES), max_size=4).map("/".join)
trees = st.lists(paths, min_size=1, max_size=12)


def _precedence(policy: Policy, index: int) -> tuple[object, ...]:
    rule = policy.rules[index]
    type_rank = {GLOB: 0, DIRECTORY: 1, FILE: 2}[rule.type]
    return (rule.priority, type_rank, compile_pattern(rule).specificity, index)


@settings(max_examples=300, deadline=None)
@given(rule_lists, st.lists(paths, min_size=1, max_size=8))
def test_level_is_the_best_matching_rule(rules: list[PermissionRule], queries: list[str]) -> None:
    policy = Policy(rules)
    for path in queries:
        matching = [i for i, r in enumerate(rules) if compile_pattern(r).matches(path)]
        best = max(matching, key=lambda i: _precedence(policy, i), default=None)
        assert policy.winning_rule(path) is (None if best is None else rules[best])
        assert policy.level(path) is (NONE if best is None else rules[best].permission)


@settings(max_examples=200, deadline=None)
@given(rule_lists, rules, paths)
def test_higher_priority_rule_wins(
    rules: list[PermissionRule], extra: PermissionRule, path: str
) -> None:
    top = max((r.priority for r in rules), default=0) + 1
    added = PermissionRule(extra.pattern, extra.permission, extra.type, top)
    policy = Policy([*rules, added])
    if compile_pattern(added).matches(path):
        assert policy.level(path) is added.permission


@settings(max_examples=200, deadline=None)
@given(rule_lists, st.data())
def test_identical_later_rule_wins_the_tie(
    rules: list[PermissionRule], data: st.DataObject
) -> None:
    if not rules:
        return
    original = data.draw(st.sampled_from(rules))
    permission = data.draw(st.sampled_from(list(Permission)))
    duplicate = PermissionRule(original.pattern, permission, original.type, original.priority)
    before = Policy(rules)
    after = Policy([*rules, duplicate])
    for path in data.draw(st.lists(paths, min_size=1, max_size=8)):
        if before.winning_rule(path) is original:
            assert after.winning_rule(path) is duplicate
            assert after.level(path) is permission


def _below(directory: str, path: str) -> bool:
    return path != directory and (directory == "" or path.startswith(directory + "/"))


@settings(max_examples=300, deadline=None)
@given(rule_lists, trees)
def test_may_grant_below_is_sound(rules: list[PermissionRule], tree: list[str]) -> None:
    policy = Policy(rules)
    files = set(tree)
    directories = {""}
    for path in files:
        parts = path.split("/") if path else []
        directories.update("/".join(parts[:n]) for n in range(1, len(parts)))
    every_path = files | directories
    for directory in directories:
        granted = [p for p in every_path if _below(directory, p) and policy.level(p) is not NONE]
        if granted:
            assert policy.may_grant_below(directory), (directory, granted)


@settings(max_examples=100, deadline=None)
@given(rule_lists, st.lists(paths, min_size=1, max_size=10))
def test_level_is_pure_and_cache_consistent(
    rules: list[PermissionRule], queries: list[str]
) -> None:
    cached = Policy(rules)
    first = [cached.level(p) for p in queries]
    assert [cached.level(p) for p in reversed(queries)] == first[::-1]
    assert [Policy(rules, cache_size=0).level(p) for p in queries] == first
    tiny = Policy(rules, cache_size=1)
    assert [tiny.level(p) for p in queries + queries] == first + first
    cached.cache_clear()
    assert [cached.level(p) for p in queries] == first
    below = [cached.may_grant_below(p) for p in queries]
    assert [Policy(rules, cache_size=0).may_grant_below(p) for p in queries] == below


@pytest.mark.parametrize(
    ("rules", "level"),
    [
        ([rule("**", READ)], READ),
        ([rule("/**", READ), rule("src/**", READ)], READ),
        ([rule("**/*", WRITE)], WRITE),
        ([rule("/", READ, DIRECTORY)], READ),
        ([rule("**", READ), rule("**/.env*", NONE, priority=100)], None),
        ([rule("src/**", READ)], None),  # the rest is none
        ([rule("**", READ), rule("out/**", WRITE)], None),
        ([], None),
    ],
)
def test_uniform_level(rules: list[PermissionRule], level: Permission | None) -> None:
    assert uniform_level(rules) is level
    assert uniform_level(get_preset("read-only")) is READ
    assert uniform_level(get_preset("agent-safe")) is None


@settings(max_examples=200)
@given(
    rules=st.lists(
        st.builds(
            rule,
            st.sampled_from(["**", "**/*", "/", "src/**", "*.py", "a/b", "**/.env*"]),
            st.sampled_from([NONE, VIEW, READ, WRITE]),
            st.sampled_from([GLOB, DIRECTORY]),
            st.integers(0, 3),
        ).filter(lambda r: not (r.type is DIRECTORY and "*" in r.pattern)),
        max_size=4,
    ),
    path=st.sampled_from(["a", "a/b", "src/x.py", ".env", "deep/er/.env.local", "x.py"]),
)
def test_a_uniform_level_is_every_paths_level(rules: list[PermissionRule], path: str) -> None:
    level = uniform_level(rules)
    if level is not None:
        assert Policy(rules).level(path) is level


@settings(max_examples=300, deadline=None)
@given(rule_lists, st.lists(paths, min_size=1, max_size=8))
def test_stepping_name_by_name_agrees_with_whole_paths(
    rules: list[PermissionRule], queries: list[str]
) -> None:
    """The permission filesystem keeps each directory's state and steps one name at a time."""
    policy = Policy(rules)
    for path in queries:
        state = policy.start
        for name in path.split("/") if path else []:
            state = policy.step(state, name)
        assert policy.level_of(state) is policy.level(path)
        assert state.may_grant_below() is policy.may_grant_below(path)
        assert state.may_write_below() is policy.may_write_below(path)


@settings(max_examples=300, deadline=None)
@given(rule_lists, trees)
def test_may_write_below_is_sound(rules: list[PermissionRule], tree: list[str]) -> None:
    policy = Policy(rules)
    for path in tree:
        parts = path.split("/") if path else []
        if policy.level(path) is WRITE:
            for n in range(len(parts)):
                assert policy.may_write_below("/".join(parts[:n])), (path, n)


def test_a_backtracking_rule_costs_linear_time() -> None:
    # As one regex over the whole path this takes hours (each `**` may end at any level).
    hostile = rule("**/a/**/a/**/a/**/a/**/a/**/a/**/a/**/b", NONE, priority=5)
    policy = Policy([rule("**", READ), hostile])
    deep = "/".join(["a"] * 60)
    assert policy.level(deep + "/c") is READ
    assert policy.level(deep + "/b") is NONE
    assert policy.may_grant_below(deep)


def test_rule_lists_are_bounded() -> None:
    too_many_globstars = "/".join(["**", "a"] * 17)
    with pytest.raises(InvalidConfigurationError) as info:
        validate_rules([rule("**", READ), rule(too_many_globstars, NONE)])
    assert str(info.value).startswith("permissions[1] ('**/a/**/a")
    assert "more than 16 '**' segments" in str(info.value)
    wildcards = [rule(f"d{i}/*.x", READ) for i in range(MAX_WILDCARD_RULES + 1)]
    with pytest.raises(InvalidConfigurationError) as info:
        validate_rules(wildcards)
    assert str(info.value).startswith(f"permissions[{MAX_WILDCARD_RULES}] ('d256/*.x')")
    # Literal rules (one path each) are cheap: many of them are fine, up to MAX_RULES.
    files = [rule(f"src/f{i}.py", WRITE, FILE) for i in range(MAX_RULES)]
    policy = Policy(files)
    assert policy.level("src/f4095.py") is WRITE
    assert policy.level("src/f4096.py") is NONE
    with pytest.raises(InvalidConfigurationError, match=f"at most {MAX_RULES}"):
        validate_rules([*files, rule("x", READ, FILE)])
