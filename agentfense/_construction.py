"""Handles the SDK gives out, never built by callers (trio's ``NoPublicConstructor``).

A sandbox, a session or a stream stands for something on a server that the SDK made and
owns; building one by hand would give an object that owns nothing and cleans nothing up.
Calling such a class raises ``TypeError`` naming the way to get one; the SDK builds them with
``cls._create(...)``.
"""

from __future__ import annotations

from typing import Any, TypeVar

T = TypeVar("T")


class NoPublicConstructor(type):
    """Metaclass of the handles: ``Handle(...)`` is a ``TypeError``, ``Handle._create(...)``
    builds one. The class names the way to get one in ``_obtained_from``."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        how = getattr(cls, "_obtained_from", "the SDK's functions")
        raise TypeError(f"{cls.__module__}.{cls.__qualname__} has no public constructor; {how}")

    def _create(cls: type[T], *args: Any, **kwargs: Any) -> T:
        made: T = super().__call__(*args, **kwargs)  # type: ignore[misc]  # (type.__call__)
        return made
