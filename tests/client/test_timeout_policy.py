"""The timeout policy's pure parts: what travels, what the server allows, the deadline."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentfense import InvalidConfigurationError
from agentfense import _timeouts as timeouts
from agentfense._proto.sandbox import v1 as pb

DEFAULT, MAXIMUM = 300.0, 86_400.0


@given(st.none() | st.just(0.0) | st.floats(min_value=0.001, max_value=1e6))
def test_what_the_client_asks_is_what_the_server_reads(timeout: float | None) -> None:
    duration, no_timeout = timeouts.to_wire(timeout)
    request = pb.ExecRequest(no_timeout=no_timeout)
    if duration is not None:
        request.timeout = duration
    parsed = pb.ExecRequest().parse(bytes(request))
    seen = timeouts.from_wire(parsed.timeout, parsed.no_timeout)
    if timeout is None or timeout == 0:
        assert seen == timeout
    else:
        assert seen == pytest.approx(timeout, abs=1e-6)


def test_the_server_applies_its_default_and_maximum() -> None:
    assert timeouts.effective(None, DEFAULT, MAXIMUM) == DEFAULT
    assert timeouts.effective(0, DEFAULT, MAXIMUM) == MAXIMUM
    assert timeouts.effective(12.5, DEFAULT, MAXIMUM) == 12.5
    with pytest.raises(InvalidConfigurationError, match="at most 86400 seconds"):
        timeouts.effective(MAXIMUM + 1, DEFAULT, MAXIMUM)


def test_the_client_deadline_follows_the_server() -> None:
    assert timeouts.client_deadline(None) is None
    assert timeouts.client_deadline(0) is None  # no longer 30 s: the server's limit decides
    assert timeouts.client_deadline(10) == 10 + timeouts.DEADLINE_MARGIN


@pytest.mark.parametrize("bad", [-1, -0.5, float("nan"), float("inf"), True, "5", timedelta(1)])
def test_bad_values_are_refused_with_a_sentence(bad: object) -> None:
    with pytest.raises(InvalidConfigurationError, match="timeout must be"):
        timeouts.checked(bad)  # type: ignore[arg-type]
