"""How the server talks to a session's shell: pure functions, no I/O.

The shell reads its script from a pipe. bash is started as ``bash /dev/fd/0 fd``: it reads the
script through an fd of its own (255), which it closes in every child, so nothing a command
leaves behind (a background subshell, a job) holds the script, or can read a later command
line and the token in it. Its stdin becomes ``/dev/null`` for good. Any other shell is started
as ``sh -s stdin`` and reads the script on its stdin, which each command gets replaced by
``/dev/null``: a background subshell keeps the shell's saved copy, so only bash sessions are
closed to what commands leave behind (see docs/architecture.md, "Sessions").

The server first sends :data:`DRIVER`, then one :func:`command_line` per command. The driver
``eval``s the command in the shell itself, so ``cd``, ``export``, functions and background jobs
persist. When the command is done it writes ``<token> <status>\\n`` to the shell's stdout and
``<token>\\n`` to its stderr, through copies of both taken at start (fds 8 and 9), so a command
that redirects its own output (``exec >file``) cannot hide its end. The token is random per
command, printed from two halves (not even ``set -x`` shows it whole before it ends the
output), and not handed to the command.

Stopping a command (bash reading through its own fd only): the server writes :func:`stop_line`
to the shell's script pipe, freezes the session, kills what the command started, sends the
shell SIGINT and thaws it. The driver's INT trap (armed again before each command) reads that
line, and only when it names the running command does it make bash skip every command left
(a DEBUG trap that returns from each function up to the driver's), so the rest of the command
line never runs and the shell, with its state, goes on; the marker then says ``<status>
stopped``. A SIGINT from inside the sandbox finds no such line and changes nothing. A shell
that cannot be stopped so (any other, or a command that took the INT trap for itself) does
not report ``stopped``, and the session is closed.

Everything the command wrote comes before its marker on each stream; :class:`MarkerScanner`
splits a stream at the marker without ever altering or trimming what came before it.
``command eval`` keeps a syntax error from ending a POSIX sh; ``exit N`` ends the shell.
"""

from __future__ import annotations

import secrets

# How the shell reads its script (its first argument): "fd" through a fd of bash's own,
# "stdin" on its stdin (any POSIX sh).
FROM_FD = "fd"
FROM_STDIN = "stdin"
STOPPED = "stopped"

DRIVER = b"""__af_mode=$1; set --
if [ "$__af_mode" = fd ]; then exec 0</dev/null; fi
__af_end() {
  command printf '%s%s %d%s\\n' "$1" "$2" "$3" "$4" >&8
  command printf '%s%s\\n' "$1" "$2" >&9
}
__af_cmd() { __af_c=$1; shift; command eval "$__af_c"; }
__af_stopreq() { :; }
if [ -n "${BASH_VERSION-}" ] && [ "$__af_mode" = fd ]; then eval '
__af_int() {
  [ -n "$__af_busy" ] || return 0
  read -r -t 0 -u 255 || return 0
  read -r -u 255 __af_l || return 0
  [ "$__af_l" = "__af_stopreq $__af_busy" ] || return 0
  __af_stop=1; set -T; shopt -s extdebug; trap "__af_dbg || return 2" DEBUG
}
__af_dbg() {
  [ -z "$__af_stop" ] && return 0
  case ${#FUNCNAME[@]}:${FUNCNAME[1]-}:${FUNCNAME[2]-} in
    1:*|2:*|3:__af_run:*|4:__af_end:__af_run|4:__af_calm:__af_run) return 0;;
  esac
  return 1
}
__af_calm() { trap - DEBUG; set +T; shopt -u extdebug; __af_stop=; }
__af_arm() { trap __af_int INT; }'
else
__af_calm() { :; }
__af_arm() { :; }
fi
__af_run() {
  if [ -n "${__af_stop-}" ]; then __af_calm; fi
  __af_arm
  __af_busy=$1$2
  if [ "$__af_mode" = fd ]; then __af_cmd "$3" 8>&- 9>&-
  else __af_cmd "$3" </dev/null 8>&- 9>&-; fi
  __af_status=$?
  __af_busy=
  if [ -n "${__af_stop-}" ]; then __af_calm; __af_end "$1" "$2" 130 " stopped"
  else __af_end "$1" "$2" "$__af_status" ""; fi
}
exec 8>&1 9>&2
"""


def new_token() -> tuple[str, str]:
    """The two halves of a fresh marker token."""
    return "__af_" + secrets.token_hex(8), secrets.token_hex(8)


def quote(text: str) -> str:
    """``text`` as one single-quoted shell word (any text but NUL)."""
    return "'" + text.replace("'", "'\\''") + "'"


def stop_line(token: tuple[str, str]) -> bytes:
    """What the server sends before it interrupts the shell to stop the command of ``token``:
    the driver's INT trap stops a command only on this line, so a SIGINT from a process of the
    sandbox (the same uid may signal the shell) stops nothing. A shell that is not in a command
    any more reads it as a command that does nothing."""
    return f"__af_stopreq {token[0]}{token[1]}\n".encode()


def command_line(token: tuple[str, str], command: str) -> bytes:
    """The line that runs ``command`` through the driver."""
    return f"__af_run {token[0]} {token[1]} {quote(command)}\n".encode()


class MarkerScanner:
    """Splits one output stream of a command at its end marker.

    ``feed`` returns the bytes that are surely the command's output; bytes that might be
    the start of the marker are held back until the next feed decides. After the marker,
    :meth:`done` is true and :attr:`status` holds the number printed after the token (on
    stdout; None on stderr); whatever followed the marker is :attr:`rest`.
    """

    def __init__(self, token: tuple[str, str], *, with_status: bool) -> None:
        self._token = (token[0] + token[1]).encode()
        self._with_status = with_status
        self._buffer = bytearray()
        self._done = False
        self.status: int | None = None
        self.stopped = False  # the driver stopped the command, the rest of its line too
        self.rest = b""

    def done(self) -> bool:
        """Whether the marker was found. (A call: ``feed`` changes it, and mypy would keep an
        attribute narrowed by a test made before the feed.)"""
        return self._done

    def feed(self, data: bytes) -> bytes:
        if self._done:
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
        tail = bytes(self._buffer[len(self._token) : end]).split()
        if self._with_status and tail:
            try:
                self.status = int(tail[0])
            except ValueError:
                self.status = None
            self.stopped = tail[1:] == [STOPPED.encode()]
        self.rest = bytes(self._buffer[end + 1 :])
        self._buffer.clear()
        self._done = True
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
