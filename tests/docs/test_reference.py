"""The API reference covers every public name, and each one says what it is.

The reference (``docs/reference/*.md``) is made of ``::: dotted.path`` directives that
mkdocstrings renders from docstrings (``nox -s docs`` builds it, warnings as errors). A public
name missing from it, or a public class, function, method or property without a docstring of
its own, renders as a bare signature: these tests name each one.
"""

from __future__ import annotations

import importlib
import inspect
import re
import types
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "reference"
DIRECTIVE = re.compile(r"^::: ([\w.]+)$", re.MULTILINE)
PUBLIC_MODULES = (
    "agentfense",
    "agentfense.sync",
    "agentfense.fanout",
    "agentfense.errors",
    "agentfense.presets",
    "agentfense.testing",
    "agentfense.types",
    "agentfense.utils",
)


def _public(module: types.ModuleType) -> dict[str, object]:
    """A module's public names: its ``__all__``, else the classes it defines."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [
            name
            for name, value in vars(module).items()
            if not name.startswith("_")
            and inspect.isclass(value)
            and value.__module__ == module.__name__
        ]
    return {f"{module.__name__}.{name}": getattr(module, name) for name in names}


def _resolve(path: str) -> object:
    module, _, name = path.rpartition(".")
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError:
        return getattr(importlib.import_module(module), name)


def _rendered() -> list[object]:
    """What the reference pages render: each directive's object, and a module's members."""
    found: list[object] = []
    for page in sorted(REFERENCE.glob("*.md")):
        for path in DIRECTIVE.findall(page.read_text()):
            target = _resolve(path)
            found.append(target)
            if isinstance(target, types.ModuleType):
                found += _public(target).values()
    return found


def _members(cls: type) -> Iterator[tuple[str, object]]:
    """A class's own public methods and properties (the ones its page lists)."""
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, property):
            yield name, value.fget
        elif isinstance(value, classmethod | staticmethod):
            yield name, value.__func__
        elif inspect.isfunction(value):
            yield name, value


def _documented(value: object) -> bool:
    """Whether ``value`` has a docstring of its own (a dataclass's generated one, its
    signature, does not count)."""
    doc = getattr(value, "__doc__", None)
    if inspect.isclass(value) and doc is not None and doc.startswith(f"{value.__name__}("):
        return False
    return bool(doc and doc.strip())


def test_every_public_name_is_in_the_reference() -> None:
    rendered = _rendered()
    missing = [
        name
        for module in PUBLIC_MODULES
        for name, value in _public(importlib.import_module(module)).items()
        if not any(value is shown for shown in rendered)
    ]
    assert not missing, f"not in docs/reference: {missing}"


def test_every_public_class_function_and_member_has_a_docstring() -> None:
    seen: set[int] = set()
    missing: list[str] = []
    for module in PUBLIC_MODULES:
        for name, value in _public(importlib.import_module(module)).items():
            if id(value) in seen or not (inspect.isclass(value) or inspect.isfunction(value)):
                continue
            seen.add(id(value))
            if not _documented(value):
                missing.append(name)
            if inspect.isclass(value) and value.__module__.startswith("agentfense"):
                missing += [
                    f"{name}.{member}"
                    for member, function in _members(value)
                    if not _documented(function)
                ]
    assert not missing, f"{len(missing)} without a docstring: {missing}"


def test_the_reference_names_only_what_exists() -> None:
    """A directive for a name that was renamed or removed fails here, not only in the build."""
    unknown = []
    for page in sorted(REFERENCE.glob("*.md")):
        for path in DIRECTIVE.findall(page.read_text()):
            try:
                _resolve(path)
            except (AttributeError, ImportError):
                unknown.append(f"{page.name}: {path}")
    assert not unknown, f"the reference names what does not exist: {unknown}"


ROLE = re.compile(r":(class|func|data|mod|meth|attr|exc):`")


def test_no_docstring_the_reference_shows_uses_sphinx_roles() -> None:
    """mkdocs renders Markdown: ``:func:`x``` comes out as the literal text ":func:"."""
    shown: list[tuple[str, object]] = []
    for module in PUBLIC_MODULES:
        imported = importlib.import_module(module)
        shown.append((module, imported))
        for name, value in _public(imported).items():
            shown.append((name, value))
            if inspect.isclass(value):
                shown += [(f"{name}.{member}", f) for member, f in _members(value)]
    marked = sorted({name for name, value in shown if ROLE.search(value.__doc__ or "")})
    assert not marked, f"Sphinx roles in docstrings the reference renders: {marked}"
