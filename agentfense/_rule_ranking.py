"""How the rules a user gives rank against a preset's (pure: no I/O).

One design, simple to say: a rule of yours for one exact path (a pattern without wildcards,
not a directory) at the default priority 0 outranks every rule of the preset: it is sent at
the preset's highest priority + 1. Every other rule keeps the priority it has (0 unless
given), and ranks by the engine's precedence (:mod:`agentfense.policy`): being after the
preset's rules, it wins ties, but a pattern of yours does not uncover the preset's secrets
(priority 100) unless you give it a priority of its own. What goes on the wire is an explicit
priority either way, so a server reads every rule as it always has.

When a rule of yours is still outranked, by a rule with a different level, on the path its
pattern names most plainly (:meth:`~agentfense.policy.CompiledPattern.example`), it does not
do what it says: :class:`RuleShadowedWarning` names the rule that wins there. A rule raised
above the preset is outranked only by one of the user's own of a priority as high; at most
:data:`MAX_CHECKED_RULES` rules are checked (each check is one walk of the compiled policy,
some milliseconds when the list is long): a courtesy of bounded cost, never a refusal.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from .errors import InvalidConfigurationError
from .policy import Policy, compile_pattern
from .types import PermissionRule

_MAX_PRIORITY = (1 << 31) - 1  # the wire's priority is an int32
MAX_CHECKED_RULES = 256
# A policy is compiled only to find the winners of one path per rule of the user.
_CHECK_CACHE_SIZE = 64


class RuleShadowedWarning(UserWarning):
    """A permission rule you gave is outranked, where it applies, by a rule of another level."""


def names_one_path(rule: PermissionRule) -> bool:
    """Whether ``rule`` names one exact path below the root: no wildcard, not a directory."""
    try:
        segments = compile_pattern(rule).segments
    except InvalidConfigurationError:
        return False  # the server refuses it with a sentence
    return bool(segments) and all(segment.is_literal for segment in segments)


def exact_path_priority(preset_rules: Sequence[PermissionRule]) -> int:
    """The priority a user's exact-path rule is sent at: above every rule of the preset (or
    level with the highest, when a registered preset uses the wire's largest priority: the
    user's rule, an exact path after the preset's, then still wins the tie of any glob)."""
    return min(max([0, *(rule.priority for rule in preset_rules)]) + 1, _MAX_PRIORITY)


def rank_user_rules(
    preset: str | None,
    preset_rules: Sequence[PermissionRule],
    user_rules: Sequence[PermissionRule],
    *,
    stacklevel: int,
) -> list[PermissionRule]:
    """The preset's rules then the user's, exact paths at default priority raised above the
    preset's; warns of every user rule still outranked (``stacklevel`` as for
    ``warnings.warn`` called where this is called)."""
    ranked = list(user_rules)
    raised: set[int] = set()
    if preset_rules:
        top = exact_path_priority(preset_rules)
        for index, rule in enumerate(ranked):
            if rule.priority == 0 and names_one_path(rule):
                ranked[index] = PermissionRule(rule.pattern, rule.permission, rule.type, top)
                raised.add(len(preset_rules) + index)
    rules = [*preset_rules, *ranked]
    checked = [i for i in range(len(preset_rules), len(rules)) if i not in raised]
    if raised and any(rules[i].priority >= rules[min(raised)].priority for i in checked):
        # No rule of the preset outranks a raised rule, but one of yours with a priority of
        # its own as high may: then they are checked too.
        checked = sorted([*checked, *raised])
    for warning in shadowed(preset, rules, checked[:MAX_CHECKED_RULES], len(preset_rules)):
        warnings.warn(warning, RuleShadowedWarning, stacklevel=stacklevel + 1)
    return rules


def shadowed(
    preset: str | None, rules: Sequence[PermissionRule], checked: Sequence[int], first_user: int
) -> list[str]:
    """A sentence for each rule ``rules[i]``, ``i`` in ``checked``, that another rule, of
    another level, outranks on the path its pattern names most plainly (the user's rules
    start at ``first_user``)."""
    if not checked:
        return []
    try:
        policy = Policy(rules, cache_size=_CHECK_CACHE_SIZE)
    except InvalidConfigurationError:
        return []  # the server refuses the rules with a sentence
    found = []
    for index in checked:
        rule = rules[index]
        path = compile_pattern(rule).example()
        if path is None:
            continue
        winner = policy.state(path).winner
        if winner == index or rules[winner].permission is rule.permission:
            continue
        beats = rules[winner]
        whose = f"preset {preset!r} rule" if winner < first_user else "your rule"
        where = f"/workspace/{path}".rstrip("/")
        found.append(
            f"permission rule {rule.pattern!r} ({rule.permission.value}) has no effect on "
            f"{where}: {whose} {beats.pattern!r} ({beats.permission.value}, priority "
            f"{beats.priority}) outranks it; give yours priority={max(beats.priority + 1, 1)} "
            "to outrank it"
        )
    return found
