"""A real ``agentfense serve`` in a child process, on a private unix socket."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ServerProcess:
    """A running server: ``endpoint`` to connect to, ``state_dir`` where it keeps state."""

    process: subprocess.Popen[bytes]
    endpoint: str
    socket_path: Path
    state_dir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (a graceful shutdown), then wait; SIGKILL if it does not end in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def _accepting(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def start_server_process(
    directory: Path | None = None, *, settings: dict[str, str] | None = None, wait: float = 30
) -> ServerProcess:
    """Start ``python -m agentfense serve`` and wait until it accepts connections."""
    root = Path(directory or tempfile.mkdtemp(prefix="agentfense-test-"))
    sock = root / "server.sock"
    state = root / "state"
    log_path = root / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFENSE_")}
    env.update({f"AGENTFENSE_{k.upper()}": v for k, v in (settings or {}).items()})
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agentfense",
                "serve",
                "--listen",
                f"unix:{sock}",
                "--state-dir",
                str(state),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    server = ServerProcess(process, f"unix:{sock}", sock, state, log_path)
    deadline = time.monotonic() + wait
    while not (sock.exists() and _accepting(sock)):
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"the AgentFense server did not start:\n{server.log()}")
        time.sleep(0.02)
    return server
