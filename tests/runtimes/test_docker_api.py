"""The Engine API's answers, decoded once and checked."""

from __future__ import annotations

import pytest

from agentfense.runtimes._docker_api import ProcessState, created_id
from agentfense.runtimes.base import RuntimeError_


def test_an_exec_inspect_decodes() -> None:
    running = ProcessState.decode({"Running": True, "Pid": 4242, "ExitCode": None, "ID": "x"})
    assert running == ProcessState(running=True, pid=4242, exit_code=None)
    ended = ProcessState.decode({"Running": False, "Pid": 0, "ExitCode": 7})
    assert ended == ProcessState(running=False, pid=0, exit_code=7)
    assert ProcessState.decode({}) == ProcessState(running=False, pid=0, exit_code=None)


@pytest.mark.parametrize(
    "found",
    [
        {"Running": "yes"},
        {"Pid": True},
        {"Pid": "12"},
        {"ExitCode": 1.5},
        {"ExitCode": False},
        {"Error": 3},
        ["Running"],
        None,
    ],
)
def test_a_malformed_answer_is_a_sentence(found: object) -> None:
    with pytest.raises(RuntimeError_, match="the Docker engine answered an inspect with"):
        ProcessState.decode(found)


def test_a_create_answer_gives_its_id() -> None:
    assert created_id({"Id": "abc123", "Warnings": []}) == "abc123"
    for bad in ({}, {"Id": ""}, {"Id": 5}, None, "abc"):
        with pytest.raises(RuntimeError_, match="the Docker engine answered a create"):
            created_id(bad)
