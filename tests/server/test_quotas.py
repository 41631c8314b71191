"""Tenant quotas from the server's settings: the default for every tenant, a tenant's own
from ``[server.quotas.<tenant>]`` (only the names it gives), and a sentence for each mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentfense.errors import InvalidConfigurationError, ResourceLimitExceededError
from agentfense.server.config import load_config
from agentfense.server.quotas import Quota


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "server.toml"
    path.write_text(text)
    return path


def test_a_tenants_own_quota_keeps_the_default_for_what_it_does_not_name(tmp_path: Path) -> None:
    path = _config(
        tmp_path,
        "[server]\nquota_sandboxes = 7\nquota_sessions = 9\n[server.quotas.ci]\nsandboxes = 50\n",
    )
    table = load_config(path, environ={}).quota_table()
    assert table.of("ci") == Quota(
        sandboxes=50,
        sessions=9,
        codebases=Quota().codebases,
        codebase_bytes=Quota().codebase_bytes,
        codebase_entries=Quota().codebase_entries,
    )
    assert table.of("anyone-else").sandboxes == 7


def test_a_quota_of_zero_is_no_limit_and_beyond_is_refused_with_its_name() -> None:
    table = load_config(None, environ={"AGENTFENSE_QUOTA_SANDBOXES": "0"}).quota_table()
    table.check("t", "sandboxes", held=10**9)
    table = load_config(None, environ={"AGENTFENSE_QUOTA_SANDBOXES": "2"}).quota_table()
    table.check("t", "sandboxes", held=1)
    with pytest.raises(ResourceLimitExceededError, match=r"'t'.*quota of 2 sandboxes"):
        table.check("t", "sandboxes", held=2)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("[server.quotas.ci]\nsandbox = 3\n", "unknown quota 'sandbox'"),
        ("[server.quotas.ci]\nsandboxes = -1\n", "quotas.ci.sandboxes must be an integer >= 0"),
        ("[server.quotas.ci]\nsandboxes = '3'\n", "quotas.ci.sandboxes must be an integer"),
        ("[server.quotas.ci]\nsandboxes = true\n", "quotas.ci.sandboxes must be an integer"),
        ("[server]\nquotas = 3\n", "quotas must be a table of tenants"),
        ("[server]\nquotas = {ci = 3}\n", "quotas.ci must be a table"),
        ("[server]\nquota_sessions = -2\n", "quota sessions must be an integer >= 0"),
        # A name no token can have (tenants are lower case) would hold no one back.
        ("[server.quotas.CI]\nsandboxes = 3\n", "quotas.CI: tenant 'CI' is not a valid name"),
        ('[server.quotas."c i"]\nsandboxes = 3\n', "quotas.c i: tenant 'c i' is not a valid"),
    ],
)
def test_mistakes_are_refused_in_a_sentence(tmp_path: Path, text: str, said: str) -> None:
    with pytest.raises(InvalidConfigurationError, match=said):
        load_config(_config(tmp_path, text), environ={})


def test_per_tenant_quotas_come_from_the_file_not_the_environment() -> None:
    with pytest.raises(InvalidConfigurationError, match=r"\[server.quotas.<tenant>\]"):
        load_config(None, environ={"AGENTFENSE_QUOTAS": "ci=3"})


def test_a_reservation_counts_until_its_block_ends_and_then_no_more() -> None:
    table = load_config(None, environ={"AGENTFENSE_QUOTA_SANDBOXES": "2"}).quota_table()
    with table.reserve("t", "sandboxes", held=0), table.reserve("t", "sandboxes", held=0):
        with pytest.raises(ResourceLimitExceededError, match="quota of 2 sandboxes"):
            table.check("t", "sandboxes", held=0)  # (two under way: none left)
        table.check("another", "sandboxes", held=0)  # (another tenant's are its own)
        with table.reserve("t", "sandboxes", held=0, adding=0):  # (nothing: always room)
            pass
    with pytest.raises(ResourceLimitExceededError), table.reserve("t", "sandboxes", held=2):
        pass
    table.check("t", "sandboxes", held=1)  # (both ended; the refused one held nothing)
