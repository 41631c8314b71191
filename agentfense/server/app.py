"""``serve``: the AgentFense server process (grpclib on asyncio, in ``_grpc``; logic on anyio)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import signal
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

from .._local_token import read_token_file, token_path, write_local_token
from ..errors import InvalidConfigurationError
from ._descriptors import raise_limit as raise_descriptor_limit
from ._grpc.listener import Listener
from .audit_log import AuditLog
from .codebases import CodebaseStore
from .config import ServerConfig
from .exposure import check_exposure
from .metrics import ServerMetrics
from .metrics_endpoint import open_metrics_endpoint
from .sandboxes import SandboxManager
from .tls import server_context
from .tokens import LOCAL_TENANT, TokenStore

log = logging.getLogger("agentfense.server")


def parse_listen(listen: str) -> tuple[str, int] | Path:
    """``host:port`` or ``unix:/path``; a sentence naming the problem otherwise."""
    if listen.startswith("unix:"):
        path = listen[len("unix:") :]
        while path.startswith("//"):
            path = path[1:]
        if not path:
            raise InvalidConfigurationError("listen 'unix:' needs a socket path")
        return Path(path)
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise InvalidConfigurationError(
            f"listen must be 'host:port' or 'unix:/path/to.sock', not {listen!r}"
        )
    return host.strip("[]"), int(port)


def _check_reachable(config: ServerConfig) -> None:
    """Sandboxes run as their own uid and must reach their view under the state directory."""
    if os.geteuid() != 0:
        return
    for parent in config.state_dir.absolute().parents:
        mode = parent.stat().st_mode if parent.exists() else 0o755
        if not mode & 0o001:
            raise InvalidConfigurationError(
                f"state_dir {config.state_dir} is not reachable by the sandboxes' uid "
                f"{config.sandbox_uid}: {parent} is mode {oct(mode & 0o777)}; choose a "
                "state_dir whose parent directories others may traverse (o+x)"
            )


def _port_taken(host: str, port: int) -> bool:
    """Whether something already listens on ``host``:``port`` (any address it names)."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return False  # (the listen itself then says what is wrong)
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # (as asyncio binds)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return True
    return False


def _answers(path: Path) -> bool:
    """Whether something accepts connections on the unix socket ``path``."""
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def _listen_errors(listen: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise InvalidConfigurationError(
            f"cannot listen on {listen}: {exc.strerror or exc}"
        ) from None


@contextlib.asynccontextmanager
async def open_server(config: ServerConfig) -> AsyncIterator[str]:
    """Run the server while the context is open; yields the address it listens on."""
    address = parse_listen(config.listen)
    if isinstance(address, Path):
        if config.tls_cert:
            raise InvalidConfigurationError(
                f"tls_cert is set but listen {config.listen} is a unix socket: TLS needs a "
                "host:port listen address (a unix socket's file mode decides who connects)"
            )
    else:
        check_exposure(config, address[0])
    tls = server_context(config)
    _check_reachable(config)
    raise_descriptor_limit()
    # (a path it cannot open is refused before the state directory is touched)
    audit = AuditLog(config.audit_log) if config.audit_log else None
    try:
        config.state_dir.mkdir(parents=True, exist_ok=True)
        with _state_lock(config.state_dir):
            async with _serving(config, address, tls, audit) as shown:
                yield shown
    finally:
        if audit is not None:
            audit.close()


@contextlib.contextmanager
def _state_lock(state_dir: Path) -> Iterator[None]:
    """The state directory is this server's alone while it runs: taken before anything in it
    is touched (a second server would take over the running one's mounts and socket), and
    released when the process ends, however it ends."""
    path = state_dir / "server.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise InvalidConfigurationError(
                f"state_dir {state_dir} is in use by another agentfense server (pid {holder}); "
                "stop it first or choose another state_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _leave_local_token(tokens: TokenStore, endpoint: str) -> None:
    """Secure by default, with no key to pass: the user running the server finds a token of
    tenant ``local`` in a file only they can read (``agentfense._local_token``), kept from an
    earlier start while the store still accepts it."""
    try:
        existing = read_token_file(endpoint)
        if existing is not None and tokens.tenant_of(existing) == LOCAL_TENANT:
            return
        path = write_local_token(endpoint, tokens.create(LOCAL_TENANT, local=True))
    except OSError as exc:
        log.warning(
            "cannot leave the local owner's API token for %s (%s): clients must pass a token "
            "made with 'agentfense token create'",
            endpoint,
            exc.strerror or exc,
        )
        return
    log.info("the API token of this server's own user (tenant local) is in %s", path)
    # (for a unix socket, removed with the socket when the server stops)


def _token_store(config: ServerConfig) -> TokenStore | None:
    tokens = TokenStore(config.state_dir) if config.auth == "token" else None
    if tokens is None:
        log.warning(
            "auth is 'none': anyone who can reach %s is this server's own user (tenant "
            "local), who can read every codebase of it and run, read and destroy every sandbox "
            "of it; use it for development only",
            config.listen,
        )
    else:
        tokens.records()  # (a damaged store is refused at start, in a sentence)
    return tokens


@contextlib.asynccontextmanager
async def _serving(
    config: ServerConfig,
    address: tuple[str, int] | Path,
    tls: ssl.SSLContext | None,
    audit: AuditLog | None,
) -> AsyncIterator[str]:
    # Traversable (sandboxes, which run as their own uid, reach their view and the generated
    # /etc files below), but nothing in it can be listed by anyone else.
    config.state_dir.chmod(0o711)
    codebases = config.state_dir / "codebases"
    codebases.mkdir(exist_ok=True, mode=0o700)
    # A sandbox whose policy reads everything gets its codebase's files bound read-only, by
    # bwrap running as the sandbox uid: its group may pass through (not list), others not.
    if os.geteuid() == 0:
        os.chown(codebases, 0, config.sandbox_uid)
        codebases.chmod(0o710)
    # The sandboxes' deltas hold files with the modes a sandbox chose: root's business alone.
    deltas = config.state_dir / "deltas"
    deltas.mkdir(exist_ok=True, mode=0o700)
    deltas.chmod(0o700)
    # Sandbox file writes whose temporary cannot live in the view wait here, unnamed.
    spool = config.state_dir / "spool"
    spool.mkdir(exist_ok=True, mode=0o700)
    store = CodebaseStore(config.state_dir / "codebases", config.quota_table())
    await store.load()
    metrics = ServerMetrics()
    endpoint = (
        open_metrics_endpoint(config.metrics_listen, metrics)
        if config.metrics_listen
        else contextlib.nullcontext()
    )
    tokens = _token_store(config)
    async with SandboxManager(config, store, metrics, audit) as manager, endpoint:
        server = Listener(config, store, manager, spool, metrics, tokens=tokens, audit=audit)
        if isinstance(address, Path):
            address.parent.mkdir(parents=True, exist_ok=True)
            if _answers(address):
                raise InvalidConfigurationError(
                    f"cannot listen on {config.listen}: a server already listens there"
                )
            with contextlib.suppress(FileNotFoundError):
                os.unlink(address)  # left by a server that died
            if tokens is not None:  # (before the socket accepts a call)
                _leave_local_token(tokens, f"unix:{address}")
            # 0600: only the server's user may connect (never the sandboxes' uids).
            old_umask = os.umask(0o177)
            try:
                with _listen_errors(config.listen):
                    await server.start_unix(address)
            finally:
                os.umask(old_umask)
            shown = f"unix:{address}"
        else:
            host, port = address
            if tokens is not None and port != 0:  # (before the port accepts a call)
                if _port_taken(host, port):  # (and not over the file of the server there)
                    raise InvalidConfigurationError(
                        f"cannot listen on {config.listen}: the address is in use"
                    )
                _leave_local_token(tokens, f"{host}:{port}")
            with _listen_errors(config.listen):
                chosen = await server.start_tcp(host, port, tls)
            if tokens is not None and port == 0:  # (the port is known only now)
                _leave_local_token(tokens, f"{host}:{chosen}")
            shown = f"{host}:{chosen}"
        try:
            yield shown
        finally:
            with anyio.CancelScope(shield=True):
                server.close()
                await manager.shutdown()
                with anyio.move_on_after(5):
                    await server.wait_closed()
                if isinstance(address, Path):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(address)
                    if tokens is not None:  # (its token goes with the socket: a new one next time)
                        with contextlib.suppress(OSError):
                            os.unlink(token_path(shown))


async def serve(
    config: ServerConfig, *, task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Serve until cancelled or until SIGINT/SIGTERM, then shut down gracefully."""
    # Received from the start: a signal while the server comes up stops it once it is up,
    # gracefully, rather than killing it half-way (with its state left behind).
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_server(config) as address:
            tls = " over mutual TLS" if config.tls_client_ca else " over TLS"
            log.info(
                "agentfense listening on %s%s (state in %s)",
                address,
                tls if config.tls_cert else "",
                config.state_dir,
            )
            task_status.started(address)
            async for signum in signals:
                log.info("received %s, shutting down", signal.Signals(signum).name)
                return
