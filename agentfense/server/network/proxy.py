"""One sandbox's way out: an HTTP proxy the server serves on a socket it made inside the
sandbox's network namespace (``netns.py``), and a DNS responder beside it that refuses
every lookup (the proxy resolves names; the sandbox has no resolver of its own).

Each connection is decided on what the sandbox names and what the name resolves to:
- a plain HTTP request, by its URL's host (and its Host header, which must agree);
- ``CONNECT host:port``, by that host, then by the TLS ClientHello that follows, whose
  server name (SNI) must be that host too; to the web ports the tunnel must carry TLS;
- the address the name resolves to (here, by the server; or the operator's host map),
  which must not be loopback, link-local, private or the server's own (``addresses.py``).
Every decision is logged (``connections.py``); a denial reaches the audit log too. The
sandbox's connections share a byte rate and a count limit (``NetworkLimits``): one sandbox's
traffic costs only its own share. docs/network.md is the user's view.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
from collections.abc import Callable, Collection
from dataclasses import dataclass

import anyio
import anyio.abc
import anyio.lowlevel

from ...errors import ResourceLimitExceededError
from .._descriptors import check_headroom
from .addresses import refusal
from .connections import ConnectionLog, Verdict, target
from .direct import packet_target, prohibited
from .local_addresses import local_addresses
from .messages import (
    MAX_HEAD,
    MAX_HELLO,
    MessageError,
    dns_question,
    dns_refusal,
    head_end,
    hello_missing,
    parse_head,
    server_name,
    tls_begun,
)
from .netns import DNS_PORT, PROXY_PORT, ProxySockets
from .policy import WEB_PORTS, NetworkPolicy, OperatorNetwork, normal_host
from .raw_sockets import RawSocketWatches
from .sockets import CHUNK, Conn, accept, connect, receive_datagram

_log = logging.getLogger("agentfense.server.network")
_URL = f"http://127.0.0.1:{PROXY_PORT}"
_LOCAL = "localhost,127.0.0.1,::1"
# Every command's environment in a sandbox with a network (both spellings: curl reads only
# the lowercase http_proxy, some tools only the uppercase ones).
PROXY_ENV = {
    "HTTP_PROXY": _URL,
    "HTTPS_PROXY": _URL,
    "http_proxy": _URL,
    "https_proxy": _URL,
    "NO_PROXY": _LOCAL,
    "no_proxy": _LOCAL,
}
_HEAD_WAIT = 30.0  # seconds a connection has to send its request head
_CONNECT_WAIT = 10.0  # to resolve and connect upstream
_HELLO_WAIT = 10.0  # for a tunnel's first bytes (to a web port)
_FIRST_BYTES_WAIT = 1.0  # for those of a tunnel to another port
_DNS_REPLIES_PER_SECOND = 200  # a flood of lookups is answered at this rate, and logged so
_DIRECT_PER_SECOND = 200  # packets sent past the proxy handled a second
_LOOKUPS = 4  # a sandbox's names being looked up at once
_ADDRESSES = 16  # of a name's addresses, those tried
_IDLE = 900.0  # seconds a connection may move nothing, either way
_AFTER_CLIENT = 30.0  # seconds a connection lasts once its client is done
_WATCH_EVERY = 5.0
_ERRORS_EVERY = 60.0  # seconds between two tracebacks of a sandbox's connections


@dataclass(frozen=True, slots=True)
class NetworkLimits:
    max_connections: int = 64  # open at once, per sandbox
    bytes_per_second: int = 0  # both ways together, per sandbox (0: no limit)
    # New connections taken a second, per sandbox (0: no limit): each costs the server's
    # loop a millisecond or so, and 1,400 a second from one sandbox tripled another's
    # command's time. Past it, connections wait in the listening socket's queue.
    connections_per_second: int = 100


# (kind, host, port, reason, unreported): for the audit log, at most _AUDITED_PER_SECOND a
# second per sandbox; ``unreported``: the denials left out before this one.
Denied = Callable[[str, str, int, str, int], None]
_AUDITED_PER_SECOND = 20


class _Rate:
    """A token bucket: ``take(n)`` waits until the sandbox may move ``n`` more bytes (or
    take ``n`` more connections)."""

    def __init__(self, per_second: int, burst: int) -> None:
        self._rate = per_second
        self._burst = max(per_second, burst)
        self._tokens = float(self._burst)
        self._at = anyio.current_time()

    async def take(self, count: int) -> None:
        if not self._rate:
            return
        now = anyio.current_time()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        self._tokens -= count
        if self._tokens < 0:
            await anyio.sleep(-self._tokens / self._rate)


@dataclass
class _Activity:
    moved: float  # when a byte last moved
    client_done: float | None = None  # when the client ended what it sends


class _Refused(Exception):
    def __init__(self, status: str, reason: str, verdict: Verdict = Verdict.DENIED) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.verdict = verdict


class SandboxProxy:
    """The proxy and the DNS responder of one running sandbox."""

    def __init__(
        self,
        policy: NetworkPolicy,
        operator: OperatorNetwork,
        limits: NetworkLimits,
        log: ConnectionLog,
        *,
        server_ports: Collection[int],
        on_denied: Denied,
    ) -> None:
        self._policy = policy
        self._operator = operator
        self._limits = limits
        self._log = log
        self._server_ports = server_ports
        self._on_denied = on_denied
        self._rate = _Rate(limits.bytes_per_second, CHUNK)
        self._accepts = _Rate(limits.connections_per_second, 1)
        self._lookups = anyio.CapacityLimiter(_LOOKUPS)
        self._error_logged = -_ERRORS_EVERY
        self._open = 0
        self._audit_window = anyio.current_time()
        self._audited = 0
        self._unreported = 0
        # The raw and packet sockets its commands try to open (the runtime gives the
        # listeners: ``SandboxHandle.watch_raw_sockets``).
        self.raw_sockets = RawSocketWatches(lambda kind, why: self._deny(kind, "", 0, why))

    async def serve(self, made: ProxySockets) -> None:
        """Until cancelled (the sandbox stops): then every connection is closed, and the
        sockets (this owns them)."""
        try:
            made.listener.setblocking(False)
            made.dns.setblocking(False)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._report_unreported)
                tg.start_soon(self.raw_sockets.serve)
                tg.start_soon(self._answer_lookups, made.dns)
                if made.catchall is not None:
                    tg.start_soon(self._answer_direct, made.catchall)
                await self._accept(made.listener, tg)
        finally:
            self.raw_sockets.close()
            self._flush_unreported()
            made.close()

    async def _report_unreported(self) -> None:
        """The denials left out of the audit log (past _AUDITED_PER_SECOND a second) are
        counted in a line of their own once their second is over, not only with the next
        denial (which may never come)."""
        while True:
            await anyio.sleep(1)
            if anyio.current_time() - self._audit_window >= 1:
                self._flush_unreported()

    def _flush_unreported(self) -> None:
        if self._unreported:
            reason = f"denials past {_AUDITED_PER_SECOND} a second, not written one by one"
            self._on_denied("unreported", "", 0, reason, self._unreported)
            self._unreported = 0

    async def _accept(self, listener: socket.socket, tg: anyio.abc.TaskGroup) -> None:
        while True:
            await self._accepts.take(1)
            try:
                conn = await accept(listener)
            except OSError as exc:  # (EMFILE: the server's limit; later ones may pass)
                now = anyio.current_time()
                if now - self._error_logged >= _ERRORS_EVERY:
                    self._error_logged = now
                    _log.warning("the sandbox's proxy cannot accept: %s", exc)
                await anyio.sleep(0.1)
                continue
            tg.start_soon(self._handle, conn)

    def _deny(self, kind: str, host: str, port: int, reason: str, address: str = "") -> None:
        self._log.add(kind, host, port, Verdict.DENIED, reason, address)
        now = anyio.current_time()
        if now - self._audit_window >= 1:
            self._audit_window, self._audited = now, 0
        self._audited += 1
        if self._audited > _AUDITED_PER_SECOND:
            self._unreported += 1
            return
        self._on_denied(kind, host, port, reason, self._unreported)
        self._unreported = 0

    async def _handle(self, client: Conn) -> None:
        """One connection: whatever becomes of it, never the proxy's end."""
        try:
            reason = ""
            if self._open >= self._limits.max_connections:
                reason = f"more than {self._limits.max_connections} connections at once"
            else:
                try:
                    check_headroom("a connection through the sandbox's proxy")
                except ResourceLimitExceededError as exc:
                    reason = exc.message
            if reason:
                self._deny("http", "", 0, reason)
                await _answer(client, "503 Service Unavailable", reason)
                return
            self._open += 1
            try:
                await self._serve_one(client)
            finally:
                self._open -= 1
        except Exception:
            now = anyio.current_time()  # (one traceback a minute: a sandbox cannot fill the log)
            if now - self._error_logged >= _ERRORS_EVERY:
                self._error_logged = now
                _log.exception("a connection through a sandbox's proxy failed")
        finally:
            client.close()

    async def _serve_one(self, client: Conn) -> None:
        buffer = bytearray()
        with anyio.move_on_after(_HEAD_WAIT):
            while (end := head_end(buffer)) < 0 and len(buffer) <= MAX_HEAD:
                more = await client.receive(MAX_HEAD + 1)
                if not more:
                    return
                buffer += more
        if end < 0:
            reason = "no request head" if len(buffer) <= MAX_HEAD else "a request head too long"
            self._deny("http", "", 0, reason)
            await _answer(client, "400 Bad Request", reason)
            return
        kind, host, port = "http", "", 0
        try:
            head = parse_head(bytes(buffer[:end]))
            kind = "connect" if head.method == "CONNECT" else "http"
            port = head.port
            try:
                host = normal_host(head.host)
            except Exception:  # (InvalidConfigurationError: its sentence is about patterns)
                host = head.host[:255]
                raise _Refused("400 Bad Request", f"{host!r} is not a host name") from None
            address, upstream = await self._allowed(host, port)
        except MessageError as exc:
            self._deny(kind, host, port, str(exc))
            await _answer(client, "400 Bad Request", str(exc))
            return
        except _Refused as refused:
            if refused.verdict is Verdict.DENIED:
                self._deny(kind, host, port, refused.reason)
            else:
                self._log.add(kind, host, port, refused.verdict, refused.reason)
            await _answer(client, refused.status, refused.reason)
            return
        try:
            rest = bytes(buffer[end:])
            body: int | None = None  # (a tunnel's: no end but its own)
            pipelined = False
            if kind == "http":
                body = head.body
                first = head.upstream + rest[:body]
                pipelined = len(rest) > body  # (a next request came with it: never sent)
                body -= len(rest[:body])  # (what is still to come)
            else:
                try:
                    first = await self._tunnel_start(client, host, port, rest)
                except _Refused as refused:
                    self._deny(kind, host, port, refused.reason, address)
                    return
            seq = self._log.add(kind, host, port, Verdict.ALLOWED, address=address)
            await self._relay(client, upstream, first, seq, body, pipelined)
        finally:
            upstream.close()

    async def _allowed(self, host: str, port: int) -> tuple[str, Conn]:
        """A connection to ``host`` (normalised) on ``port``, if the policy allows it."""
        if self._policy.allows(host, port) is None:
            raise _Refused("403 Forbidden", f"{host}:{port} is not in the allow-list")
        return await self._connect(host, port)

    async def _connect(self, host: str, port: int) -> tuple[str, Conn]:
        """A connection to the first address of ``host`` that is not refused and answers."""
        mapped = self._operator.hosts.get(host)
        candidates = [mapped] if mapped is not None else await self._resolve(host, port)
        refused: str | None = None  # (the first reason)
        failed: list[str] = []
        local = local_addresses()
        # (_CONNECT_WAIT for them all: a name of the sandbox's own may resolve to many
        # addresses that never answer, and hold the connection's place for each)
        with anyio.move_on_after(_CONNECT_WAIT) as waited:
            for address in candidates[:_ADDRESSES]:
                why = refusal(
                    address,
                    port,
                    mapped=mapped is not None,
                    server_ports=self._server_ports,
                    local=local,
                )
                if why is not None:
                    refused = refused or why
                    continue
                try:
                    return address, await connect(address, port)
                except OSError as exc:
                    failed.append(f"cannot reach {target('connect', address, port)}: {_why(exc)}")
        if waited.cancelled_caught:
            failed.append(f"nothing answered within {_CONNECT_WAIT:g} s")
        if failed:
            raise _Refused("502 Bad Gateway", "; ".join(failed[:3]), Verdict.FAILED)
        raise _Refused("403 Forbidden", f"{host} resolves to refused addresses: {refused}")

    async def _resolve(self, host: str, port: int) -> list[str]:
        """The addresses of ``host``, looked up by the server: at most _LOOKUPS at once for
        a sandbox (a lookup that hangs holds a worker thread until the resolver gives up:
        one sandbox's cannot take every thread)."""
        try:
            with anyio.fail_after(_CONNECT_WAIT):
                found = await anyio.to_thread.run_sync(
                    functools.partial(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM),
                    limiter=self._lookups,
                    abandon_on_cancel=True,
                )
        except (OSError, TimeoutError) as exc:
            reason = _why(exc)
            raise _Refused(
                "502 Bad Gateway", f"cannot resolve {host}: {reason}", Verdict.FAILED
            ) from None
        return list(dict.fromkeys(str(info[4][0]) for info in found)) or [host]

    async def _tunnel_start(self, client: Conn, host: str, port: int, rest: bytes) -> bytes:
        """Answer a CONNECT, then read the tunnel's first bytes: a TLS ClientHello must
        name ``host`` (when it names any); the web ports take nothing but TLS. A client
        of another port that says nothing for a second (its server speaks first: SSH,
        SMTP) is let through as it is."""
        try:
            await client.send_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        except OSError:
            return b""
        first = bytearray(rest)
        web = port in WEB_PORTS
        ended = False
        began = anyio.current_time()
        deadline = began + (_HELLO_WAIT if web else _FIRST_BYTES_WAIT)
        with anyio.CancelScope(deadline=deadline) as wait:
            while len(first) < MAX_HELLO:
                if first and not tls_begun(first):
                    break
                if first:  # (TLS, or its first bytes: the whole hello is waited for)
                    wait.deadline = max(wait.deadline, began + _HELLO_WAIT)
                    if hello_missing(first) == 0:
                        break
                more = await client.receive(MAX_HELLO)
                if not more:
                    ended = True
                    break
                first += more
        if not first and (ended or not web):
            return b""  # (closed unused, or a server that speaks first)
        if not first:
            raise _Refused("", f"the tunnel sent nothing in {_HELLO_WAIT:g} s")
        if tls_begun(first):  # (a hello still cut short at the deadline is refused)
            try:
                name = server_name(bytes(first))
            except MessageError as exc:
                raise _Refused("", str(exc)) from None
            if name is not None and name != host:
                raise _Refused("", f"the TLS server name {name[:255]!r} is not {host}")
        elif web:
            raise _Refused("", f"the tunnel to port {port} does not begin with TLS")
        return bytes(first)

    async def _relay(
        self,
        client: Conn,
        upstream: Conn,
        first: bytes,
        seq: int,
        body: int | None,
        pipelined: bool = False,
    ) -> None:
        """Both ways. A tunnel (``body`` None) until both ends are done. A plain request:
        ``first`` (its head) and ``body`` more bytes go up, nothing after them (a second
        request on the connection is never sent where the first was allowed: the
        connection ends as it begins, and the client opens another, which is checked), and
        once the response is down the connection ends. Either end broken: all is."""
        moved = [0, 0]  # up, down
        state = _Activity(anyio.current_time())

        def counted(way: int) -> Callable[[int], None]:
            def add(count: int) -> None:
                moved[way] += count
                state.moved = anyio.current_time()
                self._log.update(seq, up=moved[0], down=moved[1])

            return add

        async def watch(tg: anyio.abc.TaskGroup) -> None:
            """End a connection that moves nothing for _IDLE, or whose client is done and
            whose host does not end it within _AFTER_CLIENT (a slot held by a remote host
            would be a slot the sandbox never gets back)."""
            while True:
                await anyio.sleep(_WATCH_EVERY)
                now = anyio.current_time()
                done = state.client_done
                idle = now - state.moved > _IDLE
                if idle or (done is not None and now - done > _AFTER_CLIENT):
                    tg.cancel_scope.cancel()
                    return

        async def up(tg: anyio.abc.TaskGroup) -> None:
            data, left = first, body
            try:
                while True:
                    if data:
                        await self._rate.take(len(data))
                        await upstream.send_all(data)
                        counted(0)(len(data))
                    if left == 0:  # (the request is whole: what follows is not sent)
                        if not pipelined and await client.receive(1):  # (the next request:
                            tg.cancel_scope.cancel()  # the connection ends, the client
                            return  # opens another, which is checked)
                        state.client_done = anyio.current_time()  # (or the client's end)
                        return
                    data = await client.receive(CHUNK if left is None else min(left, CHUNK))
                    if not data:
                        state.client_done = anyio.current_time()
                        break
                    if left is not None:
                        left -= len(data)
            except OSError:
                tg.cancel_scope.cancel()
                return
            upstream.send_eof()

        async def down(tg: anyio.abc.TaskGroup) -> None:
            await upstream.splice_to(client, self._rate.take, counted(1))
            client.send_eof()
            if body is not None:
                tg.cancel_scope.cancel()

        try:
            async with anyio.create_task_group() as watched:
                watched.start_soon(watch, watched)
                async with anyio.create_task_group() as both:
                    both.start_soon(up, both)
                    both.start_soon(down, both)
                watched.cancel_scope.cancel()
        finally:
            self._log.update(seq, up=moved[0], down=moved[1], ended=True)

    async def _answer_direct(self, catchall: int) -> None:
        """Log what the sandbox sent past the proxy (each target once a second) and refuse
        it at once (ICMP "administratively prohibited"), at most _DIRECT_PER_SECOND packets a
        second: beyond, they wait in the interface's queue (the kernel drops its overflow)."""
        window, handled = anyio.current_time(), 0
        logged: set[tuple[str, str, int]] = set()
        reason = "sent past the proxy (127.0.0.1:3128): nothing else leaves the sandbox"
        while True:
            await anyio.wait_readable(catchall)
            now = anyio.current_time()
            if now - window >= 1:
                window, handled = now, 0
                logged.clear()
            if handled >= _DIRECT_PER_SECOND:
                await anyio.sleep(window + 1 - now)
                continue
            try:
                packet = os.read(catchall, 65536)
            except BlockingIOError:
                continue
            except OSError:
                return
            handled += 1
            target = packet_target(packet)
            if target is None:
                continue
            if target not in logged:
                logged.add(target)
                protocol, address, port = target
                self._deny(f"direct-{protocol}", address, port, reason)
            answer = prohibited(packet)
            if answer is not None:
                with contextlib.suppress(OSError):
                    os.write(catchall, answer)

    async def _answer_lookups(self, dns: socket.socket) -> None:
        """Refuse every lookup at once (REFUSED), logging what was asked: each name once a
        second (a resolver asks for A and AAAA, and asks again)."""
        window, answered = anyio.current_time(), 0
        logged: set[str] = set()  # (this second's)
        while True:
            now = anyio.current_time()
            if now - window >= 1:
                window, answered = now, 0
                logged.clear()
            if answered >= _DNS_REPLIES_PER_SECOND:
                # (the rest wait in the socket's queue, whose overflow the kernel drops: a
                # flood read and dropped here never let the server's loop run anything else)
                await anyio.sleep(window + 1 - now)
                continue
            try:
                datagram, peer = await receive_datagram(dns)
            except OSError:
                await anyio.lowlevel.checkpoint()
                continue
            answered += 1
            try:
                name = dns_question(datagram)
            except MessageError as exc:
                self._deny("dns", "", DNS_PORT, str(exc))
                continue
            if name not in logged:
                logged.add(name)
                reason = "no DNS in the sandbox: the proxy resolves names"
                self._deny("dns", name[:255], DNS_PORT, reason)
            reply = dns_refusal(datagram)
            if reply is not None:
                with contextlib.suppress(OSError):  # (its buffer full: dropped)
                    dns.sendto(reply, peer)


def _why(exc: BaseException) -> str:
    """A failure to resolve or connect, in words (anyio's own OSErrors have no strerror;
    the cause it chains has)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
    return getattr(cause, "strerror", None) or str(cause) or type(cause).__name__


async def _answer(client: Conn, status: str, reason: str) -> None:
    """A short response saying why (what curl and pip show the agent)."""
    body = f"agentfense: {reason}\n".encode(errors="replace")
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    with contextlib.suppress(OSError):
        await client.send_all(head.encode() + body)
