"""The token store: hashed tokens by public id, a change by another process seen at the next
check, a damaged store refused in a sentence; and how the caller's tenant reaches handlers."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from agentfense.errors import InvalidConfigurationError
from agentfense.server.callers import calling_as, current_tenant
from agentfense.server.tokens import TokenStore


def test_a_token_names_its_tenant_until_revoked_and_nothing_else_does(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    token = store.create("alice")
    other = store.create("bob")
    assert store.tenant_of(token) == "alice"
    assert store.tenant_of(other) == "bob"
    prefix, token_id, secret = token.split("_", 2)
    assert prefix == "af"
    assert len(token_id) == 8
    assert len(secret) == 43
    for wrong in ("", token + "x", token[:-1], f"af_{token_id}_{other.split('_', 2)[2]}", "é" * 60):
        assert store.tenant_of(wrong) is None, wrong
    store.revoke(token_id)
    assert store.tenant_of(token) is None
    assert store.tenant_of(other) == "bob"
    with pytest.raises(InvalidConfigurationError, match=f"no token has the id '{token_id}'"):
        store.revoke(token_id)


def test_a_change_made_by_another_store_counts_at_the_next_check(tmp_path: Path) -> None:
    serving, cli = TokenStore(tmp_path), TokenStore(tmp_path)
    assert serving.tenant_of("af_00000000_" + "x" * 43) is None  # (read once: empty)
    token = cli.create("carol")
    assert serving.tenant_of(token) == "carol"
    cli.revoke(token.split("_")[1])
    assert serving.tenant_of(token) is None


def test_a_new_local_owner_token_revokes_the_earlier_ones_only(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    first, named = store.create("local", local=True), store.create("local")
    second = store.create("local", local=True)
    assert store.tenant_of(first) is None
    assert store.tenant_of(named) == "local"
    assert store.tenant_of(second) == "local"


def test_a_damaged_store_and_a_bad_tenant_are_sentences(tmp_path: Path) -> None:
    (tmp_path / "tokens.json").write_text(json.dumps({"tokens": [{"id": 1}]}))
    with pytest.raises(InvalidConfigurationError, match=r"the token store .* is damaged"):
        TokenStore(tmp_path).records()
    with pytest.raises(InvalidConfigurationError, match="tenant 'A B' is not a valid name"):
        TokenStore(tmp_path / "other").create("A B")


@pytest.mark.anyio
async def test_the_callers_tenant_follows_the_call_into_its_tasks() -> None:
    seen: list[str] = []

    async def handler() -> None:
        seen.append(current_tenant())

    with calling_as("alice"):
        async with anyio.create_task_group() as tg:
            tg.start_soon(handler)
    assert seen == ["alice"]
    with pytest.raises(LookupError):
        current_tenant()
