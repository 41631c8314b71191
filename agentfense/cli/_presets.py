"""``agentfense presets [NAME]``: the presets, and one preset's rules by precedence."""

from __future__ import annotations

import argparse
import textwrap

from ..policy import Policy
from ..presets import describe_preset, exact_path_priority, get_preset, list_presets
from ._admin import table

_WIDTH = 96


def _one(name: str) -> str:
    rules = get_preset(name)
    rows = [
        (str(rule.priority), rule.permission.value, rule.type.value, rule.pattern)
        for rule in (rules[i] for i in Policy(rules).order)
    ]
    notes = (
        "Patterns are paths from the codebase's root, which is /workspace in the sandbox "
        "(output/** is /workspace/output/**). The first rule from the top that matches a path "
        "decides its level.",
        "Your rules (--rule, permissions=) come after these. One for an exact path at the "
        f"default priority 0 is sent at priority {exact_path_priority(rules)}, above all of "
        "these; any other ranks by its priority (0 unless given) and wins ties.",
    )
    return "\n".join(
        [
            f"{name}: {describe_preset(name)}",
            "",
            textwrap.fill(notes[0], _WIDTH),
            "",
            table(("PRIORITY", "LEVEL", "TYPE", "PATTERN"), rows),
            "",
            textwrap.fill(notes[1], _WIDTH),
        ]
    )


def _listing() -> str:
    rows = [(name, str(len(get_preset(name))), describe_preset(name)) for name in list_presets()]
    return table(("PRESET", "RULES", "GIVES"), rows)


def presets(args: argparse.Namespace) -> int:
    print(_listing() if args.name is None else _one(args.name), flush=True)
    return 0
