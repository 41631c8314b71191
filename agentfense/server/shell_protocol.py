"""How the server talks to a session's shell: pure functions, no I/O.

The shell (bash or any POSIX sh) reads its script from its stdin (``-s``). The server first
sends :data:`DRIVER`, then one :func:`command_line` per command. The driver ``eval``s the
command in the shell itself, so ``cd``, ``export``, functions and background jobs persist,
with stdin from ``/dev/null`` (the shell's stdin is this protocol). When the command is done
it writes ``<token> <status>\\n`` to the shell's stdout and ``<token>\\n`` to its stderr, through
copies of both taken at start (fds 8 and 9), so a command that redirects its own output
(``exec >file``) cannot hide its end. The token is random per command and printed from two
halves, so that not even ``set -x`` shows it whole before it ends the output.

Everything the command wrote comes before its marker on each stream; :class:`MarkerScanner`
splits a stream at the marker without ever altering or trimming what came before it.
``command eval`` keeps a syntax error from ending a POSIX sh; ``exit N`` ends the shell.
"""

from __future__ import annotations

import secrets

DRIVER = b"""__af_run() {
  command eval "$3" </dev/null 8>&- 9>&-
  command printf '%s%s %d\\n' "$1" "$2" "$?" >&8
  command printf '%s%s\\n' "$1" "$2" >&9
}
exec 8>&1 9>&2
"""


def new_token() -> tuple[str, str]:
    """The two halves of a fresh marker token."""
    return "__af_" + secrets.token_hex(8), secrets.token_hex(8)


def quote(text: str) -> str:
    """``text`` as one single-quoted shell word (any text but NUL)."""
    return "'" + text.replace("'", "'\\''") + "'"


def command_line(token: tuple[str, str], command: str) -> bytes:
    """The line that runs ``command`` through the driver."""
    return f"__af_run {token[0]} {token[1]} {quote(command)}\n".encode()


class MarkerScanner:
    """Splits one output stream of a command at its end marker.

    ``feed`` returns the bytes that are surely the command's output; bytes that might be
    the start of the marker are held back until the next feed decides. After the marker,
    :attr:`done` is true and :attr:`status` holds the number printed after the token (on
    stdout; None on stderr); whatever followed the marker is :attr:`rest`.
    """

    def __init__(self, token: tuple[str, str], *, with_status: bool) -> None:
        self._token = (token[0] + token[1]).encode()
        self._with_status = with_status
        self._buffer = bytearray()
        self.done = False
        self.status: int | None = None
        self.rest = b""

    def feed(self, data: bytes) -> bytes:
        if self.done:
            self.rest += data
            return b""
        self._buffer += data
        at = self._buffer.find(self._token)
        if at < 0:
            keep = _partial_suffix(self._buffer, self._token)
            cut = len(self._buffer) - keep
            output = bytes(self._buffer[:cut])
            del self._buffer[:cut]
            return output
        output = bytes(self._buffer[:at])
        del self._buffer[:at]
        end = self._buffer.find(b"\n", len(self._token))
        if end < 0:
            return output  # the marker's line is not whole yet
        tail = bytes(self._buffer[len(self._token) : end]).strip()
        if self._with_status:
            try:
                self.status = int(tail)
            except ValueError:
                self.status = None
        self.rest = bytes(self._buffer[end + 1 :])
        self._buffer.clear()
        self.done = True
        return output

    def flush(self) -> bytes:
        """What was held back, when the stream ended without a marker."""
        output = bytes(self._buffer)
        self._buffer.clear()
        return output


def _partial_suffix(buffer: bytearray, token: bytes) -> int:
    """The length of the longest end of ``buffer`` that is a start of ``token``."""
    for size in range(min(len(token) - 1, len(buffer)), 0, -1):
        if buffer.endswith(token[:size]):
            return size
    return 0
