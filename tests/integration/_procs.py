"""The host's view of sandbox processes (the tests run beside the server, as root)."""

from __future__ import annotations

import os

import anyio


def host_processes(marker: str | bytes) -> dict[int, str]:
    """Host processes whose command line (NUL between arguments) contains ``marker``: pid ->
    the command line, readable."""
    needle = marker.encode() if isinstance(marker, str) else marker
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        if needle in cmdline:
            found[int(entry)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def host_pids_running(marker: str | bytes) -> list[int]:
    """Host pids whose command line (NUL between arguments) contains ``marker``."""
    return list(host_processes(marker))


async def until_running(marker: str) -> None:
    """Wait until a host process runs with ``marker`` on its command line (a background job
    is exec'd a moment after the shell that started it has returned)."""
    with anyio.fail_after(10):
        while True:
            if host_pids_running(marker):
                return
            await anyio.sleep(0.02)


async def until_gone(marker: str, within: float = 1.0) -> bool:
    """Whether every host process with ``marker`` on its command line is gone ``within``."""
    with anyio.move_on_after(within):
        while True:
            if not host_pids_running(marker):
                return True
            await anyio.sleep(0.02)
    return False
