"""The policy engine: the level of a path under a list of permission rules (pure: no I/O).

Precedence when several rules match a path (the first difference decides):

1. the higher ``priority``;
2. the type: ``file`` > ``directory`` > ``glob``;
3. the more specific pattern (:class:`~agentfense.policy.Specificity`);
4. the later rule in the list, so a user's rule appended after a preset's wins a tie.

No matching rule means ``none``. The rules are compiled once into one automaton over path
segments (:mod:`._matcher`): a lookup costs time linear in the path's depth whatever the rules,
and results are cached per path in a bounded LRU cache. A rule list is limited in size
(:data:`MAX_RULES`, :data:`MAX_WILDCARD_RULES`) so that one step of the automaton is bounded
too: a client's rules cost its own sandbox a bounded amount per path, nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache, partial

from ..errors import InvalidConfigurationError
from ..types import PatternType, Permission, PermissionRule
from ._glob import CompiledPattern, PatternError, compile_segments
from ._matcher import Automaton, MatchState

_TYPE_RANK = {PatternType.GLOB: 0, PatternType.DIRECTORY: 1, PatternType.FILE: 2}

DEFAULT_CACHE_SIZE = 16384
MAX_RULES = 4096
MAX_WILDCARD_RULES = 256


def _compile_rules(rules: object) -> list[CompiledPattern]:
    # `object`: callers are typed to pass rules, but this is where an untyped caller's
    # string, or list of anything, is refused with a sentence.
    if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence):
        raise InvalidConfigurationError("permissions must be a list of rules")
    if len(rules) > MAX_RULES:
        raise InvalidConfigurationError(
            f"permissions: {len(rules)} rules; at most {MAX_RULES} are allowed"
        )
    compiled: list[CompiledPattern] = []
    wildcards = 0
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
            pattern = compile_segments(rule.pattern, rule.type)
        except PatternError as exc:
            raise InvalidConfigurationError(f"{where}: {exc}") from None
        if any(not segment.is_literal for segment in pattern.segments):
            wildcards += 1
            if wildcards > MAX_WILDCARD_RULES:
                raise InvalidConfigurationError(
                    f"{where}: more than {MAX_WILDCARD_RULES} rules with a wildcard "
                    "('*', '?', '[...]', '**' or a directory rule); use file rules for "
                    "single paths"
                )
        compiled.append(pattern)
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


def _normalize(path: str) -> str:
    path = path.strip("/")
    return "" if path == "." else path


def _state_of(automaton: Automaton, path: str) -> MatchState:
    path = _normalize(path)
    return automaton.walk(path.split("/") if path else ())


class Policy:
    """The compiled form of a rule list: the level of any path, fast and cached.

    For a tree walked from its root, :attr:`start` and :meth:`step` give each path's
    :class:`MatchState` from its parent's in one step; :meth:`level_of` reads its level.
    """

    __slots__ = ("_automaton", "_cached", "_compiled", "order", "rules")

    def __init__(
        self, rules: Sequence[PermissionRule], *, cache_size: int = DEFAULT_CACHE_SIZE
    ) -> None:
        compiled = _compile_rules(rules)
        self.rules: tuple[PermissionRule, ...] = tuple(rules)
        self._compiled: tuple[CompiledPattern, ...] = tuple(compiled)
        # Highest precedence first.
        order = sorted(
            range(len(compiled)),
            key=lambda i: (
                self.rules[i].priority,
                _TYPE_RANK[self.rules[i].type],
                compiled[i].specificity,
                i,
            ),
            reverse=True,
        )
        self.order: tuple[int, ...] = tuple(order)
        """The rules' indices, highest precedence first: the first that matches decides."""
        rank = [0] * len(compiled)
        for position, index in enumerate(order):
            rank[index] = position
        self._automaton = Automaton(
            [pattern.segments for pattern in compiled],
            [rule.permission for rule in self.rules],
            rank,
        )
        # Over the automaton, not a method: a cache holding its policy would be a cycle.
        self._cached = lru_cache(maxsize=cache_size)(partial(_state_of, self._automaton))

    def __repr__(self) -> str:
        return f"Policy({list(self.rules)!r})"

    @property
    def start(self) -> MatchState:
        """The state of the root."""
        return self._automaton.start

    def step(self, state: MatchState, name: str) -> MatchState:
        """The state of ``name`` in the directory whose state is ``state``."""
        return self._automaton.step(state, name)

    def state(self, path: str) -> MatchState:
        """The state of ``path`` (relative; ``""`` is the root), from the cache if it can."""
        return self._cached(path)

    def level_of(self, state: MatchState) -> Permission:
        return Permission.NONE if state.winner < 0 else self.rules[state.winner].permission

    def level(self, path: str) -> Permission:
        """The level of ``path`` (relative; ``""`` is the root): ``none`` if no rule matches."""
        return self.level_of(self._cached(path))

    def winning_rule(self, path: str) -> PermissionRule | None:
        """The rule deciding ``path``'s level, or ``None`` when no rule matches."""
        winner = self._cached(path).winner
        return None if winner < 0 else self.rules[winner]

    def describe(self, path: str) -> str:
        """A sentence for error messages: ``"src/a.py: read (rule 3 '**/*.py')"``."""
        index = self._cached(path).winner
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
        return self._cached(directory).may_grant_below()

    def may_write_below(self, directory: str) -> bool:
        """Whether some path strictly below ``directory`` could get ``write`` (conservative in
        the same way as :meth:`may_grant_below`)."""
        return self._cached(directory).may_write_below()

    def cache_clear(self) -> None:
        """Drop the cached lookups (they never go stale: rules are immutable)."""
        self._cached.cache_clear()
