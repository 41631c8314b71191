"""The ``agentfense`` command line: its commands, flags, help texts and examples."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from .. import __version__
from ..presets import list_presets
from ..types import RuntimeType
from . import _admin, _presets, _run, _serve, _tokens
from ._endpoint import ENDPOINT_VARIABLE
from ._values import (
    parse_count,
    parse_cpus,
    parse_env,
    parse_rule,
    parse_seconds,
    parse_size,
)

COMMANDS = ("run", "exec", "ls", "rm", "presets", "serve", "doctor", "token")
TAKES_COMMAND = ("run", "exec")


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
    parser.add_argument(
        "--api-key",
        metavar="TOKEN",
        help="the API token (default: $AGENTFENSE_API_KEY, else the one a server run by "
        "this user left for the endpoint); prefer the variable: others can read flags",
    )
    tls = parser.add_argument_group("TLS (a host:port endpoint)")
    tls.add_argument(
        "--tls", action="store_true", help="connect over TLS, trusting the system's CAs"
    )
    tls.add_argument(
        "--tls-ca",
        metavar="PEM",
        help="connect over TLS, trusting these CAs (default: $AGENTFENSE_TLS_CA)",
    )
    tls.add_argument(
        "--tls-cert",
        metavar="PEM",
        help="the client certificate, for mutual TLS (default: $AGENTFENSE_TLS_CLIENT_CERT)",
    )
    tls.add_argument(
        "--tls-key",
        metavar="PEM",
        help="its private key (default: in --tls-cert, or $AGENTFENSE_TLS_CLIENT_KEY)",
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
  agentfense run --network pypi.org --network '*.pythonhosted.org' ./proj -- pip download x
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
        "levels none, view, read, write); one for an exact path outranks the preset's rules",
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
    run.add_argument(
        "--network",
        action="append",
        metavar="HOST",
        help="a host the sandbox may reach, through the server's proxy: pypi.org, "
        "'*.pythonhosted.org', github.com:443 (repeatable; default: no network)",
    )
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

    shown = _subcommand(
        commands,
        "presets",
        "show the permission presets, or one preset's rules and priorities",
        "examples:\n  agentfense presets\n  agentfense presets agent-safe",
        _presets.presets,
    )
    shown.add_argument("name", nargs="?", metavar="NAME", help="the preset to show")

    serve = _subcommand(
        commands,
        "serve",
        "run the AgentFense server in the foreground",
        "examples:\n  agentfense serve\n  agentfense serve --listen unix:/run/agentfense.sock\n"
        "  agentfense serve --audit-log /var/log/agentfense/audit.jsonl\n"
        "  agentfense serve --auth none --listen unix:/tmp/dev.sock",
        _serve.serve,
    )
    serve.add_argument("--config", type=Path, help="TOML configuration file")
    serve.add_argument("--listen", help="host:port or unix:/path (default localhost:9000)")
    serve.add_argument("--state-dir", type=Path, help="where codebases and state live")
    serve.add_argument("--max-output-bytes", type=int, help="cap on captured output per stream")
    serve.add_argument("--default-timeout", type=float, help="exec timeout when none is given")
    serve.add_argument("--log-level", help="debug, info, warning, error")
    serve.add_argument(
        "--metrics-listen", help="host:port for Prometheus (GET /metrics); off by default"
    )
    serve.add_argument("--tls-cert", metavar="PEM", help="the server's TLS certificate (chain)")
    serve.add_argument("--tls-key", metavar="PEM", help="its private key (default: in --tls-cert)")
    serve.add_argument(
        "--tls-client-ca",
        metavar="PEM",
        help="mutual TLS: require client certificates signed by these CAs",
    )
    serve.add_argument(
        "--insecure-listen",
        action="store_true",
        default=None,
        help="listen on a non-loopback address without TLS, or with auth none, all the same "
        "(logged as a WARNING)",
    )
    serve.add_argument(
        "--auth",
        choices=("token", "none"),
        help="token: every call needs an API token (the default); none: anyone who reaches "
        "the listen address gets in (development only; logged as a WARNING)",
    )
    serve.add_argument(
        "--audit-log",
        metavar="PATH",
        help="append one JSON line per API call to this file (- for standard output)",
    )

    token = _subcommand(
        commands,
        "token",
        "create, list and revoke the API tokens of a server's state directory",
        "examples:\n  agentfense token create --tenant alice\n  agentfense token list\n"
        "  agentfense token revoke 0123abcd",
        _tokens.token,
    )
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--config", type=Path, help="the server's TOML configuration file")
    where.add_argument(
        "--state-dir", type=Path, help="the server's state directory (default: the server's)"
    )
    verbs = token.add_subparsers(dest="verb", metavar="VERB", required=True)
    create = verbs.add_parser(
        "create", parents=[where], help="make a token (printed once) for a tenant"
    )
    create.add_argument("--tenant", required=True, help="the tenant the token acts as")
    verbs.add_parser(
        "list", parents=[where], help="the tokens: ids, tenants, creation times (never a token)"
    )
    revoke = verbs.add_parser(
        "revoke", parents=[where], help="revoke a token (from its next call on)"
    )
    revoke.add_argument("token_id", metavar="ID", help="the token's id (see list)")

    _subcommand(
        commands,
        "doctor",
        "check what this machine needs to run the server",
        "exits 1 when a required check fails\nexample:\n  agentfense doctor",
        _serve.doctor,
    )
    return parser
