"""A real ``agentfense serve`` in a child process, on a private unix socket."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from .._local_token import token_path


@dataclass
class ServerProcess:
    """A running server: ``endpoint`` to connect to, ``state_dir`` where it keeps state.

    A context manager: ``with start_server_process() as server:`` stops it on the way out,
    and raises ``RuntimeError`` (with the server's log) if it did not exit cleanly, unless
    the block is already raising.
    """

    process: subprocess.Popen[bytes]
    endpoint: str
    socket_path: Path
    state_dir: Path
    log_path: Path
    owns_state: bool = False  # made for this server: removed when it stops cleanly

    def log(self) -> str:
        """What the server wrote to its log so far."""
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
        if self.process.returncode == 0 and self.owns_state:
            self._remove_state()
        if self.endpoint.startswith("unix:"):  # (a server that was killed leaves its token)
            token_path(self.endpoint).unlink(missing_ok=True)
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        code = self.stop()
        if code != 0 and exc is None:
            raise RuntimeError(f"the AgentFense server exited with code {code}:\n{self.log()}")

    def _remove_state(self) -> None:
        with open("/proc/self/mounts") as mounts:
            if any(f" {self.state_dir}/" in line for line in mounts):
                return  # something is still mounted below: leave it for a look
        # (imported here: the pytest plugin imports this module in every session)
        from ..fs._host import remove_tree

        remove_tree(self.state_dir)


def _claim_state_dir(state: Path) -> None:
    """Make ``state`` ours, or check that it is: its name in the shared temporary directory
    can be computed by anyone, and a directory (or a link) another user made there first
    would hold the server's codebases, and let that user read and plant files."""
    with contextlib.suppress(FileExistsError):
        state.mkdir(mode=0o711)
    found = os.lstat(state)
    if (
        not stat.S_ISDIR(found.st_mode)
        or found.st_uid != os.geteuid()
        or found.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    ):
        raise RuntimeError(
            f"the server's state directory {state} exists and is not this user's own "
            "(a link, another user's, or writable by others): remove it, or start the "
            "server on another directory"
        )


def _accepting(listen: str) -> bool:
    if listen.startswith("unix:"):
        family, address = socket.AF_UNIX, listen[len("unix:") :]
    else:
        host, _, port = listen.rpartition(":")
        family, address = socket.AF_INET, (host, int(port))  # type: ignore[assignment]
    with socket.socket(family) as probe:
        try:
            probe.connect(address)
        except OSError:
            return False
    return True


def start_server_process(
    directory: Path | None = None,
    *,
    listen: str | None = None,
    settings: dict[str, str] | None = None,
    wait: float = 30,
) -> ServerProcess:
    """Start ``python -m agentfense serve`` and wait until it accepts connections.

    It listens on a unix socket in ``directory`` unless ``listen`` says otherwise (a TCP
    ``host:port`` must be an IPv4 address here).
    """
    root = Path(directory or tempfile.mkdtemp(prefix="agentfense-test-"))
    root.mkdir(parents=True, exist_ok=True)
    sock = root / "server.sock"
    listen = listen or f"unix:{sock}"
    # The sandboxes' uid must reach the state directory, and pytest's tmp_path is private:
    # the state lives in the system's temporary directory, one per ``directory`` (so a server
    # started again on the same directory finds the same state).
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    state = Path(tempfile.gettempdir()) / f"agentfense-state-{digest}"
    log_path = root / "server.log"
    _claim_state_dir(state)
    if _accepting(listen):  # (else the wait below would take that server for this one)
        raise RuntimeError(f"another server already accepts connections at {listen}")
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
                listen,
                "--state-dir",
                str(state),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    server = ServerProcess(process, listen, sock, state, log_path, owns_state=True)
    deadline = time.monotonic() + wait
    try:
        while not _accepting(listen) and process.poll() is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
    except BaseException:  # (Ctrl-C while waiting: nobody else holds the server to stop it)
        server.stop()
        raise
    if not _accepting(listen):
        server.stop()
        raise RuntimeError(f"the AgentFense server did not start:\n{server.log()}")
    return server
