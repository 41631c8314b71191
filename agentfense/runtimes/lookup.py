"""The one place a sandbox's runtime is found by its type.

Each runtime is made on first use: the Docker one, and the ``docker`` library with it, is
imported only when a Docker sandbox (or the server's start, to remove what a killed
predecessor left) needs it, so a server without Docker needs neither.
"""

from __future__ import annotations

from pathlib import Path

from ..types import RuntimeType
from .base import Runtime


class Runtimes:
    def __init__(self, state_dir: Path, *, docker_host: str, server_label: str) -> None:
        self._state_dir = state_dir
        self._docker_host = docker_host
        self._server_label = server_label
        self._made: dict[RuntimeType, Runtime] = {}

    def __getitem__(self, kind: RuntimeType) -> Runtime:
        runtime = self._made.get(kind)
        if runtime is None:
            runtime = self._made[kind] = self._make(kind)
        return runtime

    def close(self) -> None:
        """Close every runtime made (the server stops)."""
        for runtime in self._made.values():
            runtime.close()

    def _make(self, kind: RuntimeType) -> Runtime:
        if kind is RuntimeType.DOCKER:
            from .docker import DockerRuntime

            return DockerRuntime(
                docker_host=self._docker_host,
                server_label=self._server_label,
                state_dir=self._state_dir,
            )
        from .bwrap import BwrapRuntime

        return BwrapRuntime(self._state_dir)
