"""The pure policy engine: which level (``none < view < read < write``) a path gets.

No I/O: the permission filesystem keeps each path's :class:`MatchState` (one step from its
parent's), reads its level, and asks whether a hidden directory must stay reachable because
something below it is granted, or may hold a new writable name.
"""

from agentfense.policy._engine import MAX_RULES as MAX_RULES
from agentfense.policy._engine import MAX_WILDCARD_RULES as MAX_WILDCARD_RULES
from agentfense.policy._engine import Policy as Policy
from agentfense.policy._engine import uniform_level as uniform_level
from agentfense.policy._engine import validate_rules as validate_rules
from agentfense.policy._glob import MAX_GLOBSTARS as MAX_GLOBSTARS
from agentfense.policy._glob import MAX_PATTERN_LENGTH as MAX_PATTERN_LENGTH
from agentfense.policy._glob import CompiledPattern as CompiledPattern
from agentfense.policy._glob import Specificity as Specificity
from agentfense.policy._glob import compile_pattern as compile_pattern
from agentfense.policy._matcher import MatchState as MatchState

__all__ = [
    "MAX_GLOBSTARS",
    "MAX_PATTERN_LENGTH",
    "MAX_RULES",
    "MAX_WILDCARD_RULES",
    "CompiledPattern",
    "MatchState",
    "Policy",
    "Specificity",
    "compile_pattern",
    "uniform_level",
    "validate_rules",
]
