"""The presets' tables in docs/permissions.md are the presets of agentfense/presets.py: every
rule, its level, type and priority, in precedence order, so the docs cannot drift from what
the SDK sends. On a failure, the message holds the tables to paste."""

from __future__ import annotations

from pathlib import Path

from agentfense.policy import Policy
from agentfense.presets import (
    _HIDE_SECRETS,
    _SECRET_NAMES,
    describe_preset,
    get_preset,
    list_presets,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "permissions.md"
BEGIN = (
    "<!-- preset tables: generated from agentfense/presets.py, checked by "
    "tests/policy/test_presets_docs.py -->\n"
)
END = "<!-- end of preset tables -->\n"


def _preset_table(name: str) -> list[str]:
    rules = get_preset(name)
    hides_secrets = set(_HIDE_SECRETS) <= set(rules)
    lines = [
        f"### `{name}`",
        "",
        describe_preset(name)[0].upper() + describe_preset(name)[1:] + ".",
        "",
        "| priority | level | type | pattern |",
        "|---|---|---|---|",
    ]
    shown_secrets = False
    for rule in (rules[i] for i in Policy(rules).order):
        if hides_secrets and rule in _HIDE_SECRETS:
            if not shown_secrets:
                lines.append(
                    f"| {rule.priority} | `none` | glob | each of the "
                    f"[secret patterns](#the-secret-patterns) ({len(_HIDE_SECRETS)} rules) |"
                )
                shown_secrets = True
            continue
        lines.append(
            f"| {rule.priority} | `{rule.permission.value}` | {rule.type.value} | "
            f"`{rule.pattern}` |"
        )
    return [*lines, ""]


def expected() -> str:
    lines: list[str] = []
    for name in list_presets():
        lines += _preset_table(name)
    lines += [
        "### The secret patterns",
        "",
        "Each letter of a name becomes a class of its two cases, so `.ENV` and `server.KEY`",
        "are hidden too. The rules are globs at priority 100 with level `none`.",
        "",
        "| name | pattern as sent |",
        "|---|---|",
    ]
    lines += [
        f"| `{name}` | `{rule.pattern}` |"
        for name, rule in zip(_SECRET_NAMES, _HIDE_SECRETS, strict=True)
    ]
    return "\n".join(lines) + "\n"


def test_the_docs_show_every_rule_of_every_preset() -> None:
    text = DOC.read_text()
    assert BEGIN in text
    assert END in text
    shown = text[text.index(BEGIN) + len(BEGIN) : text.index(END)]
    assert shown == expected(), (
        f"docs/permissions.md should hold, between the markers:\n{expected()}"
    )


def test_the_secret_rules_are_one_block_at_one_priority() -> None:
    assert {(r.permission.value, r.type.value, r.priority) for r in _HIDE_SECRETS} == {
        ("none", "glob", 100)
    }
