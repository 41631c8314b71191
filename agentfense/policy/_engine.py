"""The policy engine: the level of a path under a list of permission rules (pure: no I/O).

Precedence when several rules match a path (the first difference decides):

1. the higher ``priority``;
2. the type: ``file`` > ``directory`` > ``glob``;
3. the more specific pattern (:class:`~agentfense.policy.Specificity`);
4. the later rule in the list, so a user's rule appended after a preset's wins a tie.

No matching rule means ``none``. The rules are sorted by precedence once and compiled into one
regular expression whose alternatives are tried in that order, so a lookup is one regex
match; results are cached per path in a bounded LRU cache.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import lru_cache

from ..errors import InvalidConfigurationError
from ..types import PatternType, Permission, PermissionRule
from ._glob import CompiledPattern, PatternError, Segment, compile_segments

_TYPE_RANK = {PatternType.GLOB: 0, PatternType.DIRECTORY: 1, PatternType.FILE: 2}

DEFAULT_CACHE_SIZE = 16384


def _compile_rules(rules: Sequence[PermissionRule]) -> list[CompiledPattern]:
    if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence):
        raise InvalidConfigurationError("permissions must be a list of rules")
    compiled: list[CompiledPattern] = []
    for index, rule in enumerate(rules):
        if not isinstance(rule, PermissionRule):
            raise InvalidConfigurationError(
                f"permissions[{index}]: expected a PermissionRule, not {type(rule).__name__}"
            )
        where = f"permissions[{index}] ({rule.pattern!r})"
        if not isinstance(rule.permission, Permission):
            raise InvalidConfigurationError(
                f"{where}: permission must be a Permission, not {rule.permission!r}"
            )
        if not isinstance(rule.type, PatternType):
            raise InvalidConfigurationError(
                f"{where}: type must be a PatternType, not {rule.type!r}"
            )
        if isinstance(rule.priority, bool) or not isinstance(rule.priority, int):
            raise InvalidConfigurationError(
                f"{where}: priority must be an int, not {rule.priority!r}"
            )
        try:
            compiled.append(compile_segments(rule.pattern, rule.type))
        except PatternError as exc:
            raise InvalidConfigurationError(f"{where}: {exc}") from None
    return compiled


def validate_rules(rules: Sequence[PermissionRule]) -> None:
    """Raise ``InvalidConfigurationError`` naming the first invalid rule by index and pattern."""
    _compile_rules(rules)


def _matches_everything(rule: PermissionRule) -> bool:
    body = rule.pattern.strip("/")
    if rule.type is PatternType.GLOB:
        return body in ("**", "**/*")  # "**/*" leaves the root, which is always reachable
    return rule.type is PatternType.DIRECTORY and not body


def uniform_level(rules: Sequence[PermissionRule]) -> Permission | None:
    """The level every path gets, when the rules give all paths one level (every rule grants
    it and one matches everything); None when levels differ from path to path."""
    levels = {rule.permission for rule in rules}
    if len(levels) == 1 and any(_matches_everything(rule) for rule in rules):
        return levels.pop()
    return None


def _split(path: str) -> tuple[str, ...]:
    return tuple(path.split("/")) if path else ()


def _normalize(path: str) -> str:
    path = path.strip("/")
    return "" if path == "." else path


def _states_after(segments: tuple[Segment, ...], names: tuple[str, ...]) -> set[int]:
    """Positions in ``segments`` reachable after matching ``names`` (an NFA over segments)."""
    end = len(segments)

    def closure(states: set[int]) -> set[int]:
        for state in list(states):
            while state < end and segments[state].is_globstar:
                state += 1
                states.add(state)
        return states

    states = closure({0})
    for name in names:
        following: set[int] = set()
        for state in states:
            if state == end:
                continue
            segment = segments[state]
            if segment.is_globstar:
                following.add(state)
            elif segment.matches(name):
                following.add(state + 1)
        if not following:
            return following
        states = closure(following)
    return states


def _matches_every_nonempty_suffix(rest: tuple[Segment, ...]) -> bool:
    """Whether ``rest`` matches every path of one or more segments (e.g. ``**``, ``*/**``)."""
    stars = 0
    globstars = 0
    for segment in rest:
        if segment.is_globstar:
            globstars += 1
        elif segment.is_star:
            stars += 1
        else:
            return False
    return globstars > 0 and stars <= 1


class Policy:
    """The compiled form of a rule list: the level of any path, fast and cached."""

    __slots__ = (
        "_below_cached",
        "_compiled",
        "_fullmatch",
        "_order",
        "_permissions",
        "_rules_or_none",
        "_winner_cached",
        "rules",
    )

    def __init__(
        self, rules: Sequence[PermissionRule], *, cache_size: int = DEFAULT_CACHE_SIZE
    ) -> None:
        compiled = _compile_rules(rules)
        self.rules: tuple[PermissionRule, ...] = tuple(rules)
        self._compiled: tuple[CompiledPattern, ...] = tuple(compiled)
        # Highest precedence first.
        self._order: tuple[int, ...] = tuple(
            sorted(
                range(len(compiled)),
                key=lambda i: (
                    self.rules[i].priority,
                    _TYPE_RANK[self.rules[i].type],
                    compiled[i].specificity,
                    i,
                ),
                reverse=True,
            )
        )
        # Index -1 (no rule) maps to NONE / None.
        self._permissions: tuple[Permission, ...] = (
            *(rule.permission for rule in self.rules),
            Permission.NONE,
        )
        self._rules_or_none: tuple[PermissionRule | None, ...] = (*self.rules, None)
        self._fullmatch: Callable[[str], re.Match[str] | None]
        if self._order:
            # Alternatives are tried left to right and the first that matches the whole path
            # wins, so `lastindex` names the winning rule (inner groups are non-capturing).
            combined = "|".join(f"({compiled[i].regex})" for i in self._order)
            self._fullmatch = re.compile(combined, re.DOTALL).fullmatch
        else:
            self._fullmatch = _match_nothing
        self._winner_cached = lru_cache(maxsize=cache_size)(self._winner_index)
        self._below_cached = lru_cache(maxsize=cache_size)(self._may_grant_below)

    def __repr__(self) -> str:
        return f"Policy({list(self.rules)!r})"

    def _winner_index(self, path: str) -> int:
        if path and (path[0] == "/" or path[-1] == "/" or path == "."):
            path = _normalize(path)
        match = self._fullmatch(path)
        if match is None:
            return -1
        return self._order[(match.lastindex or 1) - 1]

    def level(self, path: str) -> Permission:
        """The level of ``path`` (relative, normalized; ``""`` is the root): ``none`` if no
        rule matches."""
        return self._permissions[self._winner_cached(path)]

    def winning_rule(self, path: str) -> PermissionRule | None:
        """The rule deciding ``path``'s level, or ``None`` when no rule matches."""
        return self._rules_or_none[self._winner_cached(path)]

    def describe(self, path: str) -> str:
        """A sentence for error messages: ``"src/a.py: read (rule 3 '**/*.py')"``."""
        index = self._winner_cached(path)
        shown = path or "/"
        if index < 0:
            return f"{shown}: none (no rule matches)"
        rule = self.rules[index]
        kind = "" if rule.type is PatternType.GLOB else f"{rule.type.value} "
        priority = f", priority {rule.priority}" if rule.priority else ""
        return f"{shown}: {rule.permission.value} (rule {index} {kind}{rule.pattern!r}{priority})"

    def may_grant_below(self, directory: str) -> bool:
        """Whether some path strictly below ``directory`` could get a level above ``none``.

        Decided from the patterns alone (no tree): exact or conservative, never ``False``
        when a descendant could be granted. Rules are visited in precedence order; a rule that
        can match below the directory and grants decides ``True``; a non-granting rule that
        matches *every* path below it (after the directory, its pattern is ``**``, ``*/**``,
        ...) shadows every rule after it and decides ``False``.
        """
        return self._below_cached(directory)

    def _may_grant_below(self, directory: str) -> bool:
        names = _split(_normalize(directory))
        for index in self._order:
            segments = self._compiled[index].segments
            states = _states_after(segments, names)
            end = len(segments)
            if not any(state < end for state in states):
                continue  # cannot match anything strictly below
            if self.rules[index].permission is not Permission.NONE:
                return True
            if any(_matches_every_nonempty_suffix(segments[state:]) for state in states):
                return False
        return False

    def cache_clear(self) -> None:
        """Drop the cached lookups (they never go stale: rules are immutable)."""
        self._winner_cached.cache_clear()
        self._below_cached.cache_clear()


def _match_nothing(path: str) -> re.Match[str] | None:
    return None
