"""``agentfense ls`` and ``agentfense rm``: what a server holds, and removing it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import datetime

from .. import AsyncSandboxClient
from ..errors import ConnectionError, SandboxError
from ._endpoint import endpoint_or_default, tls_flags
from ._exits import EXIT_FAILED
from ._interrupt import run_interruptible


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart (the last one not padded)."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


def _when(moment: datetime | None) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    scaled = size / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if scaled < 1024 or unit == "GiB":
            break
        scaled /= 1024
    return f"{scaled:.1f} {unit}"


async def _ls(args: argparse.Namespace) -> int:
    secure, tls = tls_flags(args)
    async with AsyncSandboxClient(
        endpoint_or_default(args.endpoint), secure=secure, api_key=args.api_key, tls=tls
    ) as client:
        sandboxes = await client.list_sandboxes()
        codebases = await client.list_codebases()
    if args.quiet:
        for found in [s.id for s in sandboxes] + [c.id for c in codebases]:
            print(found)
        return 0
    print(
        table(
            ("SANDBOX", "STATUS", "CODEBASE", "RUNTIME", "CREATED"),
            [
                (s.id, s.status.value, s.codebase_id, s.runtime.value, _when(s.created_at))
                for s in sandboxes
            ],
        )
    )
    print()
    print(
        table(
            ("CODEBASE", "NAME", "OWNER", "FILES", "SIZE", "CREATED"),
            [
                (c.id, c.name, c.owner_id, str(c.file_count), _size(c.size), _when(c.created_at))
                for c in codebases
            ],
        )
    )
    return 0


async def _remove(client: AsyncSandboxClient, item: str) -> None:
    if item.startswith("sb_"):
        await client.destroy_sandbox(item)
    elif item.startswith("cb_"):
        await client.delete_codebase(item)
    else:
        raise SandboxError(f"{item!r} is neither a sandbox (sb_…) nor a codebase (cb_…)")


async def _rm(args: argparse.Namespace) -> int:
    failed = False
    secure, tls = tls_flags(args)
    async with AsyncSandboxClient(
        endpoint_or_default(args.endpoint), secure=secure, api_key=args.api_key, tls=tls
    ) as client:
        for item in args.ids:
            try:
                await _remove(client, item)
            except ConnectionError:
                raise  # no server: every other id would say the same
            except SandboxError as exc:
                said = exc.message if item in exc.message else f"{item}: {exc.message}"
                print(f"{args.prog}: {said}", file=sys.stderr)
                failed = True
            else:
                print(item)
    return EXIT_FAILED if failed else 0


async def ls(args: argparse.Namespace) -> int:
    return await run_interruptible(lambda _: _ls(args))


async def rm(args: argparse.Namespace) -> int:
    return await run_interruptible(lambda _: _rm(args))
