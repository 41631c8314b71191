"""The transport tests' server (``_grpc_test_server``) in a process of its own, for tests whose
clients close their connections from the SDK's loop thread or from other processes (which
exit or fork mid-call): the server's end of a connection is then never the test process's to
close, or to warn about, whenever the client's close reaches it.

Run as a script, it prints its endpoint, serves until its stdin is closed, then prints
whether a call was cancelled on it (if stdin said ``wait``, waiting up to 5 s for one).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _grpc_test_server import ServerThread

HERE = Path(__file__).parent


def environment() -> dict[str, str]:
    """The environment of a child process that imports agentfense and these helpers."""
    paths = [str(HERE), str(HERE.parent.parent), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in paths if path)}


class ServerProcess:
    """This script, running; :meth:`finish` stops it and says what it saw."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, str(HERE / "_server_process.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=environment(),
        )
        assert self._process.stdout is not None
        self.endpoint = self._process.stdout.readline().strip()
        assert self.endpoint.startswith("unix:"), self.endpoint
        self._said: str | None = None

    def finish(self, *, wait_for_a_cancellation: bool = False) -> str:
        """``"a call was cancelled"`` or ``"no call was cancelled"``."""
        if self._said is None:
            asked = "wait" if wait_for_a_cancellation else ""
            self._said = self._process.communicate(asked, timeout=30)[0].strip()
        return self._said


def main() -> None:
    directory = tempfile.mkdtemp(prefix="af-srv-")  # short: a socket path has a limit
    path = os.path.join(directory, "s.sock")
    server = ServerThread("unix", path)
    server.start()
    print(server.endpoint, flush=True)
    wait = sys.stdin.read().strip() == "wait"
    cancelled = server.observed.cancelled.wait(5 if wait else 0)
    print("a call was cancelled" if cancelled else "no call was cancelled", flush=True)
    server.stop()
    os.unlink(path)
    os.rmdir(directory)


if __name__ == "__main__":
    main()
