"""API tokens, kept hashed in the state directory (``tokens.json``, mode 0600).

A token is ``af_<id>_<secret>``: ``id`` (8 hex digits) is public, names the token in
``token list`` and ``token revoke``, and finds its record; ``secret`` is 32 random bytes. Only
the SHA-256 of the whole token is stored, and a presented token is checked by comparing
hashes with :func:`hmac.compare_digest`. Every change is written whole to a temporary file
and renamed over the store, under ``tokens.lock`` (the CLI and the server may both write).
The server re-reads the file when its size, inode or mtime changed: one ``stat`` per call,
so a token created or revoked by the CLI counts from the next call, without a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..errors import InvalidConfigurationError

LOCAL_TENANT = "local"  # the tenant of the server's own user (and of every call with auth none)
_TENANT = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_TOKEN = re.compile(r"af_([0-9a-f]{8})_[A-Za-z0-9_-]{43}")
_NOTHING = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """What the store keeps of one token: never the token itself."""

    id: str
    tenant: str
    created: str  # ISO 8601, UTC
    sha256: str
    local: bool = False  # made by the server for its own user (the local owner's file)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_tenant(tenant: str) -> str:
    if not _TENANT.fullmatch(tenant):
        raise InvalidConfigurationError(
            f"tenant {tenant!r} is not a valid name: use 1-63 of a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit"
        )
    return tenant


class TokenStore:
    """The tokens of one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self._path = state_dir / "tokens.json"
        self._lock = state_dir / "tokens.lock"
        self._seen: tuple[int, int, int] | None = None
        self._by_id: dict[str, TokenRecord] = {}

    def tenant_of(self, token: str) -> str | None:
        """The tenant ``token`` belongs to, or None (unknown, revoked or malformed)."""
        self._refresh()
        match = _TOKEN.fullmatch(token)
        record = self._by_id.get(match.group(1)) if match else None
        stored = record.sha256 if record is not None else _NOTHING
        same = hmac.compare_digest(_hash(token), stored)  # (the same work either way)
        return record.tenant if record is not None and same else None

    def records(self) -> list[TokenRecord]:
        self._refresh()
        return sorted(self._by_id.values(), key=lambda r: (r.created, r.id))

    def create(self, tenant: str, *, local: bool = False) -> str:
        """A new token of ``tenant``: returned once, stored only as its hash. A ``local`` one
        (the server's own user's, whose file is being replaced) revokes the earlier ones."""
        check_tenant(tenant)
        with self._locked():
            records = self._read()
            if local:
                records = {k: r for k, r in records.items() if not r.local}
            while True:
                token_id = secrets.token_hex(4)
                if token_id not in records:
                    break
            token = f"af_{token_id}_{secrets.token_urlsafe(32)}"
            created = datetime.now(UTC).isoformat(timespec="seconds")
            records[token_id] = TokenRecord(token_id, tenant, created, _hash(token), local)
            self._write(records)
        return token

    def revoke(self, token_id: str) -> TokenRecord:
        with self._locked():
            records = self._read()
            record = records.pop(token_id, None)
            if record is None:
                raise InvalidConfigurationError(f"no token has the id {token_id!r}")
            self._write(records)
        return record

    def _refresh(self) -> None:
        try:
            info = self._path.stat()
        except FileNotFoundError:
            self._seen, self._by_id = None, {}
            return
        seen = (info.st_ino, info.st_size, info.st_mtime_ns)
        if seen != self._seen:
            self._by_id = self._read()
            self._seen = seen

    def _read(self) -> dict[str, TokenRecord]:
        try:
            data = json.loads(self._path.read_text())
            return {r["id"]: TokenRecord(**r) for r in data["tokens"]}
        except FileNotFoundError:
            return {}
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidConfigurationError(
                f"the token store {self._path} is damaged ({exc}); restore it or remove it "
                "(every token is then revoked)"
            ) from None

    def _write(self, records: dict[str, TokenRecord]) -> None:
        text = json.dumps({"tokens": [asdict(r) for r in records.values()]}, indent=1)
        temporary = self._path.with_name(f".tokens.{os.getpid()}.json")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self._path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
