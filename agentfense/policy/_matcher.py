"""Every rule of a policy as one automaton over path segments (pure: no I/O).

Each rule's pattern is a list of segments; a *position* is a point in one rule's list, and all
rules' positions are numbered together. The state after a path is the set of positions its
names can reach, so matching a path costs, per name, one dictionary lookup for the literal
segments plus one test per wildcard segment in reach: linear in the path, whatever the rules
(a backtracking regex over the whole path is exponential in the ``**`` of a rule such as
``**/a/**/a/**/a/**/b``). States are interned, and a tree is matched incrementally: the
permission filesystem keeps each directory's state and takes one step per name below it.

A state answers, once and then from its cache: the winning rule (the best of the rules whose
last position it holds), whether some path strictly below may be granted at all, and whether
some path below may be granted ``write``.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..types import Permission
from ._glob import Segment

# Distinct states kept for reuse; beyond it new ones are still correct, only not shared.
MAX_INTERNED_STATES = 1 << 16


def _covers_every_path_below(rest: Sequence[Segment]) -> bool:
    """Whether ``rest`` matches every path of one or more segments (``**``, ``*/**``...)."""
    stars = globstars = 0
    for segment in rest:
        if segment.is_globstar:
            globstars += 1
        elif segment.is_star:
            stars += 1
        else:
            return False
    return globstars > 0 and stars <= 1


@dataclass(slots=True)
class _Steps:
    """How one state steps: literal segments by name; the positions every name reaches (after
    ``**`` and ``*``), as the state most names lead to; the other wildcard segments, with one
    regex that tells whether a name matches any of them."""

    literal: dict[str, tuple[int, ...]]
    always: frozenset[int]
    wildcards: tuple[tuple[int, Segment], ...]
    any_wildcard: Callable[[str], re.Match[str] | None] | None


class MatchState:
    """A set of positions: what the rules say of one path, and how the names below it step.

    Obtained from :attr:`Automaton.start` and :meth:`Automaton.step`, never built directly.
    """

    __slots__ = ("_automaton", "_below", "_steps", "_write_below", "positions", "winner")

    def __init__(self, automaton: Automaton, positions: frozenset[int]) -> None:
        # Weak, as no state refers to another: the automaton and its states are freed as
        # soon as their policy is (a cycle would wait for a full garbage collection).
        self._automaton = weakref.ref(automaton)
        self.positions = positions
        ends = [automaton.rule_of[p] for p in positions if automaton.is_end[p]]
        self.winner = min(ends, key=automaton.rank.__getitem__) if ends else -1
        """The index of the rule deciding this path's level, -1 when none matches."""
        self._steps: _Steps | None = None
        self._below: bool | None = None
        self._write_below: bool | None = None

    def may_grant_below(self) -> bool:
        """Whether some path strictly below could get a level above ``none``."""
        if self._below is None:
            self._below = self._tables().decides_below(self, lambda p: p is not Permission.NONE)
        return self._below

    def may_write_below(self) -> bool:
        """Whether some path strictly below could get ``write``."""
        if self._write_below is None:
            self._write_below = self._tables().decides_below(self, lambda p: p is Permission.WRITE)
        return self._write_below

    def _tables(self) -> Automaton:
        automaton = self._automaton()
        assert automaton is not None, "a state outlived its policy"
        return automaton


class Automaton:
    """The positions of every rule, numbered together, and the interned states over them."""

    def __init__(
        self,
        patterns: Sequence[tuple[Segment, ...]],
        permissions: Sequence[Permission],
        rank: Sequence[int],
    ) -> None:
        """``rank[r]`` orders rule ``r`` by precedence (0 is the strongest)."""
        self.rank = tuple(rank)
        self.permissions = tuple(permissions)
        self.rule_of: list[int] = []
        self.segment: list[Segment | None] = []  # None at a rule's end
        self.is_end: list[bool] = []
        self.covers_below: list[bool] = []
        self._starts: list[int] = []
        for rule, segments in enumerate(patterns):
            self._starts.append(len(self.segment))
            for position in range(len(segments) + 1):
                self.rule_of.append(rule)
                self.segment.append(segments[position] if position < len(segments) else None)
                self.is_end.append(position == len(segments))
                self.covers_below.append(_covers_every_path_below(segments[position:]))
        # The positions each one stands for: itself, and after a `**` (which may match no
        # segment) the next one as well. Runs of `**` were collapsed when parsing.
        self._closure: list[tuple[int, ...]] = []
        for position, segment in enumerate(self.segment):
            reach = [position]
            if segment is not None and segment.is_globstar:
                reach.append(position + 1)
            self._closure.append(tuple(reach))
        self._interned: dict[frozenset[int], MatchState] = {}
        self.start = self._state({p for s in self._starts for p in self._closure[s]})
        self.dead = self._state(set())

    def _state(self, positions: set[int]) -> MatchState:
        key = frozenset(positions)
        state = self._interned.get(key)
        if state is None:
            state = MatchState(self, key)
            if len(self._interned) < MAX_INTERNED_STATES:
                self._interned[key] = state
        return state

    def _tables(self, state: MatchState) -> _Steps:
        literal: dict[str, list[int]] = {}
        always: set[int] = set()
        wildcards: list[tuple[int, Segment]] = []
        for position in state.positions:
            segment = self.segment[position]
            if segment is None:
                continue
            if segment.is_literal:
                literal.setdefault(segment.source, []).append(position)
            elif segment.is_globstar:
                always.update(self._closure[position])  # `**` takes the name and stays
            elif segment.is_star:
                always.update(self._closure[position + 1])
            else:
                wildcards.append((position, segment))
        any_wildcard = None
        if wildcards:
            either = "|".join(f"(?:{segment.regex})" for _, segment in wildcards)
            any_wildcard = re.compile(either, re.DOTALL).fullmatch
        steps = _Steps(
            {name: tuple(ps) for name, ps in literal.items()},
            frozenset(always),
            tuple(wildcards),
            any_wildcard,
        )
        state._steps = steps
        return steps

    def step(self, state: MatchState, name: str) -> MatchState:
        """The state of ``parent/name`` from the state of ``parent``."""
        if not state.positions:
            return state
        steps = state._steps or self._tables(state)
        hits = steps.literal.get(name)
        wild = steps.any_wildcard is not None and steps.any_wildcard(name) is not None
        if not hits and not wild:
            return self._interned.get(steps.always) or self._state(set(steps.always))
        closure = self._closure
        following = set(steps.always)
        for position in hits or ():
            following.update(closure[position + 1])
        if wild:
            for position, segment in steps.wildcards:
                if segment.matches(name):
                    following.update(closure[position + 1])
        return self._state(following)

    def walk(self, names: Sequence[str]) -> MatchState:
        state = self.start
        for name in names:
            state = self.step(state, name)
        return state

    def decides_below(self, state: MatchState, grants: Callable[[Permission], bool]) -> bool:
        """Whether a rule that ``grants`` (a predicate on the level) may decide some path
        strictly below ``state``'s path. Rules are visited by precedence; a non-granting rule
        whose pattern covers every path below shadows all that come after it."""
        reaching: dict[int, bool] = {}  # rule -> whether it covers every path below
        for position in state.positions:
            if not self.is_end[position]:
                rule = self.rule_of[position]
                reaching[rule] = reaching.get(rule, False) or self.covers_below[position]
        for rule in sorted(reaching, key=self.rank.__getitem__):
            if grants(self.permissions[rule]):
                return True
            if reaching[rule]:
                return False
        return False
