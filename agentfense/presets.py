"""Permission presets: named rule lists that ``from_local(..., preset=...)`` starts from.

User rules are appended after a preset's rules, so at equal priority and specificity they win.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

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


# Priorities: secrets outrank everything a preset grants (so `/output/.env` stays hidden), and
# the writable areas outrank the read-everything base rule. A user rule needs a priority of its
# own above 100 to uncover a secret; at equal priority and specificity the user's rule wins.
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
        _rule("/output/**", Permission.WRITE, AREA_PRIORITY),
        _rule("/tmp/**", Permission.WRITE, AREA_PRIORITY),
        *_HIDE_SECRETS,
    ),
    "development": (_rule("**", Permission.WRITE), *_HIDE_SECRETS),
}
_BUILTIN = frozenset(_PRESETS)


def list_presets() -> list[str]:
    """The names of every preset, built-in and registered, sorted."""
    return sorted(_PRESETS)


def get_preset(name: str) -> list[PermissionRule]:
    """The rules of preset ``name``; ``InvalidConfigurationError`` for an unknown name."""
    try:
        return list(_PRESETS[name])
    except KeyError:
        raise InvalidConfigurationError(
            f"unknown preset {name!r}; known presets: {', '.join(list_presets())}"
        ) from None


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
    """Preset ``base`` with ``additions`` appended; ``overrides`` replace rules of equal pattern."""
    rules = get_preset(base)
    for override in normalize_rules(overrides):
        rules = [rule for rule in rules if rule.pattern != override.pattern]
        rules.append(override)
    return rules + normalize_rules(additions)


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
    """A preset's rules followed by the user's, as ``from_local`` sends them."""
    rules = get_preset(preset) if preset else []
    return rules + normalize_rules(permissions)


__all__ = [
    "PatternType",
    "extend_preset",
    "get_preset",
    "get_preset_dicts",
    "list_presets",
    "register_preset",
    "resolve_permissions",
]
