"""The pure policy engine: which level (``none < view < read < write``) a path gets.

No I/O: the permission filesystem asks :meth:`Policy.level` on every operation, and
:meth:`Policy.may_grant_below` to know whether a hidden directory must stay reachable because
something below it is granted.
"""

from agentfense.policy._engine import Policy as Policy
from agentfense.policy._engine import uniform_level as uniform_level
from agentfense.policy._engine import validate_rules as validate_rules
from agentfense.policy._glob import MAX_PATTERN_LENGTH as MAX_PATTERN_LENGTH
from agentfense.policy._glob import CompiledPattern as CompiledPattern
from agentfense.policy._glob import Specificity as Specificity
from agentfense.policy._glob import compile_pattern as compile_pattern

__all__ = [
    "MAX_PATTERN_LENGTH",
    "CompiledPattern",
    "Policy",
    "Specificity",
    "compile_pattern",
    "uniform_level",
    "validate_rules",
]
