"""Which permission rule sets the plain-bind workspace can enforce (pure, no I/O).

Until the permission filesystem lands, a sandbox's ``/workspace`` is a plain bind of its
codebase: read-only or read-write as a whole. A rule set is accepted only when it gives every
path the same level and that level is ``read`` or ``write``; anything else is refused with a
sentence naming the rule, never silently weakened.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..types import PatternType, Permission, PermissionRule

# Patterns that match every path of the workspace.
_EVERYTHING = frozenset({"**", "/**", "**/*", "/**/*"})


class UnenforceableRules(ValueError):
    pass


def _covers_everything(rule: PermissionRule) -> bool:
    pattern = rule.pattern.strip()
    if rule.type is PatternType.DIRECTORY:
        return pattern in {"/", ""}
    return rule.type is PatternType.GLOB and pattern in _EVERYTHING


def workspace_mode(rules: Sequence[PermissionRule]) -> bool:
    """True for a writable bind, False for read-only; ``UnenforceableRules`` otherwise."""
    for rule in rules:
        if not _covers_everything(rule):
            raise UnenforceableRules(
                f"permission rule {rule.pattern!r} ({rule.permission.value}) applies to part "
                "of the workspace, which needs the permission filesystem; this server can only "
                "grant 'read' or 'write' on the whole workspace (pattern '**')"
            )
    if not rules:
        raise UnenforceableRules(
            "no permission rules: every path would be 'none'; give at least one rule"
        )
    # All rules cover everything: the winner is the highest priority, then directory over glob,
    # then the later rule.
    winner = max(
        enumerate(rules),
        key=lambda item: (item[1].priority, item[1].type is PatternType.DIRECTORY, item[0]),
    )[1]
    if winner.permission not in (Permission.READ, Permission.WRITE):
        raise UnenforceableRules(
            f"permission {winner.permission.value!r} on the whole workspace needs the "
            "permission filesystem; this server can grant 'read' or 'write'"
        )
    return winner.permission is Permission.WRITE
