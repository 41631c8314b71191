"""``agentfense run`` (a throw-away sandbox of a local project) and ``agentfense exec`` (a
command in a running sandbox): the command's output streamed, its exit code returned."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from typing import TextIO

from .. import AsyncSandbox, ResourceLimits
from ..errors import CommandTimeoutError, SandboxError
from ..types import OutputStream
from ._endpoint import endpoint_or_default, endpoint_or_embedded, tls_flags
from ._exits import EXIT_BROKEN_PIPE, EXIT_FAILED, EXIT_TIMEOUT
from ._interrupt import Interrupts, run_interruptible


def _discard(out: TextIO) -> None:
    """Point the broken stream at /dev/null: the interpreter's last flush must not fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, out.fileno())
    os.close(devnull)


def command_line(argv: Sequence[str]) -> str:
    """The text for the one ``/bin/sh -c`` the server runs: a single argument is a shell
    command line as written (pipes, ``&&``, globs work); several are an argv, each quoted so
    that the program receives exactly these arguments."""
    return argv[0] if len(argv) == 1 else shlex.join(argv)


def exit_status(code: int) -> int:
    """The command's exit code as ours: 0-255 as it is, a death by signal N (reported as -N)
    as the shell says it (128 + N); anything else no process can have, so it cannot be
    passed on (256 would read as 0, success): agentfense's own failure, 125."""
    if 0 <= code <= 255:
        return code
    if -64 <= code < 0:
        return 128 - code
    return EXIT_FAILED


async def _stream(sandbox: AsyncSandbox, args: argparse.Namespace) -> int:
    env = dict(args.env) if args.env else None
    stream = sandbox.exec_stream(
        command_line(args.command), env=env, workdir=args.workdir, timeout=args.timeout
    )
    try:
        async with stream:
            async for chunk in stream:
                out = sys.stdout if chunk.stream is OutputStream.STDOUT else sys.stderr
                try:
                    out.buffer.write(chunk.data)
                    out.flush()
                except BrokenPipeError:
                    # Our reader is gone (`agentfense run ... | head`): leaving the stream
                    # stops the command, and we end as a shell pipeline's writer would.
                    _discard(out)
                    return EXIT_BROKEN_PIPE
    except CommandTimeoutError as exc:
        print(f"{args.prog}: {exc.message}", file=sys.stderr)
        return EXIT_TIMEOUT
    result = stream.result
    if result is None:
        raise SandboxError("the server ended the stream without the command's exit code")
    if result.limit_exceeded:
        print(
            f"{args.prog}: the command ran into the sandbox's {result.limit_exceeded} limit",
            file=sys.stderr,
        )
    if result.network_denied:
        print(
            f"{args.prog}: the sandbox's network proxy refused: {', '.join(result.network_denied)}",
            file=sys.stderr,
        )
    status = exit_status(result.exit_code)
    if status == EXIT_FAILED:
        print(f"{args.prog}: the server reported exit code {result.exit_code}", file=sys.stderr)
    return status


def _resources(args: argparse.Namespace) -> ResourceLimits | None:
    if args.memory is None and args.cpus is None and args.pids is None:
        return None
    return ResourceLimits(memory_bytes=args.memory, cpu_quota=args.cpus, pids_limit=args.pids)


async def _run_async(args: argparse.Namespace, interrupts: Interrupts) -> int:
    secure, tls = tls_flags(args)
    async with endpoint_or_embedded(args.endpoint) as endpoint:
        # A signal cancels only this part: an embedded server outlives the sandbox's cleanup.
        with interrupts.cancellable():
            async with await AsyncSandbox.from_local(
                args.path,
                preset=args.preset,
                permissions=args.rule,
                runtime=args.runtime,
                image=args.image,
                resources=_resources(args),
                network=args.network,
                endpoint=endpoint,
                secure=secure,
                api_key=args.api_key,
                tls=tls,
            ) as sandbox:
                return await _stream(sandbox, args)
        return interrupts.exit_code


async def _exec_async(args: argparse.Namespace, interrupts: Interrupts) -> int:
    endpoint = endpoint_or_default(args.endpoint)
    secure, tls = tls_flags(args)
    async with await AsyncSandbox.connect(
        args.sandbox_id, endpoint=endpoint, secure=secure, api_key=args.api_key, tls=tls
    ) as sandbox:
        return await _stream(sandbox, args)


async def run(args: argparse.Namespace) -> int:
    return await run_interruptible(lambda interrupts: _run_async(args, interrupts))


async def exec_(args: argparse.Namespace) -> int:
    return await run_interruptible(lambda interrupts: _exec_async(args, interrupts))
