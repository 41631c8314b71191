"""What the Docker runtime reads from the Engine API's answers, typed.

docker-py hands back the engine's JSON as dicts; the runtime reads a few fields of a few of
them. Each is decoded here once, checked (a field of the wrong type is the engine's error,
said in a sentence, never a ``KeyError`` or a wrong exit code), into a frozen dataclass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .base import RuntimeError_


def _field(found: Mapping[str, Any], name: str, kind: type, what: str) -> Any:
    value = found.get(name)
    if value is not None and (
        not isinstance(value, kind) or isinstance(value, bool) != (kind is bool)
    ):
        raise RuntimeError_(f"the Docker engine answered {what} with a {name} of {value!r}")
    return value


def created_id(created: Any) -> str:
    """The id in an ``exec_create`` or ``create_container`` answer."""
    ident = _field(created, "Id", str, "a create") if isinstance(created, Mapping) else None
    if not ident:
        raise RuntimeError_(f"the Docker engine answered a create without an id: {created!r:.100}")
    return str(ident)


@dataclass(frozen=True, slots=True)
class ProcessState:
    """An exec's or a container's process (``exec_inspect``, or a container's ``State``)."""

    running: bool
    pid: int  # on the host; 0 before it started or once it ended
    exit_code: int | None  # None while it runs, or when the engine knows none
    error: str = ""

    @classmethod
    def decode(cls, found: Any, what: str = "an inspect") -> ProcessState:
        if not isinstance(found, Mapping):
            raise RuntimeError_(f"the Docker engine answered {what} with {found!r:.200}")
        return cls(
            running=bool(_field(found, "Running", bool, what)),
            pid=int(_field(found, "Pid", int, what) or 0),
            exit_code=_field(found, "ExitCode", int, what),
            error=str(_field(found, "Error", str, what) or ""),
        )
