"""The ``agentfense`` command: ``serve``, ``run`` and ``doctor``."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import anyio

from .errors import SandboxError


def _serve(args: argparse.Namespace) -> int:
    from .server.app import serve
    from .server.config import load_config

    overrides = {
        "listen": args.listen,
        "state_dir": args.state_dir,
        "max_output_bytes": args.max_output_bytes,
        "default_timeout": args.default_timeout,
        "log_level": args.log_level,
    }
    try:
        config = load_config(args.config, overrides=overrides)
        logging.basicConfig(
            level=config.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        anyio.run(serve, config)
    except SandboxError as exc:  # (a configuration the server cannot start with)
        print(f"agentfense serve: {exc.message}", file=sys.stderr)
        return 1
    return 0


@contextlib.asynccontextmanager
async def _endpoint(requested: str | None) -> AsyncIterator[str]:
    """The server to use: the one asked for, or an embedded one for this run only."""
    if requested:
        yield requested
        return
    from .server.app import open_server
    from .server.config import ServerConfig

    with tempfile.TemporaryDirectory(prefix="agentfense-run-") as state:
        config = ServerConfig(listen=f"unix:{state}/server.sock", state_dir=Path(state))
        async with open_server(config) as address:
            yield address


async def _run_async(args: argparse.Namespace) -> int:
    from .client.sandbox import AsyncSandbox

    command = " ".join(args.command)
    async with (
        _endpoint(args.endpoint) as endpoint,
        await AsyncSandbox.from_local(args.path, preset=args.preset, endpoint=endpoint) as sandbox,
    ):
        async with sandbox.exec_stream(command, timeout=args.timeout) as stream:
            async for chunk in stream:
                out = sys.stdout if chunk.stream.value == "stdout" else sys.stderr
                out.buffer.write(chunk.data)
                out.flush()
        return stream.exit_code if stream.exit_code is not None else 1


def _run(args: argparse.Namespace) -> int:
    if not args.command:
        print("agentfense run: give a command after --", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="agentfense: %(message)s")
    try:
        return anyio.run(_run_async, args)
    except SandboxError as exc:
        print(f"agentfense run: {exc}", file=sys.stderr)
        return 1


def _doctor(args: argparse.Namespace) -> int:
    from .server.doctor import run_checks

    failed = False
    for check in run_checks():
        mark = "ok  " if check.ok else ("FAIL" if check.required else "warn")
        print(f"[{mark}] {check.name}: {check.detail}")
        if not check.ok:
            print(f"       fix: {check.fix}")
            failed = failed or check.required
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentfense", description=__doc__)
    commands = parser.add_subparsers(dest="action", required=True)

    serve = commands.add_parser("serve", help="run the AgentFense server")
    serve.add_argument("--config", type=Path, help="TOML configuration file")
    serve.add_argument("--listen", help="host:port or unix:/path (default localhost:9000)")
    serve.add_argument("--state-dir", type=Path, help="where codebases and state live")
    serve.add_argument("--max-output-bytes", type=int, help="cap on captured output per stream")
    serve.add_argument("--default-timeout", type=float, help="exec timeout when none is given")
    serve.add_argument("--log-level", help="debug, info, warning, error")
    serve.set_defaults(func=_serve)

    run = commands.add_parser("run", help="run one command in a sandbox of a local project")
    run.add_argument("path", help="the project directory")
    run.add_argument("--preset", default="read-only", help="permission preset (default read-only)")
    run.add_argument("--endpoint", help="a running server (default: start an embedded one)")
    run.add_argument("--timeout", type=float, default=None, help="seconds before the kill")
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    run.set_defaults(func=_run)

    doctor = commands.add_parser("doctor", help="check what this machine needs")
    doctor.set_defaults(func=_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "command", None) and args.command[0] == "--":
        args.command = args.command[1:]
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
