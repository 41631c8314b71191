"""Timeouts at the edges of the policy (``agentfense._timeouts``), found by a hostile client.

- A positive timeout below half a microsecond once travelled as a zero Duration, which the
  server reads as "none given": the command got the server's default (300 s) while the
  client's deadline was the timeout plus 30 s, so ``run("sleep 35; echo ok", timeout=1e-7)``
  was cut by the client at 29 s. It now travels as the least Duration (1 µs).
- A finite timeout too large for a ``timedelta`` escaped as a bare ``OverflowError``; past
  ``MOST`` seconds it is now the policy's ``InvalidConfigurationError``.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from agentfense import AsyncSandbox, CommandTimeoutError, InvalidConfigurationError
from agentfense import _timeouts as timeouts
from agentfense._proto.sandbox import v1 as pb

TINY = [1e-7, 4.9e-7, 1e-300, 5e-324]
HUGE = [1e15, 1e300, float(2**63), pytest.param(10**400, id="10**400")]


@pytest.mark.parametrize("timeout", TINY)
def test_a_tiny_timeout_reaches_the_server_as_a_timeout_not_as_its_default(
    timeout: float,
) -> None:
    duration, no_timeout = timeouts.to_wire(timeout)
    request = pb.ExecRequest(no_timeout=no_timeout)
    if duration is not None:
        request.timeout = duration
    parsed = pb.ExecRequest().parse(bytes(request))
    seen = timeouts.from_wire(parsed.timeout, parsed.no_timeout)
    # What the server applies must be what the client's deadline assumes: a positive
    # timeout of (about) what was asked, not the server's default.
    assert (seen or 0) > 0, (
        f"timeout={timeout!r} reaches the server as {seen!r} (its default), while the "
        f"client's deadline is {timeouts.client_deadline(timeout)!r} s"
    )


@pytest.mark.parametrize("timeout", HUGE)
def test_a_huge_timeout_is_refused_with_the_policys_error(timeout: float) -> None:
    with pytest.raises(InvalidConfigurationError):
        timeouts.to_wire(timeout)


@pytest.mark.anyio
async def test_run_with_a_tiny_timeout_times_out_at_once(endpoint: str, project: Path) -> None:
    async with await AsyncSandbox.from_local(project, endpoint=endpoint) as sandbox:
        started = time.monotonic()
        with anyio.fail_after(10), pytest.raises(CommandTimeoutError):
            await sandbox.run("sleep 35; echo ok", timeout=1e-7)
        assert time.monotonic() - started < 10


@pytest.mark.anyio
@pytest.mark.parametrize("timeout", [1e15, float(2**63)])
async def test_run_with_a_huge_timeout_raises_invalid_configuration(
    endpoint: str, project: Path, timeout: float
) -> None:
    async with await AsyncSandbox.from_local(project, endpoint=endpoint) as sandbox:
        with pytest.raises(InvalidConfigurationError):
            await sandbox.run("echo x", timeout=timeout)
