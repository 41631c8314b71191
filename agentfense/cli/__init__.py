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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import anyio

from .. import __version__
from ..errors import SandboxError
from ..presets import list_presets
from ..types import RuntimeType
from . import _admin, _run, _serve
from ._endpoint import ENDPOINT_VARIABLE
from ._exits import EXIT_FAILED, EXIT_INTERRUPTED
from ._parse import (
    parse_count,
    parse_cpus,
    parse_env,
    parse_rule,
    parse_seconds,
    parse_size,
)

COMMANDS = ("run", "exec", "ls", "rm", "serve", "doctor")
_TAKES_COMMAND = ("run", "exec")


class UsageError(Exception):
    """The command line is not one agentfense understands."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _typed(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` for argparse: its ``ValueError`` sentence becomes the usage error."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__.removeprefix("parse_")
    return convert


def _subcommand(
    commands: Any, name: str, summary: str, epilog: str, func: Callable[..., Any]
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    parser.set_defaults(func=func, prog=parser.prog)
    return parser


def _endpoint_flag(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--endpoint",
        metavar="ADDRESS",
        help=f"the server: host:port or unix:/path (default: ${ENDPOINT_VARIABLE}, else {default})",
    )


def _command_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-e",
        "--env",
        action="append",
        type=_typed(parse_env),
        metavar="NAME=VALUE",
        help="set a variable for the command (repeatable)",
    )
    parser.add_argument(
        "-w", "--workdir", metavar="DIR", help="the command's directory (default /workspace)"
    )
    parser.add_argument(
        "--timeout",
        type=_typed(parse_seconds),
        metavar="SECONDS",
        help="kill the command after this long and exit 124 (default: the server's, 300 s)",
    )


_RUN_EPILOG = """\
The command comes after `--`. One argument is a shell command line (pipes, &&, globs);
several are a program and its arguments, passed exactly as given.

examples:
  agentfense run ./proj -- pytest -q
  agentfense run ./proj -- 'ls src | wc -l'
  agentfense run --preset agent-safe --rule '**/*.log=none' ./proj -- python3 main.py
  agentfense run --memory 512m --cpus 0.5 --pids 256 --timeout 60 ./proj -- make test
  agentfense run -e CI=1 -w /workspace/src ./proj -- ./test.sh
  agentfense run --runtime docker --image python:3.11-slim ./proj -- python3 -V
"""

_EXEC_EPILOG = """\
examples:
  agentfense exec sb_0123456789abcdef -- cat /workspace/output/report.txt
  agentfense exec --timeout 30 -e CI=1 sb_0123456789abcdef -- 'pytest -x && echo ok'
"""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="agentfense",
        description="Least-privilege sandboxes for AI agents.",
        epilog=(
            "exit codes: the command's own; 124 timeout; 125 agentfense failed; 126/127 not "
            "executable/not found; 130 Ctrl-C.\nexamples:\n"
            "  agentfense run ./proj -- pytest -q\n  agentfense serve\n"
            "  agentfense ls\n  agentfense --version"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"agentfense {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks and debug logs on errors"
    )
    commands = parser.add_subparsers(dest="action", metavar="COMMAND", required=True)

    run = _subcommand(
        commands,
        "run",
        "run one command in a throw-away sandbox of a local project",
        _RUN_EPILOG,
        _run.run,
    )
    run.add_argument("path", help="the project directory, uploaded as a new codebase")
    run.add_argument(
        "--preset",
        default="read-only",
        help=f"permission preset: {', '.join(list_presets())} (default read-only)",
    )
    run.add_argument(
        "--rule",
        action="append",
        type=_typed(parse_rule),
        metavar="PATTERN=LEVEL",
        help="a permission rule after the preset's, e.g. '**/*.log=none' (repeatable; "
        "levels none, view, read, write)",
    )
    _command_flags(run)
    run.add_argument(
        "-m", "--memory", type=_typed(parse_size), metavar="SIZE", help="memory limit: 512m, 1g"
    )
    run.add_argument(
        "--cpus", type=_typed(parse_cpus), metavar="N", help="CPU limit in CPUs: 0.5, 2"
    )
    run.add_argument("--pids", type=_typed(parse_count), metavar="N", help="process limit")
    run.add_argument(
        "--runtime",
        choices=[r.value for r in RuntimeType],
        default=RuntimeType.BWRAP.value,
        help="how the sandbox isolates (default bwrap)",
    )
    run.add_argument("--image", help="the Docker image (with --runtime docker)")
    _endpoint_flag(run, "a server embedded in this command")

    exec_ = _subcommand(
        commands, "exec", "run a command in a running sandbox", _EXEC_EPILOG, _run.exec_
    )
    exec_.add_argument("sandbox_id", metavar="ID", help="the sandbox (sb_…)")
    _command_flags(exec_)
    _endpoint_flag(exec_, "localhost:9000")

    ls = _subcommand(
        commands,
        "ls",
        "list the sandboxes and codebases of a server",
        "examples:\n  agentfense ls\n  agentfense rm $(agentfense ls -q)",
        _admin.ls,
    )
    ls.add_argument("-q", "--quiet", action="store_true", help="only the ids, one a line")
    _endpoint_flag(ls, "localhost:9000")

    rm = _subcommand(
        commands,
        "rm",
        "destroy sandboxes and delete codebases",
        "examples:\n  agentfense rm sb_0123456789abcdef\n  agentfense rm cb_0123456789abcdef",
        _admin.rm,
    )
    rm.add_argument("ids", nargs="+", metavar="ID", help="a sandbox (sb_…) or codebase (cb_…)")
    _endpoint_flag(rm, "localhost:9000")

    serve = _subcommand(
        commands,
        "serve",
        "run the AgentFense server in the foreground",
        "examples:\n  agentfense serve\n  agentfense serve --listen unix:/run/agentfense.sock",
        _serve.serve,
    )
    serve.add_argument("--config", type=Path, help="TOML configuration file")
    serve.add_argument("--listen", help="host:port or unix:/path (default localhost:9000)")
    serve.add_argument("--state-dir", type=Path, help="where codebases and state live")
    serve.add_argument("--max-output-bytes", type=int, help="cap on captured output per stream")
    serve.add_argument("--default-timeout", type=float, help="exec timeout when none is given")
    serve.add_argument("--log-level", help="debug, info, warning, error")

    _subcommand(
        commands,
        "doctor",
        "check what this machine needs to run the server",
        "exits 1 when a required check fails\nexample:\n  agentfense doctor",
        _serve.doctor,
    )
    return parser


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
    if args.action in _TAKES_COMMAND:
        if not command:
            raise UsageError(f"give the command after --, e.g. `{args.prog} ... -- pytest -q`")
        args.command = command
    elif command is not None:
        raise UsageError(f"`{args.prog}` takes no command after --")
    if args.action in ("serve", "doctor"):  # (serve sets up its own logging)
        return int(args.func(args))
    logging.basicConfig(level=logging.WARNING, format=f"{args.prog}: %(message)s")
    if args.debug:  # ours only: asyncio's and docker's would drown them
        logging.getLogger("agentfense").setLevel(logging.DEBUG)
    return int(anyio.run(args.func, args))


def _prog(words: Sequence[str]) -> str:
    """``agentfense <command>`` when the words name one, for the error line."""
    name = next((w for w in words if not w.startswith("-")), None)
    return f"agentfense {name}" if name in COMMANDS else "agentfense"


def main(argv: Sequence[str] | None = None) -> int:
    """The ``agentfense`` command; returns its exit code."""
    words = list(sys.argv[1:] if argv is None else argv)
    ours, _ = _split_command(words)
    debug = "--debug" in ours
    parser = build_parser()
    try:
        return _dispatch(words, parser)
    except KeyboardInterrupt:  # before the CLI's own handler was in place
        print("agentfense: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as raised:
        exc = _leaf(raised)
        if debug:
            traceback.print_exception(raised)
        prog = _prog(ours)
        print(f"{prog}: {_sentence(exc)}", file=sys.stderr)
        return EXIT_FAILED
