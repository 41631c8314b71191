"""A small world on loopback for the network tests: a mirror serving files and a package
index over HTTP and HTTPS (a test CA made by trustme), a service nobody maps, and a tiny
wheel to install. Everything runs in threads of the test process, on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import socket
import socketserver
import ssl
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import trustme

MIRROR = "mirror.test"  # mapped to 127.0.0.1 by the server's host map
UNMAPPED = "elsewhere.test"  # resolves nowhere: a name the proxy cannot resolve
PACKAGE = "tinypkg"
VALUE = "installed through the allow-list"


def install_and_import(https_port: int) -> str:
    """A command that pip-installs ``tinypkg`` from the mirror's index over HTTPS (the test CA
    at /workspace/ca.pem) and prints its VALUE."""
    index = f"https://{MIRROR}:{https_port}/simple/"
    return (
        "python3 -m pip install -q --no-cache-dir --disable-pip-version-check "
        f"--cert /workspace/ca.pem --index-url {index} --target /tmp/site {PACKAGE} && "
        f"PYTHONPATH=/tmp/site python3 -c 'import {PACKAGE}; print({PACKAGE}.VALUE)'"
    )


def wheel() -> tuple[str, bytes]:
    """A pure-Python wheel of ``tinypkg`` 1.0 (its name and bytes)."""
    files = {
        f"{PACKAGE}/__init__.py": f"VALUE = {VALUE!r}\n".encode(),
        f"{PACKAGE}-1.0.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: 1.0\n"
        ).encode(),
        f"{PACKAGE}-1.0.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{PACKAGE}-1.0.dist-info/RECORD,,")
    files[f"{PACKAGE}-1.0.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return f"{PACKAGE}-1.0-py3-none-any.whl", buffer.getvalue()


def fill_mirror(root: Path, big_bytes: int = 0) -> None:
    """hello.txt, a PEP 503 index with the wheel, and (``big_bytes``) big.bin."""
    (root / "hello.txt").write_text("hello from the mirror\n")
    name, data = wheel()
    package = root / "simple" / PACKAGE
    package.mkdir(parents=True)
    (package / name).write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    (package / "index.html").write_text(
        f'<!DOCTYPE html><html><body><a href="{name}#sha256={digest}">{name}</a></body></html>\n'
    )
    (root / "simple" / "index.html").write_text(
        f'<!DOCTYPE html><html><body><a href="{PACKAGE}/">{PACKAGE}</a></body></html>\n'
    )
    if big_bytes:
        with (root / "big.bin").open("wb") as out:
            block = bytes(range(256)) * 4096
            for _ in range(big_bytes // len(block)):
                out.write(block)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Threading(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # (clients the tests reset on purpose)


@dataclass(frozen=True)
class World:
    root: Path
    http_port: int
    https_port: int
    echo_port: int  # a loopback service nobody maps
    ca_pem: bytes
    sink_port: int  # accepts, and never reads
    recorder_port: int  # answers every request on a connection, and notes it in ``seen``
    seen: list[tuple[str, str]]  # (request line, Host) of each request the recorder read


def _serve_http(
    root: Path, context: ssl.SSLContext | None, port: int = 0
) -> tuple[_Threading, int]:
    handler = lambda *args: _Quiet(*args, directory=str(root))  # noqa: E731
    server = _Threading(("127.0.0.1", port), handler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def _serve_echo() -> tuple[socket.socket, int]:
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"the secret loopback service\n")

    threading.Thread(target=serve, daemon=True).start()
    return listener, listener.getsockname()[1]


def _serve_sink() -> tuple[socket.socket, int]:
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=serve, daemon=True).start()
    return listener, listener.getsockname()[1]


def _serve_recorder(seen: list[tuple[str, str]]) -> tuple[socket.socket, int]:
    """A keep-alive server that answers each request it reads (and any it reads after it)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def one(conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            while True:
                line = reader.readline(65536)
                if not line:
                    return
                host = ""
                while (header := reader.readline(65536)) not in (b"\r\n", b"\n", b""):
                    name, _, value = header.decode(errors="replace").partition(":")
                    if name.strip().lower() == "host":
                        host = value.strip()
                seen.append((line.decode(errors="replace").strip(), host))
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nrecorded\n")

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=one, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return listener, listener.getsockname()[1]


@contextmanager
def running_world(root: Path, big_bytes: int = 0) -> Iterator[World]:
    fill_mirror(root, big_bytes)
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(MIRROR).configure_cert(context)
    plain, http_port = _serve_http(root, None)
    secure, https_port = _serve_http(root, context)
    echo, echo_port = _serve_echo()
    sink, sink_port = _serve_sink()
    seen: list[tuple[str, str]] = []
    recorder, recorder_port = _serve_recorder(seen)
    try:
        yield World(
            root,
            http_port,
            https_port,
            echo_port,
            ca.cert_pem.bytes(),
            sink_port,
            recorder_port,
            seen,
        )
    finally:
        for server in (plain, secure):
            server.shutdown()
            server.server_close()
        for listening in (echo, sink, recorder):
            listening.close()


@contextmanager
def serving_mirror(root: Path, port: int) -> Iterator[int]:
    """The mirror's files and index over HTTP on 127.0.0.1:``port`` alone (0: any free
    port); the port."""
    fill_mirror(root)
    server, port = _serve_http(root, None, port)
    try:
        yield port
    finally:
        server.shutdown()
        server.server_close()
