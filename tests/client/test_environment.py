"""Every SDK entry point takes its endpoint from the argument, else ``AGENTFENSE_ENDPOINT``,
else ``localhost:9000`` (no server needed: the endpoint is settled when the client is made)."""

from __future__ import annotations

import inspect

import pytest

from agentfense import (
    AsyncSandbox,
    AsyncSandboxClient,
    InvalidConfigurationError,
    Sandbox,
    SandboxClient,
)


@pytest.fixture(autouse=True)
def no_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTFENSE_ENDPOINT", raising=False)


def test_without_the_variable_the_default_is_localhost_9000() -> None:
    assert AsyncSandboxClient().endpoint == "localhost:9000"
    assert SandboxClient().endpoint == "localhost:9000"


def test_the_variable_is_used_when_no_endpoint_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTFENSE_ENDPOINT", "unix:/run/agentfense.sock")
    assert AsyncSandboxClient().endpoint == "unix:/run/agentfense.sock"
    assert AsyncSandboxClient(None).endpoint == "unix:/run/agentfense.sock"
    assert SandboxClient().endpoint == "unix:/run/agentfense.sock"


def test_an_explicit_endpoint_wins_over_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTFENSE_ENDPOINT", "unix:/run/agentfense.sock")
    assert AsyncSandboxClient("127.0.0.1:7000").endpoint == "127.0.0.1:7000"
    assert SandboxClient(endpoint="localhost:9000").endpoint == "localhost:9000"


def test_an_empty_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTFENSE_ENDPOINT", "")
    assert AsyncSandboxClient().endpoint == "localhost:9000"


def test_a_malformed_variable_is_refused_in_a_sentence_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENTFENSE_ENDPOINT", "http://localhost:9000")
    with pytest.raises(InvalidConfigurationError, match=r"AGENTFENSE_ENDPOINT.*URL scheme"):
        AsyncSandboxClient()
    with pytest.raises(InvalidConfigurationError, match="AGENTFENSE_ENDPOINT"):
        SandboxClient()


@pytest.mark.parametrize(
    "entry",
    [
        AsyncSandboxClient.__init__,
        AsyncSandbox.from_local,
        AsyncSandbox.from_codebase,
        AsyncSandbox.connect,
        SandboxClient.__init__,
        Sandbox.from_local,
        Sandbox.from_codebase,
        Sandbox.connect,
    ],
    ids=lambda entry: entry.__qualname__,
)
def test_every_entry_point_leaves_the_endpoint_to_the_environment(entry: object) -> None:
    """A default written into a signature would shadow the variable for that entry point."""
    assert inspect.signature(entry).parameters["endpoint"].default is None  # type: ignore[arg-type]
