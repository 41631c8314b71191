"""Lifecycle log lines: one line each, whatever a client put in the values, fields intact."""

from __future__ import annotations

import json
import logging
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentfense.server._grpc.quiet_logs import quiet_per_call_logs
from agentfense.server.log_lines import line

_FIELD = re.compile(r' ([a-z_]+)=("(?:[^"\\]|\\.)*"|\S+)')


@given(owner=st.text(), name=st.text())
def test_any_client_value_stays_in_its_field_on_one_line(owner: str, name: str) -> None:
    shown = line("codebase created", codebase_id="cb_1", owner=owner, name=name)
    assert "\n" not in shown
    assert "\r" not in shown
    assert shown.startswith("codebase created codebase_id=cb_1 owner=")
    fields = dict(_FIELD.findall(shown))
    assert list(fields) == ["codebase_id", "owner", "name"]
    for key, given_value in (("owner", owner), ("name", name)):
        raw = fields[key]
        value = json.loads(raw) if raw.startswith('"') else raw
        assert value == given_value[:200]


def test_plain_values_are_bare_and_absent_ones_left_out() -> None:
    shown = line("sandbox started", sandbox_id="sb_1", image=None, seconds=0.25, ok=True)
    assert shown == "sandbox started sandbox_id=sb_1 seconds=0.250 ok=True"


@pytest.mark.parametrize(
    ("level", "kept"), [(logging.INFO, []), (logging.DEBUG, ["DEBUG Request was cancelled: x"])]
)
def test_grpclib_per_call_lines_are_debug(level: int, kept: list[str]) -> None:
    quiet_per_call_logs()
    quiet_per_call_logs()  # (once per process, however often a server starts)
    logger = logging.getLogger("grpclib.server")
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(f"{record.levelname} {record.getMessage()}")

    handler = Keep()
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(level)
    try:
        logger.info("Request was cancelled: %s", "x")
        logger.error("Application error")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    assert seen == [*kept, "ERROR Application error"]
    assert len(logger.filters) == 1
