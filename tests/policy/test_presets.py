"""What the presets hide: every secret a security review expects, in any case, and nothing
ordinary beside it."""

from __future__ import annotations

import pytest

from agentfense.policy import Policy, validate_rules
from agentfense.presets import get_preset, list_presets
from agentfense.types import Permission, PermissionRule

NONE = Permission.NONE

# The presets that hide secrets (view-only is the default of from_local), and the level each
# gives to everything else.
HIDING = {
    "view-only": Permission.VIEW,
    "agent-safe": Permission.READ,
    "development": Permission.WRITE,
}
# Those that say what they give to every path, secrets included.
LITERAL = {"read-only": Permission.READ, "full-access": Permission.WRITE}

SECRETS = [
    ".env",
    ".env.local",
    ".env.production",
    ".envrc",
    ".env.d/app.conf",
    "server.key",
    "tls/cert.pem",
    "bundle.p12",
    "bundle.pfx",
    "bundle.pkcs12",
    "release.jks",
    "android/app/upload.keystore",
    "passwords.kdbx",
    "putty.ppk",
    "id_rsa",
    "id_rsa.pub",
    "id_dsa",
    "id_ecdsa",
    "id_ed25519",
    "deploy/id_ed25519_deploy",
    ".ssh/config",
    ".ssh/known_hosts",
    ".ssh",
    ".gnupg/pubring.kbx",
    "credentials.json",
    "config/credentials.yml.enc",
    "credentials/prod",
    "service-account.json",
    "gcp/service-account-prod.json",
    "service_account.json",
    ".aws/credentials",
    ".aws/config",
    ".docker/config.json",
    ".dockercfg",
    ".kube/config",
    ".npmrc",
    "frontend/.npmrc",
    ".yarnrc.yml",
    "web/.yarnrc.yml",
    ".pypirc",
    ".netrc",
    ".git-credentials",
    "public/.htpasswd",
    ".pgpass",
    ".vault-token",
    ".s3cfg",
    "secrets.yaml",
    "config/secrets.json",
    "secrets/db",
    "deploy/secrets",
    "infra/terraform.tfstate",
    "infra/terraform.tfstate.backup",
    "infra/.terraform/providers/x",
    "infra/.terraform",
    "infra/terraform.tfvars",
    "infra/prod.auto.tfvars",
    "infra/terraform.tfvars.json",
    "infra/prod.auto.tfvars.json",
    ".terraformrc",
    "terraform.rc",
    ".git/config",
    ".git",
    "vendor/lib/.git/HEAD",
]

ORDINARY = [
    "keyboard.py",
    "monkey.py",
    "environment.md",
    "env.py",
    "src/envelope.py",
    "docs/keys.md",
    "hotkeys.json",
    "src/ssh_client.py",
    "ssh/README.md",
    "docker/config.json",
    "docker-compose.yml",
    "Dockerfile",
    "credential_helper.md",
    "secret.txt",
    "terraform/main.tf",
    "tfstate.md",
    "terraform/variables.tf",
    "terraform/terraform.tfvars.example",
    "tfvars.md",
    "terraform.rc.md",
    "yarn.lock",
    ".yarnrc",
    ".yarn/releases/yarn-4.1.0.cjs",
    "s3cfg.py",
    "pem_utils.py",
    "npmrc.md",
    ".gitignore",
    ".github/workflows/ci.yml",
    "id.py",
    "identity_rsa.md",
    "README.md",
]


def _cases(path: str) -> list[str]:
    """``path`` as written, in upper case, and with each name capitalized."""
    return [
        path,
        path.upper(),
        "/".join(
            name[:1].upper() + name[1:] if name[:1] != "." else "." + name[1:2].upper() + name[2:]
            for name in path.split("/")
        ),
    ]


@pytest.mark.parametrize("preset", sorted(HIDING))
@pytest.mark.parametrize("path", SECRETS)
def test_secrets_are_hidden_in_any_case(preset: str, path: str) -> None:
    policy = Policy(get_preset(preset))
    for spelling in _cases(path):
        assert policy.level(spelling) is NONE, f"{preset} shows {spelling}"
        assert policy.level(f"deep/er/{spelling}") is NONE, f"{preset} shows deep/er/{spelling}"


@pytest.mark.parametrize("preset", sorted(HIDING))
@pytest.mark.parametrize("path", ORDINARY)
def test_ordinary_files_are_not_hidden(preset: str, path: str) -> None:
    policy = Policy(get_preset(preset))
    for spelling in _cases(path):
        assert policy.level(spelling) is HIDING[preset], f"{preset} hides {spelling}"


@pytest.mark.parametrize("preset", sorted(LITERAL))
def test_whole_workspace_presets_hide_nothing(preset: str) -> None:
    policy = Policy(get_preset(preset))
    assert {policy.level(path) for path in SECRETS + ORDINARY} == {LITERAL[preset]}


def test_every_preset_is_classified() -> None:
    assert sorted(HIDING | LITERAL) == list_presets()


def test_hiding_presets_leave_room_for_user_rules() -> None:
    """The secret rules are wildcard rules; a user still has most of the allowance."""
    many = [PermissionRule(f"**/*.x{i}", "read") for i in range(200)]
    for preset in HIDING:
        validate_rules([*get_preset(preset), *many])


def test_a_user_rule_at_the_secret_priority_uncovers_one() -> None:
    rules = [*get_preset("agent-safe"), PermissionRule("**/.npmrc", "read", priority=100)]
    policy = Policy(rules)
    assert policy.level("frontend/.npmrc") is Permission.READ
    assert policy.level("frontend/.NPMRC") is NONE  # the user's own pattern is case-sensitive
