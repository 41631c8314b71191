"""The sync API mirrors the async one: the same methods, with the same parameters."""

from __future__ import annotations

import inspect

import pytest

import agentfense
from agentfense.client._events import EventStream as AsyncEventStream
from agentfense.sync._events import EventStream as SyncEventStream
from agentfense.sync._stream import ExecStream as SyncExecStream

PAIRS = [
    (agentfense.AsyncSandbox, agentfense.Sandbox),
    (agentfense.AsyncSandboxClient, agentfense.SandboxClient),
    (agentfense.AsyncSessionWrapper, agentfense.SessionWrapper),
    (agentfense.ExecStream, SyncExecStream),
    (AsyncEventStream, SyncEventStream),
]
# Where the two worlds differ by nature: async context and iteration protocols, and the
# blocking side's own.
PROTOCOL = {
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "__aiter__": "__iter__",
    "__anext__": "__next__",
    "aclose": "close",
}


def _public(cls: type) -> dict[str, object]:
    """Its public members, its bases' included (the client's review calls are a base's)."""
    found: dict[str, object] = {}
    for klass in reversed(cls.__mro__[:-1]):  # (not object's)
        found.update(
            (name, value)
            for name, value in vars(klass).items()
            if not name.startswith("_") or name in PROTOCOL
        )
    return found


@pytest.mark.parametrize(("async_cls", "sync_cls"), PAIRS, ids=lambda cls: cls.__qualname__)
def test_every_async_method_has_its_blocking_twin(async_cls: type, sync_cls: type) -> None:
    missing, compared = [], []
    for name, member in _public(async_cls).items():
        twin_name = PROTOCOL.get(name, name)
        twin = inspect.getattr_static(sync_cls, twin_name, None)
        if twin is None:
            missing.append(name)
            continue
        if isinstance(member, classmethod | staticmethod):
            member, twin = member.__func__, getattr(twin, "__func__", twin)
        if inspect.isfunction(member) and name not in PROTOCOL:
            compared.append(name)
            ours = inspect.signature(member)
            theirs = inspect.signature(twin)
            assert list(theirs.parameters) == list(ours.parameters), f"{sync_cls.__name__}.{name}"
            for param in ours.parameters.values():
                other = theirs.parameters[param.name]
                assert (other.kind, other.default) == (param.kind, param.default), (
                    f"{sync_cls.__name__}.{name}({param.name})"
                )
    assert missing == [], f"{sync_cls.__name__} lacks {missing}"
    assert compared or set(_public(async_cls)) <= set(PROTOCOL), "no method compared"
