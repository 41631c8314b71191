"""The public surface: what ``agentfense`` exports, which classes are final, and which
handles only the SDK may build (as trio does)."""

from __future__ import annotations

import dataclasses
import enum
import inspect
import subprocess
import sys
import textwrap

import pytest

import agentfense
from agentfense import errors, types

HANDLES: list[type] = [
    agentfense.AsyncSandbox,
    agentfense.AsyncSessionWrapper,
    agentfense.ExecStream,
    agentfense.Sandbox,
    agentfense.SessionWrapper,
]
CLIENTS: list[type] = [agentfense.AsyncSandboxClient, agentfense.SandboxClient]


def test_all_names_what_the_package_offers() -> None:
    assert agentfense.__all__ == sorted(set(agentfense.__all__))
    for name in agentfense.__all__:
        assert getattr(agentfense, name) is not None, name
    public = {
        name
        for name, value in vars(agentfense).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert public == set(agentfense.__all__)


def test_every_error_and_public_type_is_exported() -> None:
    for module in (errors, types):
        for name, value in vars(module).items():
            ours = inspect.isclass(value) and value.__module__ == module.__name__
            if ours and not name.startswith("_") and name != "StatusCode":
                assert name in agentfense.__all__, f"{module.__name__}.{name}"


@pytest.mark.parametrize("cls", HANDLES + CLIENTS, ids=lambda cls: cls.__qualname__)
def test_handles_and_clients_are_final(cls: type) -> None:
    assert getattr(cls, "__final__", False), f"{cls.__qualname__} is not @final"


def test_value_types_are_frozen_and_final() -> None:
    for name in agentfense.__all__:
        value = getattr(agentfense, name)
        if dataclasses.is_dataclass(value) and isinstance(value, type):
            assert value.__dataclass_params__.frozen, name  # type: ignore[attr-defined]
            assert getattr(value, "__final__", False), f"{name} is not @final"


@pytest.mark.parametrize("cls", HANDLES, ids=lambda cls: cls.__qualname__)
def test_handles_have_no_public_constructor(cls: type) -> None:
    with pytest.raises(TypeError, match="has no public constructor; use "):
        cls()


def test_the_type_checker_refuses_a_subclass_of_a_final_class() -> None:
    source = textwrap.dedent(
        """
        from agentfense import AsyncSandbox

        class Mine(AsyncSandbox):
            pass
        """
    )
    found = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "-c", source],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "Cannot inherit from final class" in found.stdout, found.stdout


def test_enums_are_str_enums() -> None:
    for name in agentfense.__all__:
        value = getattr(agentfense, name)
        if isinstance(value, type) and issubclass(value, enum.Enum):
            assert issubclass(value, str), name
