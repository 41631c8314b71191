"""A command's timeout: one policy, for the SDK and the server alike.

- ``None``: the server's default (``default_timeout``, 300 s unless configured).
- ``0``: no timeout of the command's own; it may run up to the server's ``max_timeout``
  (24 h unless configured).
- A positive number of seconds: that long, at most ``max_timeout`` (more is refused).

Anything else (negative, NaN, infinite, more than ``MOST`` seconds, not a number) is refused
on both sides: ``InvalidConfigurationError`` in the SDK, INVALID_ARGUMENT from the server.

On the wire a positive timeout travels as the request's ``timeout`` Duration, at least
``LEAST`` (a shorter one would travel as a zero Duration, which means none given). ``0`` travels
as the AgentFense extension ``no_timeout``: a zero Duration cannot be told from an absent one.
A server without the extension ignores it and applies its default.

The client's gRPC deadline follows the server's timeout, never the other way round: for a
positive timeout it is that timeout plus ``DEADLINE_MARGIN``, so the caller sees the server's
verdict (DEADLINE_EXCEEDED, after the server killed the command) and its output; for ``None``
and ``0`` the client sets no deadline and the server's own limit decides.
"""

from __future__ import annotations

import math
from datetime import timedelta

from .errors import InvalidConfigurationError

DEADLINE_MARGIN = 30.0
LEAST = 1e-6  # a Duration's resolution here: timedelta's microsecond
MOST = 1e9  # about 31 years: more than any server allows, and within timedelta's range


def checked(timeout: float | None) -> float | None:
    """``timeout`` if the policy allows it, else InvalidConfigurationError."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise InvalidConfigurationError(
            f"timeout must be a number of seconds or None, not {type(timeout).__name__}"
        )
    try:
        seconds = float(timeout)
    except OverflowError:  # (an int beyond any float)
        seconds = math.inf
    if math.isnan(seconds) or not 0 <= seconds <= MOST:
        raise InvalidConfigurationError(
            f"timeout must be a number of seconds from 0 (no timeout) to {MOST:g}, or None "
            f"(the server's default), not {timeout!r:.40}"
        )
    return seconds


def to_wire(timeout: float | None) -> tuple[timedelta | None, bool]:
    """The request's ``timeout`` Duration (None: leave it unset) and ``no_timeout`` flag."""
    seconds = checked(timeout)
    if seconds is None:
        return None, False
    if seconds == 0:
        return None, True
    return timedelta(seconds=max(seconds, LEAST)), False


def from_wire(duration: timedelta | None, no_timeout: bool) -> float | None:
    """What the client asked for, in the policy's terms (None, 0 or seconds)."""
    if no_timeout:
        return 0.0
    if duration is None or not duration:
        return None
    return duration.total_seconds()


def client_deadline(timeout: float | None) -> float | None:
    """The gRPC deadline of a call running a command with this timeout."""
    seconds = checked(timeout)
    return None if not seconds else seconds + DEADLINE_MARGIN


def effective(timeout: float | None, default: float, maximum: float) -> float:
    """The seconds a server allows a command (its ``default_timeout`` and ``max_timeout``)."""
    seconds = checked(timeout)
    if seconds is None:
        return default
    if seconds == 0:
        return maximum
    if seconds > maximum:
        raise InvalidConfigurationError(
            f"timeout must be at most {maximum:g} seconds on this server"
        )
    return seconds
