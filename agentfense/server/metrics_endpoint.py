"""The metrics endpoint: ``GET /metrics`` in Prometheus's text format, over HTTP, on the
server's own event loop.

On the loop rather than in prometheus_client's threads (``start_http_server`` starts a thread
per connection, without a bound): the gauges read the sandbox table where it changes, and what
a scraper can cost is bounded here. At most ``MOST_CONNECTIONS`` connections are answered at
once (more are closed at once), each has ``REQUEST_TIMEOUT`` seconds for its request and its
answer, and a request head is at most ``MOST_REQUEST_BYTES``. Building the answer holds the
loop (0.7 ms on a fresh server, 7 ms with every series in use and 1,000 sandboxes, on a
loaded 2-core machine), so answers are built at most once per ``PACE`` seconds: a scraper in
a tight loop takes at most a few percent of the loop, and every answer is still fresh.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import anyio
import anyio.abc
from anyio.abc import SocketAttribute
from prometheus_client import CONTENT_TYPE_LATEST

from ..errors import InvalidConfigurationError
from .config import parse_metrics_listen
from .exposure import is_loopback
from .metrics import ServerMetrics

log = logging.getLogger("agentfense.server.metrics")

MOST_CONNECTIONS = 8
REQUEST_TIMEOUT = 5.0
PACE = 0.25
MOST_REQUEST_BYTES = 8192


@contextlib.asynccontextmanager
async def open_metrics_endpoint(listen: str, metrics: ServerMetrics) -> AsyncIterator[str]:
    """Serve ``metrics`` on ``listen`` while the context is open; yields ``host:port`` bound
    (the port the kernel chose for port 0)."""
    host, port = parse_metrics_listen(listen)
    if not is_loopback(host):
        log.warning(
            "metrics listen on %s, which is not loopback: anyone who can reach it can read "
            "the server's metrics",
            host,
        )
    try:
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    except OSError as exc:
        raise InvalidConfigurationError(
            f"cannot listen for metrics on {listen}: {exc.strerror or exc}"
        ) from None
    sockets: list[anyio.abc.SocketListener] = getattr(listener, "listeners", [listener])
    bound = int(sockets[0].extra(SocketAttribute.local_port))  # (the same for each family)
    busy = anyio.Semaphore(MOST_CONNECTIONS)
    paced = _Paced(metrics)
    async with listener, anyio.create_task_group() as tg:
        for socket in sockets:
            tg.start_soon(_accept, socket, tg, paced, busy)
        shown = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
        log.info("metrics on http://%s/metrics", shown)
        try:
            yield shown
        finally:
            tg.cancel_scope.cancel()


class _Paced:
    """The exposition, built at most once per ``PACE`` seconds (a scrape sooner waits)."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics
        self._lock = anyio.Lock()
        self._last = -PACE

    async def exposition(self) -> bytes:
        async with self._lock:
            await anyio.sleep_until(self._last + PACE)
            self._last = anyio.current_time()
            return self._metrics.exposition()


async def _accept(
    listener: anyio.abc.SocketListener,
    tg: anyio.abc.TaskGroup,
    paced: _Paced,
    busy: anyio.Semaphore,
) -> None:
    while True:
        try:
            connection = await listener.accept()
        except anyio.ClosedResourceError:
            return
        except OSError as exc:  # (out of descriptors: the server's other work comes first)
            log.warning("the metrics endpoint cannot accept a connection: %s", exc)
            await anyio.sleep(0.1)
            continue
        tg.start_soon(_answer, connection, paced, busy)


async def _answer(connection: anyio.abc.SocketStream, paced: _Paced, busy: anyio.Semaphore) -> None:
    async with connection:
        try:
            busy.acquire_nowait()
        except anyio.WouldBlock:
            return  # (enough scrapers at once: this one is closed unanswered)
        try:
            with anyio.move_on_after(REQUEST_TIMEOUT):
                head = await _read_head(connection)
                if head is not None:
                    await connection.send(await _response(head, paced))
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # (the scraper went away)
        except Exception:  # never the server's end: a bug here costs only this answer
            log.exception("the metrics endpoint failed to answer")
        finally:
            busy.release()


async def _read_head(connection: anyio.abc.SocketStream) -> bytes | None:
    """The request's head (up to its blank line); None when the client stopped first."""
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data:
        if len(data) > MOST_REQUEST_BYTES:
            return b""  # (answered 400)
        try:
            data += await connection.receive(4096)
        except anyio.EndOfStream:
            return None
    return data


async def _response(head: bytes, paced: _Paced) -> bytes:
    words = head.split(b"\n", 1)[0].split()
    if len(words) != 3 or not words[2].startswith(b"HTTP/"):
        return _reply(400, "Bad Request", b"a request line 'GET /metrics HTTP/1.1' is needed\n")
    method, target = words[0], words[1].split(b"?", 1)[0]
    if target not in (b"/metrics", b"/"):
        return _reply(404, "Not Found", b"the metrics are at /metrics\n")
    if method not in (b"GET", b"HEAD"):
        return _reply(405, "Method Not Allowed", b"only GET and HEAD are answered\n")
    body = await paced.exposition()
    return _reply(200, "OK", body, CONTENT_TYPE_LATEST, send_body=method == b"GET")


def _reply(
    code: int,
    reason: str,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    *,
    send_body: bool = True,
) -> bytes:
    head = (
        f"HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + (body if send_body else b"")
