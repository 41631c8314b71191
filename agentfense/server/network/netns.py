"""The proxy's sockets, made inside a sandbox's network namespace by the server.

A socket belongs to the namespace it was made in, whichever process then uses it: a thread
of the server's joins the sandbox's namespace (``setns``), makes and binds the listening
TCP socket (127.0.0.1:3128), the UDP one (127.0.0.1:53) and the catch-all interface
(``direct.py``), and ends; the server serves them from its own namespace. So no bridge,
veth or process is added to the sandbox's namespace, and a proxied byte is moved once, by
the server. The thread is one of its own (not a worker's, which would be reused): a
namespace it could not leave goes with it.

The sandbox's processes cannot take these ports first (the sockets exist before any
command), nor bind beside them (``SO_REUSEPORT`` needs the same user; port 53 needs a
capability in the namespace's owner, the host's user namespace).
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import threading
from dataclasses import dataclass

import anyio

from .direct import make_catchall

_log = logging.getLogger("agentfense.server.network")
PROXY_PORT = 3128  # in the sandbox's namespace: 127.0.0.1:3128
DNS_PORT = 53

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))


@dataclass(frozen=True)
class ProxySockets:
    listener: socket.socket  # TCP, 127.0.0.1:3128
    dns: socket.socket  # UDP, 127.0.0.1:53
    catchall: int | None  # the TUN interface's fd (``direct.py``); None where it cannot be

    def close(self) -> None:
        self.listener.close()
        self.dns.close()
        if self.catchall is not None:
            os.close(self.catchall)


def _make(netns: int) -> ProxySockets:
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    made: list[socket.socket] = []
    catchall: int | None = None
    try:
        _setns(netns)
        try:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            made.append(listener)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", PROXY_PORT))
            listener.listen(256)
            dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            made.append(dns)
            dns.bind(("127.0.0.1", DNS_PORT))
            try:
                catchall = make_catchall()
            except OSError as exc:  # (no /dev/net/tun here: what goes past is not seen)
                _log.warning("a sandbox's direct connections cannot be logged: %s", exc)
        finally:
            _setns(own)  # (refused: this thread ends all the same)
    except BaseException:
        for sock in made:
            sock.close()
        if catchall is not None:
            os.close(catchall)
        raise
    finally:
        os.close(own)
    return ProxySockets(listener, dns, catchall)


def _in_own_thread(netns: int) -> ProxySockets:
    result: list[ProxySockets] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            result.append(_make(netns))
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=work, name="agentfense-netns", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


async def proxy_sockets(netns: int) -> ProxySockets:
    """The proxy's listening socket, the DNS responder's and the catch-all interface, in
    the namespace ``netns`` (an fd on it); OSError when they cannot be made there."""
    return await anyio.to_thread.run_sync(_in_own_thread, netns)
