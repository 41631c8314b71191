"""The audit log: one JSON line per API call (``audit_log`` = a path, or ``-`` for stdout).

Each line: ``time`` (UTC, ISO 8601), ``tenant`` (null when the call was not authenticated),
``action`` (the RPC's name), ``ids`` (the codebase, sandbox and session ids the request named,
and the id a create made), ``outcome`` (the gRPC status code's name), ``peer`` (``host:port``,
or ``unix`` with the caller's uid). What a call carries beyond ids (file contents, a command's
text or stdin, tokens) is never written; a command is logged by its length alone. The file is
opened for appending, and opened again when its path no longer names the open file (as
``logging``'s ``WatchedFileHandler`` does: one ``stat`` per line), so an operator rotates it by
moving it away, with no signal to send.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TextIO

from ..errors import InvalidConfigurationError

log = logging.getLogger("agentfense.server")

_MOST_ID = 128  # characters of one id written (ids are the client's to choose)


class AuditLog:
    """Appends audit lines to ``target`` (a path, or ``-``: standard output)."""

    def __init__(self, target: str) -> None:
        self._target = target
        self._file: TextIO | None = None
        self._opened: tuple[int, int] | None = None  # the open file's device and inode
        self._failing = False
        if target == "-":
            self._file = sys.stdout
        else:
            try:
                self._open()
            except OSError as exc:
                raise InvalidConfigurationError(
                    f"cannot open the audit log {target}: {exc.strerror or exc}"
                ) from None

    def _open(self) -> None:
        self.close()
        fd = os.open(self._target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8")
        info = os.fstat(fd)
        self._opened = (info.st_dev, info.st_ino)

    def _moved(self) -> bool:
        if self._opened is None:
            return self._target != "-"
        try:
            info = os.stat(self._target)
        except FileNotFoundError:
            return True
        return (info.st_dev, info.st_ino) != self._opened

    def record(
        self,
        *,
        tenant: str | None,
        action: str,
        ids: Mapping[str, str | int],
        outcome: str,
        peer: str,
    ) -> None:
        line = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "tenant": tenant,
            "action": action,
            "ids": {k: v[:_MOST_ID] if isinstance(v, str) else v for k, v in ids.items()},
            "outcome": outcome,
            "peer": peer,
        }
        self._write(line)

    def _write(self, line: Mapping[str, object]) -> None:
        try:
            if self._moved():
                self._open()
            if self._file is None:
                return
            self._file.write(json.dumps(line, separators=(",", ":")) + "\n")
            self._file.flush()
            self._failing = False
        except (OSError, ValueError) as exc:  # (a full disk must not fail the call itself)
            if not self._failing:
                log.warning("cannot write the audit log %s: %s", self._target, exc)
            self._failing = True

    def network_denial(
        self,
        *,
        tenant: str,
        sandbox_id: str,
        kind: str,
        target: str,
        reason: str,
        unreported: int,
    ) -> None:
        """A connection or lookup a sandbox's proxy refused (``action`` NetworkDenied;
        ``unreported``: the denials of the sandbox left out before it, past 20 a second)."""
        line = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "tenant": tenant,
            "action": "NetworkDenied",
            "ids": {"sandbox_id": sandbox_id[:_MOST_ID]},
            "kind": kind,
            "target": target[:300],
            "reason": reason[:300],
            "unreported": unreported,
        }
        self._write(line)

    def close(self) -> None:
        if self._file is not None and self._file is not sys.stdout:
            self._file.close()
        self._file, self._opened = None, None
