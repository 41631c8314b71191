"""``agentfense token create|list|revoke``: the API tokens of a state directory, changed in
place (a running server sees the change from its next call)."""

from __future__ import annotations

import argparse

from ._admin import table


def token(args: argparse.Namespace) -> int:
    from ..server.config import load_config
    from ..server.tokens import TokenStore

    config = load_config(args.config, overrides={"state_dir": args.state_dir})
    store = TokenStore(config.state_dir)
    if args.verb == "create":
        config.state_dir.mkdir(parents=True, exist_ok=True)
        print(store.create(args.tenant))
        return 0
    if args.verb == "revoke":
        record = store.revoke(args.token_id)
        print(f"revoked {record.id} (tenant {record.tenant})")
        return 0
    rows = [[r.id, r.tenant, r.created, "yes" if r.local else ""] for r in store.records()]
    print(table(["ID", "TENANT", "CREATED", "LOCAL OWNER"], rows))
    return 0
