"""Permission presets: named rule lists that ``from_local(..., preset=...)`` starts from.

User rules are appended after a preset's rules, so at equal priority and specificity they win;
a user rule for one exact path outranks the preset's rules (docs/permissions.md says how).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ._rule_ranking import exact_path_priority as exact_path_priority
from ._rule_ranking import rank_user_rules
from .errors import InvalidConfigurationError
from .policy import validate_rules
from .types import PatternType, Permission, PermissionRule

RuleLike = PermissionRule | Mapping[str, Any]

# What the presets that hide secrets hide: what secret scanners (gitleaks, trufflehog,
# detect-secrets) and a security review look for by name. Written in lower case here; each
# letter becomes a class of both cases (``.env`` -> ``.[eE][nN][vV]``), so ``.ENV``,
# ``server.KEY`` and ``Secrets/`` are hidden too, while matching itself stays case-sensitive
# (a user's own pattern means exactly what it says). Character classes are glob syntax the
# upstream Go server's ``filepath.Match`` understands as well.
_SECRET_NAMES = (
    # environment files (.env, .env.local, .envrc) and directories named like one
    "**/.env*",
    "**/.env*/**",
    # private keys, certificates and key stores
    "**/*.key",
    "**/*.pem",
    "**/*.p12",
    "**/*.pfx",
    "**/*.pkcs12",
    "**/*.jks",
    "**/*.keystore",
    "**/*.kdbx",
    "**/*.ppk",
    "**/id_rsa*",
    "**/id_dsa*",
    "**/id_ecdsa*",
    "**/id_ed25519*",
    "**/.ssh/**",
    "**/.gnupg/**",
    # credentials of tools and registries
    "**/credentials*",
    "**/credentials*/**",
    "**/service-account*.json",
    "**/service_account*.json",
    "**/.aws/**",
    "**/.docker/config.json",
    "**/.dockercfg",
    "**/.kube/config",
    "**/.npmrc",
    "**/.yarnrc.yml",  # Yarn 2+ keeps registry tokens (npmAuthToken) here
    "**/.pypirc",
    "**/.netrc",
    "**/.git-credentials",
    "**/.htpasswd",
    "**/.pgpass",
    "**/.vault-token",
    "**/.s3cfg",
    "**/secrets.*",
    "**/secrets/**",
    # Terraform state holds every secret of the infrastructure it describes
    "**/*.tfstate",
    "**/*.tfstate.*",
    "**/.terraform/**",
    # and its variables files and CLI configuration hold the secrets given to it
    "**/*.tfvars",
    "**/*.tfvars.json",
    "**/.terraformrc",
    "**/terraform.rc",
    # a repository's history holds what was ever committed, secrets included
    "**/.git/**",
)


def _any_case(pattern: str) -> str:
    """``pattern`` with each ASCII letter made a class of its two cases."""
    return "".join(
        f"[{c.lower()}{c.upper()}]" if c.isascii() and c.isalpha() else c for c in pattern
    )


_SECRETS = tuple(_any_case(pattern) for pattern in _SECRET_NAMES)


# Priorities: secrets outrank everything a preset grants (so `output/.env` stays hidden), and
# the writable areas outrank the read-everything base rule. A user's pattern needs a priority
# of its own above 100 to uncover a secret; a user's rule for one exact path outranks them all.
SECRET_PRIORITY = 100
AREA_PRIORITY = 10


def _rule(pattern: str, permission: Permission, priority: int = 0) -> PermissionRule:
    return PermissionRule(pattern, permission, priority=priority)


_HIDE_SECRETS = tuple(_rule(p, Permission.NONE, SECRET_PRIORITY) for p in _SECRETS)

_PRESETS: dict[str, tuple[PermissionRule, ...]] = {
    "view-only": (_rule("**", Permission.VIEW), *_HIDE_SECRETS),
    "read-only": (_rule("**", Permission.READ),),
    "full-access": (_rule("**", Permission.WRITE),),
    "agent-safe": (
        _rule("**", Permission.READ),
        # Paths in rules are from the codebase's root: these are /workspace/output and
        # /workspace/tmp, written without a leading "/" so that nobody reads the sandbox's own
        # /tmp (always writable, not part of the codebase) into them.
        _rule("output/**", Permission.WRITE, AREA_PRIORITY),
        _rule("tmp/**", Permission.WRITE, AREA_PRIORITY),
        *_HIDE_SECRETS,
    ),
    "development": (_rule("**", Permission.WRITE), *_HIDE_SECRETS),
}
_BUILTIN = frozenset(_PRESETS)
_SUMMARIES = {
    "view-only": "view (list, stat) everything, read nothing; secrets hidden",
    "read-only": "read everything, secrets included; write nothing",
    "full-access": "read and write everything, secrets included",
    "agent-safe": (
        "read everything; write the codebase's output/ and tmp/ folders (/workspace/output, "
        "/workspace/tmp; the sandbox's own /tmp is always writable); secrets hidden"
    ),
    "development": "read and write everything; secrets hidden",
}


def list_presets() -> list[str]:
    """The names of every preset, built-in and registered, sorted."""
    return sorted(_PRESETS)


def get_preset(name: str) -> list[PermissionRule]:
    """The rules of preset ``name``; ``InvalidConfigurationError`` for an unknown name."""
    try:
        return list(_PRESETS[name])
    except KeyError:
        close = difflib.get_close_matches(str(name), list_presets(), n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise InvalidConfigurationError(
            f"unknown preset {name!r}; {hint}known presets: {', '.join(list_presets())}"
        ) from None


def describe_preset(name: str) -> str:
    """What preset ``name`` gives, in one line; ``InvalidConfigurationError`` if unknown."""
    rules = get_preset(name)
    return _SUMMARIES.get(name, f"registered by this program ({len(rules)} rules)")


def get_preset_dicts(name: str) -> list[dict[str, Any]]:
    """The rules of preset ``name`` as plain dicts."""
    return [rule.to_dict() for rule in get_preset(name)]


def normalize_rules(rules: Iterable[RuleLike] | None) -> list[PermissionRule]:
    """Rules given as ``PermissionRule`` objects or dicts, validated."""
    if rules is None:
        return []
    if isinstance(rules, (str, bytes, Mapping)):
        raise InvalidConfigurationError("permissions must be a list of rules")
    return [PermissionRule.from_value(rule) for rule in rules]


def extend_preset(
    base: str,
    additions: Sequence[RuleLike] | None = None,
    overrides: Sequence[RuleLike] | None = None,
) -> list[PermissionRule]:
    """Preset ``base`` with ``additions`` appended; ``overrides`` replace rules of equal pattern.

    The rules added rank as ``permissions=`` do: one for an exact path at the default priority
    outranks the preset's rules; ``RuleShadowedWarning`` for one that is outranked."""
    rules = get_preset(base)
    replacing = normalize_rules(overrides)
    replaced = {override.pattern for override in replacing}
    kept = [rule for rule in rules if rule.pattern not in replaced]
    return rank_user_rules(base, kept, replacing + normalize_rules(additions), stacklevel=2)


def register_preset(name: str, rules: Sequence[RuleLike], *, replace: bool = False) -> None:
    """Make ``rules`` available as preset ``name`` (built-in presets cannot be replaced)."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidConfigurationError("preset name must be a non-empty string")
    if name in _BUILTIN:
        raise InvalidConfigurationError(f"preset {name!r} is built in and cannot be replaced")
    if name in _PRESETS and not replace:
        raise InvalidConfigurationError(f"preset {name!r} exists; pass replace=True to replace it")
    validated = normalize_rules(rules)
    validate_rules(validated)
    if not validated:
        raise InvalidConfigurationError(f"preset {name!r} needs at least one rule")
    _PRESETS[name] = tuple(validated)


def resolve_permissions(
    preset: str | None, permissions: Iterable[RuleLike] | None
) -> list[PermissionRule]:
    """A preset's rules followed by the user's, ranked as ``from_local`` sends them (a user
    rule for an exact path at the default priority outranks the preset's rules), with a
    ``RuleShadowedWarning`` for each rule of the user still outranked."""
    rules = get_preset(preset) if preset else []
    return rank_user_rules(preset, rules, normalize_rules(permissions), stacklevel=3)


__all__ = [
    "PatternType",
    "describe_preset",
    "exact_path_priority",
    "extend_preset",
    "get_preset",
    "get_preset_dicts",
    "list_presets",
    "register_preset",
    "resolve_permissions",
]
