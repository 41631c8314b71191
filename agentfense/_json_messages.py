"""Strict JSON objects for the process seams (the fs control channel, a sandbox's agent).

A message on those channels is one JSON object. :func:`parse` reads one, bounded in size;
:class:`Fields` takes its fields out one by one, each of the type it must be (a bool is no
int, a float no int); anything wrong, missing or left over is a :class:`MessageError` with a
sentence saying what. Nothing here does I/O.
"""

from __future__ import annotations

import json

MAX_INT = (1 << 63) - 1  # what a sequence number, a size or a count may reach


class MessageError(ValueError):
    """A message that is not one of its channel's (the sentence says what is wrong); ``seq``
    is the request it answers or asks, when that much could be read."""

    def __init__(self, message: str, *, seq: int | None = None) -> None:
        super().__init__(message)
        self.seq = seq


def parse(data: bytes, *, most: int) -> dict[str, object]:
    """The JSON object in ``data``, which may take at most ``most`` bytes."""
    if len(data) > most:
        raise MessageError(f"a message of {len(data)} bytes; at most {most} are taken")
    try:
        raw = json.loads(data)
    except RecursionError:
        raise MessageError("a message nested too deeply") from None
    except ValueError as exc:  # (UnicodeDecodeError and too many digits are ValueErrors too)
        raise MessageError(f"a message that is not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise MessageError(f"a message that is a JSON {type(raw).__name__}, not an object")
    return raw


def dump(fields: dict[str, object]) -> bytes:
    return json.dumps(fields, separators=(",", ":")).encode()


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Fields:
    """The fields of one message (``what`` names it in errors), taken out one by one."""

    def __init__(self, raw: dict[str, object], what: str, *, seq: int | None = None) -> None:
        self._raw = dict(raw)
        self._what = what
        self.seq = seq

    def error(self, problem: str) -> MessageError:
        return MessageError(f"{self._what}: {problem}", seq=self.seq)

    def has(self, name: str) -> bool:
        return name in self._raw

    def _take(self, name: str) -> object:
        if name not in self._raw:
            raise self.error(f"the field {name!r} is missing")
        return self._raw.pop(name)

    def integer(self, name: str, *, least: int = 0, most: int = MAX_INT) -> int:
        value = self._take(name)
        if type(value) is not int or not least <= value <= most:
            raise self.error(
                f"{name} must be an integer from {least} to {most}, not {_describe(value)}"
            )
        return value

    def optional_integer(self, name: str, *, least: int = 0, most: int = MAX_INT) -> int | None:
        if self._raw.get(name, 0) is None:
            del self._raw[name]
            return None
        return self.integer(name, least=least, most=most)

    def boolean(self, name: str) -> bool:
        value = self._take(name)
        if type(value) is not bool:
            raise self.error(f"{name} must be true or false, not {_describe(value)}")
        return value

    def string(self, name: str) -> str:
        value = self._take(name)
        if type(value) is not str:
            raise self.error(f"{name} must be a string, not {_describe(value)}")
        return value

    def path(self, name: str) -> str:
        """A string the kernel can take as a name or a path: not empty, no NUL."""
        value = self.string(name)
        if not value or "\x00" in value:
            raise self.error(f"{name} must be a path: not empty, no NUL, not {_describe(value)}")
        return value

    def strings(self, name: str) -> tuple[str, ...]:
        value = self._take(name)
        if type(value) is not list or any(type(item) is not str for item in value):
            raise self.error(f"{name} must be a list of strings, not {_describe(value)}")
        return tuple(value)

    def string_map(self, name: str) -> dict[str, str]:
        value = self._take(name)
        if type(value) is not dict or any(type(item) is not str for item in value.values()):
            raise self.error(
                f"{name} must be an object of strings to strings, not {_describe(value)}"
            )
        return dict(value)

    def nested(self, name: str) -> Fields:
        value = self._take(name)
        if type(value) is not dict:
            raise self.error(f"{name} must be an object, not {_describe(value)}")
        return Fields(value, f"{self._what}.{name}", seq=self.seq)

    def nested_list(self, name: str) -> list[Fields]:
        value = self._take(name)
        if type(value) is not list or any(type(item) is not dict for item in value):
            raise self.error(f"{name} must be a list of objects, not {_describe(value)}")
        return [
            Fields(item, f"{self._what}.{name}[{i}]", seq=self.seq) for i, item in enumerate(value)
        ]

    def done(self) -> None:
        """Every field was taken: any other is an error."""
        if self._raw:
            raise self.error(f"unknown fields {sorted(self._raw)}")
