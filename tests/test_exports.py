"""The public surface: what ``agentfense`` exports, which classes are final, and which
handles only the SDK may build (as trio does); the package imports each name on first use."""

from __future__ import annotations

import ast
import dataclasses
import enum
import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

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


def test_the_type_checker_refuses_a_subclass_of_a_final_class_and_a_misspelt_name() -> None:
    """The lazy package (its ``__getattr__`` hidden from the type checker) is typed as the
    imports it names: a misspelt name is an error, not an ``object``."""
    source = textwrap.dedent(
        """
        from agentfense import AsyncSandbox, AsyncSandbx

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
    assert 'Module "agentfense" has no attribute "AsyncSandbx"' in found.stdout, found.stdout


def _type_checked_imports() -> dict[str, str]:
    """What ``agentfense/__init__.py`` imports for the type checker: name -> module."""
    tree = ast.parse(Path(agentfense.__file__).read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If))
    assert ast.unparse(block.test) == "_typing.TYPE_CHECKING"
    found: dict[str, str] = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom)
        assert node.module is not None
        for alias in node.names:
            assert alias.asname == alias.name, "an import that is not a re-export"
            found[alias.name] = node.module
    return found


def test_each_name_is_imported_from_the_module_the_type_checker_sees() -> None:
    assert _type_checked_imports() == agentfense._HOMES
    assert sorted(agentfense._HOMES) == agentfense.__all__
    for name, home in agentfense._HOMES.items():
        assert getattr(agentfense, name) is getattr(sys.modules[home], name), name


def test_importing_the_package_imports_none_of_its_modules_until_a_name_is_used() -> None:
    """Importing any part of the package (the pytest plugin, in every pytest session) runs
    ``agentfense/__init__.py``: it loads nothing, and each name comes on first use, by
    attribute, ``from agentfense import`` or ``*``."""
    code = textwrap.dedent(
        """
        import sys
        import agentfense
        print(sorted(m for m in sys.modules if m.startswith("agentfense.")))
        from agentfense import TLSConfig
        sdk = ("agentfense.client", "agentfense.sync", "agentfense._transport")
        print("agentfense.types" in sys.modules, any(m.startswith(sdk) for m in sys.modules))
        from agentfense import *
        print(Sandbox.__module__, agentfense.SandboxError.__module__, "Sandbox" in dir(agentfense))
        try:
            agentfense.Sandbx
        except AttributeError as exc:
            print(exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.splitlines() == [
        "[]",
        "True False",
        "agentfense.sync.sandbox agentfense.errors True",
        "module 'agentfense' has no attribute 'Sandbx'",
    ]


def test_enums_are_str_enums() -> None:
    for name in agentfense.__all__:
        value = getattr(agentfense, name)
        if isinstance(value, type) and issubclass(value, enum.Enum):
            assert issubclass(value, str), name
