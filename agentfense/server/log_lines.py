"""One structured log line per event: ``<event> key=value key=value``.

Values a client chose (an owner, a codebase's name) are quoted and escaped, so no client can
end a line or forge a key; each value is cut to 200 characters.
"""

from __future__ import annotations

import json
import logging
import re

# (fullmatch: "$" would also match before a trailing newline, which would end the line)
_PLAIN = re.compile(r"[A-Za-z0-9_.:/@+-]{1,200}")
_MOST = 200

Value = str | int | float | bool | None


def _shown(value: str | int | float | bool) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    text = str(value)
    if _PLAIN.fullmatch(text):
        return text
    return json.dumps(text[:_MOST])  # (quoted, with every control character escaped)


def line(event: str, **fields: Value) -> str:
    """``event`` followed by ``key=value`` for each field given (None: left out), in order."""
    shown = (f"{key}={_shown(value)}" for key, value in fields.items() if value is not None)
    return " ".join([event, *shown])


def log_event(logger: logging.Logger, level: int, event: str, **fields: Value) -> None:
    """Log one event line at ``level`` (built only when the level is enabled)."""
    if logger.isEnabledFor(level):
        logger.log(level, "%s", line(event, **fields))
