"""The ``agentfense`` command.

Exit codes (documented in docs/cli.md): the command's own code for ``run`` and ``exec``;
124 the command timed out (``--timeout``) and was killed; 125 agentfense itself failed (bad
usage, a bad flag, no server, an unknown sandbox): the command did not run, or what it did is
unknown; 126 and 127 as the shell says them (not executable, not found); 128 + N for a signal,
130 on Ctrl-C, 143 on SIGTERM, 129 on SIGHUP (the sandbox ``run`` made is destroyed first),
141 when our own output is closed (``| head``).
"""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import TextIO

import anyio

from ..errors import SandboxError
from ._exits import EXIT_BROKEN_PIPE, EXIT_FAILED, EXIT_INTERRUPTED
from ._parser import COMMANDS, TAKES_COMMAND, UsageError, build_parser
from ._run import _discard


def _did_you_mean(words: Sequence[str], known: Sequence[str]) -> None:
    """Refuse a mistyped subcommand with the nearest one, before argparse lists them all."""
    name = next((w for w in words if not w.startswith("-")), None)
    if name is None or name in known:
        return
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise UsageError(f"{name!r} is not a command{hint} (commands: {', '.join(known)})")


def _split_command(argv: Sequence[str]) -> tuple[list[str], list[str] | None]:
    """Our arguments, and the command after the first ``--`` (None without one)."""
    words = list(argv)
    if "--" not in words:
        return words, None
    cut = words.index("--")
    return words[:cut], words[cut + 1 :]


def _sentence(exc: BaseException) -> str:
    """The one line that says what went wrong."""
    if isinstance(exc, SandboxError):
        return exc.message
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    if isinstance(exc, UsageError):
        return str(exc)
    return f"unexpected {type(exc).__name__}: {exc} (--debug shows where)"


def _leaf(exc: BaseException) -> BaseException:
    """The one error inside (nested) exception groups of one error each."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _dispatch(argv: Sequence[str], parser: argparse.ArgumentParser) -> int:
    ours, command = _split_command(argv)
    _did_you_mean(ours, COMMANDS)
    args = parser.parse_args(ours)
    if args.action in TAKES_COMMAND:
        if not command:
            raise UsageError(f"give the command after --, e.g. `{args.prog} ... -- pytest -q`")
        args.command = command
    elif command is not None:
        raise UsageError(f"`{args.prog}` takes no command after --")
    if args.action in ("presets", "serve", "doctor", "token"):  # (serve: its own logging)
        return int(args.func(args))
    logging.basicConfig(level=logging.WARNING, format=f"{args.prog}: %(message)s")
    if args.debug:  # ours only: asyncio's and docker's would drown them
        logging.getLogger("agentfense").setLevel(logging.DEBUG)
    return int(anyio.run(args.func, args))


def _prog(words: Sequence[str]) -> str:
    """``agentfense <command>`` when the words name one, for the error line."""
    name = next((w for w in words if not w.startswith("-")), None)
    return f"agentfense {name}" if name in COMMANDS else "agentfense"


def _one_line_warnings(prog: str) -> None:
    """Show the SDK's warnings (a rule the preset outranks) as our errors are: one line."""

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        print(f"{prog}: warning: {message}", file=sys.stderr)

    warnings.showwarning = show


def main(argv: Sequence[str] | None = None) -> int:
    """The ``agentfense`` command; returns its exit code."""
    words = list(sys.argv[1:] if argv is None else argv)
    ours, _ = _split_command(words)
    debug = "--debug" in ours
    if not debug:
        _one_line_warnings(_prog(ours))
    parser = build_parser()
    try:
        return _dispatch(words, parser)
    except KeyboardInterrupt:  # before the CLI's own handler was in place
        print("agentfense: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as raised:
        exc = _leaf(raised)
        if isinstance(exc, BrokenPipeError):  # `agentfense ls | head`: end as a pipe's writer
            _discard(sys.stdout)
            return EXIT_BROKEN_PIPE
        if debug:
            traceback.print_exception(raised)
        prog = _prog(ours)
        print(f"{prog}: {_sentence(exc)}", file=sys.stderr)
        return EXIT_FAILED
