"""What the proxy reads of a sandbox's connection before it decides (sans I/O: bytes in,
a decision's inputs out): an HTTP/1 request head, a TLS ClientHello's server name, a DNS
query's name. Each parser is bounded by the bytes it is given and raises
``MessageError`` with a sentence for the log, never anything else."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_HEAD = 16 * 1024  # bytes of a request's line and headers
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # (a tab is allowed in a value)
_UNPRINTABLE = re.compile(r"[^!-~]|[.]")  # (in a DNS label, as the log shows it)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Records a ClientHello may span: each piece of a tunnel's first bytes is read from the start
# again, and 3,000 records of 5 bytes cost 2.3 s of the server's loop.
MAX_HELLO_RECORDS = 64
MAX_HELLO = 16 * 1024  # bytes of a ClientHello looked at
# Hop-by-hop headers (RFC 9110, 7.6.1) and the proxy's own: not passed upstream.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"upgrade",
    }
)


class MessageError(Exception):
    """What the sandbox sent is not what the proxy takes (the message says what)."""


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A request's head: ``CONNECT host:port``, or a plain HTTP request to ``host:port``
    with ``upstream`` the head to send there (origin-form, ``Connection: close``)."""

    method: str
    host: str
    port: int
    upstream: bytes
    body: int  # bytes of body that follow the head (sent on, and nothing after them)


def head_end(buffer: bytes | bytearray) -> int:
    """Where the head in ``buffer`` ends (after its blank line), or -1."""
    end = buffer.find(b"\r\n\r\n")
    return -1 if end < 0 else end + 4


def parse_head(head: bytes) -> RequestHead:
    """A whole request head (``head_end`` found its end). Strict where HTTP parsers differ
    (a bare LF, a control character, an odd version, Transfer-Encoding): what the proxy
    reads is what the host it allows will read."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise MessageError("the request is not HTTP (bytes beyond ASCII in its head)") from None
    lines = text[:-4].split("\r\n")
    if any(_CONTROL.search(line) for line in lines):
        raise MessageError("the request's head holds a control character (a bare CR or LF?)")
    parts = lines[0].split(" ")
    if (
        len(parts) != 3
        or parts[2] not in ("HTTP/1.0", "HTTP/1.1")
        or not _TOKEN.fullmatch(parts[0])
    ):
        raise MessageError("the request is not HTTP/1 (no 'METHOD target HTTP/1.x' line)")
    method, target, version = parts
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            raise MessageError("a header of the request is malformed")
        headers.append((name, value.strip(" \t")))
    named = [value for name, value in headers if name.lower() == "host"]
    if len(named) > 1:
        raise MessageError("the request has more than one Host header")
    if method == "CONNECT":
        host, port = _authority(target, default_port=None)
        return RequestHead(method, host, port, b"", 0)
    body = _body_length(headers)
    if target.startswith("/"):  # (origin-form: the Host header says where)
        if not named:
            raise MessageError("the request names no host (no absolute URL, no Host header)")
        host, port = _authority(named[0], default_port=80)
        path = target
    else:
        try:
            url = urlsplit(target)
            url.port  # noqa: B018  (raises for a port that is none)
        except ValueError:
            raise MessageError(f"{target[:80]!r} is not a URL") from None
        if url.scheme.lower() != "http" or not url.netloc:
            raise MessageError(
                "only http:// URLs are proxied as they are; https goes through CONNECT"
            )
        if "@" in url.netloc:
            raise MessageError("the URL carries credentials")
        host, port = _authority(url.netloc, default_port=80)
        if named and _authority(named[0], default_port=80) != (host, port):
            raise MessageError("the Host header names another host than the URL")
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        if not named:
            headers.append(("Host", url.netloc))
    kept = [
        f"{name}: {value}" for name, value in headers if name.lower().encode() not in _HOP_BY_HOP
    ]
    upstream = "\r\n".join([f"{method} {path} {version}", *kept, "Connection: close", "", ""])
    return RequestHead(method, host, port, upstream.encode("ascii"), body)


def _body_length(headers: list[tuple[str, str]]) -> int:
    """The bytes of the request's body: its Content-Length (one, digits), 0 without."""
    if any(name.lower() == "transfer-encoding" for name, _ in headers):
        raise MessageError(
            "a request body in chunks (Transfer-Encoding) is not proxied: give its Content-Length"
        )
    lengths = {value for name, value in headers if name.lower() == "content-length"}
    if not lengths:
        return 0
    if len(lengths) > 1 or not next(iter(lengths)).isdigit() or len(next(iter(lengths))) > 18:
        raise MessageError("the request's Content-Length is malformed")
    return int(next(iter(lengths)))


def _authority(text: str, *, default_port: int | None) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) of a CONNECT target or a Host header."""
    if text.startswith("["):
        close = text.find("]")
        host, rest = text[1:close], text[close + 1 :]
        if close < 0 or (rest and not rest.startswith(":")):
            raise MessageError(f"{text[:80]!r} is not host:port")
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if not port_text:
        if default_port is None:
            raise MessageError(f"{text[:80]!r} names no port")
        return host.lower().rstrip("."), default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise MessageError(f"{text[:80]!r} has no port 1-65535")
    return host.lower().rstrip("."), int(port_text)


def tls_begun(first: bytes | bytearray) -> bool:
    """Whether a connection's first bytes are (or may yet be) a TLS handshake record's."""
    return first[:1] == b"\x16" and first[1:2] in (b"", b"\x03")


def hello_missing(records: bytes | bytearray) -> int:
    """How many bytes of the ClientHello's handshake message ``records`` still lack (0 when
    it is whole, or past :data:`MAX_HELLO_RECORDS`: nothing more is waited for; at least 1
    while even its length is unknown), over as many handshake records as it spans."""
    payload = 0
    length: int | None = None
    at = 0
    head = bytearray()
    for _ in range(MAX_HELLO_RECORDS + 1):
        if at + 5 > len(records) or records[at] != 0x16:
            break
        size = int.from_bytes(records[at + 3 : at + 5], "big")
        piece = records[at + 5 : at + 5 + size]
        if len(head) < 4:
            head += piece[: 4 - len(head)]
        payload += len(piece)
        at += 5 + size
    else:
        return 0  # (a hello in that many records is refused whole: ``server_name``)
    if len(head) >= 4:
        length = 4 + int.from_bytes(head[1:4], "big")
    return max(length - payload, 0) if length is not None else 1


def server_name(records: bytes) -> str | None:
    """The host name a whole ClientHello asks for (its SNI), None when it names none; the
    records' payloads are joined (a hello may span them). A hello cut short is refused,
    never read as one without extensions: the rest, with any name, would follow."""
    payload = bytearray()
    at = 0
    for _ in range(MAX_HELLO_RECORDS + 1):
        if at + 5 > len(records) or len(payload) >= MAX_HELLO or records[at] != 0x16:
            break  # (what follows the hello: a change-cipher-spec, early data)
        length = int.from_bytes(records[at + 3 : at + 5], "big")
        payload += records[at + 5 : at + 5 + length]
        at += 5 + length
    else:
        raise MessageError(f"the TLS ClientHello spans more than {MAX_HELLO_RECORDS} records")
    if len(payload) < 4 or 4 + int.from_bytes(payload[1:4], "big") > len(payload):
        raise MessageError("the TLS ClientHello is cut short")
    reader = _Reader(bytes(payload[: 4 + int.from_bytes(payload[1:4], "big")]))
    if reader.byte() != 1:
        raise MessageError("the TLS handshake does not begin with a ClientHello")
    reader.take(3)  # (its length)
    reader.take(2 + 32)  # version, random
    reader.take(reader.byte())  # session id
    reader.take(reader.short())  # cipher suites
    reader.take(reader.byte())  # compression methods
    if reader.done:
        return None  # (no extensions)
    extensions = _Reader(reader.take(reader.short()))
    while not extensions.done:
        kind, body = extensions.short(), extensions.take(extensions.short())
        if kind != 0:  # server_name
            continue
        names = _Reader(body)
        listed = _Reader(names.take(names.short()))
        while not listed.done:
            name_type, name = listed.byte(), listed.take(listed.short())
            if name_type == 0:
                try:
                    return name.decode("ascii").lower().rstrip(".")
                except UnicodeDecodeError:
                    raise MessageError("the TLS server name is not ASCII") from None
        return None
    return None


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    @property
    def done(self) -> bool:
        return self._at >= len(self._data)

    def take(self, count: int) -> bytes:
        if self._at + count > len(self._data):
            raise MessageError("the TLS ClientHello is cut short or malformed")
        piece = self._data[self._at : self._at + count]
        self._at += count
        return piece

    def byte(self) -> int:
        return self.take(1)[0]

    def short(self) -> int:
        return int.from_bytes(self.take(2), "big")


def dns_question(datagram: bytes) -> str:
    """The name a DNS query asks about (its first question), for the log."""
    reader = _Reader(datagram)
    if len(datagram) < 12 or int.from_bytes(datagram[4:6], "big") < 1:
        raise MessageError("a datagram that is no DNS query")
    reader.take(12)
    labels: list[str] = []
    while (length := reader.byte()) != 0:
        if length > 63 or len(labels) > 127:
            raise MessageError("a DNS name that is malformed")
        label = reader.take(length).decode("ascii", errors="replace")
        labels.append(_UNPRINTABLE.sub("?", label))
    return ".".join(labels).lower()


def dns_refusal(datagram: bytes) -> bytes | None:
    """The answer REFUSED to a DNS query (its id and question kept), None for what is no
    query: the lookup fails at once instead of waiting out its timeout."""
    if len(datagram) < 12 or datagram[2] & 0x80:
        return None
    end = 12
    while end < len(datagram) and datagram[end] != 0:
        end += datagram[end] + 1
    question_end = end + 5
    if question_end > len(datagram):
        return None
    flags = bytes([0x80 | (datagram[2] & 0x79), 0x05])  # QR, opcode and RD kept; REFUSED
    counts = b"\x00\x01\x00\x00\x00\x00\x00\x00"
    return datagram[:2] + flags + counts + datagram[12:question_end]
