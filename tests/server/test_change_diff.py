"""The unified diff of a sandbox's changes, against what a hostile sandbox leaves in its view:
what it cannot read is summarised (never an error), names are quoted as git quotes them (a
name holding a newline forges no line of the diff), lines end at newlines only, and line
matching costs a bounded amount of work whatever the two sides hold."""

from __future__ import annotations

import difflib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from agentfense.fs.control import ChangeEntry
from agentfense.server import change_diff

SANDBOX = (59999, 59999)  # no user of the host: the sandbox's uid, as the diff reads its side


@pytest.fixture
def trees() -> Iterator[tuple[Path, Path]]:
    """A codebase and a view of it (a plain directory here), reachable by the sandbox's uid."""
    base = Path(tempfile.mkdtemp(prefix="agentfense-diff-test-", dir="/tmp"))
    base.chmod(0o755)
    codebase, view = base / "codebase", base / "view"
    codebase.mkdir(mode=0o755)
    view.mkdir(mode=0o755)
    try:
        yield codebase, view
    finally:
        for path in (base, *base.rglob("*")):
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
        shutil.rmtree(base)


def render(trees: tuple[Path, Path], *changes: ChangeEntry) -> str:
    codebase, view = trees
    diff, truncated = change_diff.render(
        changes, codebase_root=codebase, view_root=view, owner=SANDBOX, max_bytes=1 << 26
    )
    assert not truncated
    return diff.decode("utf-8", "surrogateescape")


def test_a_directory_the_sandbox_made_unreadable_is_summarised(
    trees: tuple[Path, Path],
) -> None:
    """``mkdir d; echo hi > d/f; chmod 0 d``: the diff said INTERNAL."""
    codebase, view = trees
    (view / "d").mkdir()
    (view / "d" / "f").write_text("made\n")
    (view / "d").chmod(0)
    (codebase / "c").mkdir()  # committed so, earlier
    (codebase / "c" / "f").write_text("before\n")
    (codebase / "c").chmod(0)
    (view / "c").mkdir()
    (view / "c" / "f").write_text("after\n")
    diff = render(
        trees,
        ChangeEntry("d", "added", "directory", 4096, 0),
        ChangeEntry("d/f", "added", "file", 5, 0o644),
        ChangeEntry("c/f", "modified", "file", 6, 0o644),
    )
    assert "Files /dev/null and b/d/f differ (b/d/f: the sandbox's permissions" in diff
    assert "Files a/c/f and b/c/f differ (a/c/f: the sandbox's permissions" in diff
    for content in ("made", "before", "after"):
        assert content not in diff


def test_names_are_quoted_as_git_quotes_them(trees: tuple[Path, Path]) -> None:
    """A name holding a newline made the diff show lines the sandbox chose as the diff's."""
    _, view = trees
    forged = "x\n@@ -1 +1 @@\n-# demo\n+# fine"
    (view / forged).write_text("evil\n")
    (view / 'q"\\\t.txt').write_text("q\n")
    diff = render(
        trees,
        ChangeEntry(forged, "added", "file", 5, 0o644),
        ChangeEntry('q"\\\t.txt', "added", "file", 2, 0o644),
    )
    quoted = '"b/x\\n@@ -1 +1 @@\\n-# demo\\n+# fine"'
    assert diff.splitlines() == [
        f'diff --git "a/x\\n@@ -1 +1 @@\\n-# demo\\n+# fine" {quoted}',
        "new file mode 100644",
        "--- /dev/null",
        f"+++ {quoted}",
        "@@ -0,0 +1 @@",
        "+evil",
        'diff --git "a/q\\"\\\\\\t.txt" "b/q\\"\\\\\\t.txt"',
        "new file mode 100644",
        "--- /dev/null",
        '+++ "b/q\\"\\\\\\t.txt"',
        "@@ -0,0 +1 @@",
        "+q",
    ]


def test_a_carriage_return_ends_no_line(trees: tuple[Path, Path]) -> None:
    codebase, view = trees
    (codebase / "f").write_bytes(b"a\r\nb\rc\n")
    (view / "f").write_bytes(b"a\r\nb\rC\n")
    diff = render(trees, ChangeEntry("f", "modified", "file", 7, 0o644))
    assert "No newline" not in diff
    assert diff.endswith("@@ -1,2 +1,2 @@\n a\r\n-b\rc\n+b\rC\n")


def test_hunks_far_into_a_file_are_numbered_from_its_start(trees: tuple[Path, Path]) -> None:
    codebase, view = trees
    before = [f"line {i}\n" for i in range(5000)]
    after = [*before[:1000], "new\n", *before[1000:4000], *before[4001:]]
    (codebase / "f").write_text("".join(before))
    (view / "f").write_text("".join(after))
    diff = render(trees, ChangeEntry("f", "modified", "file", 1, 0o644))
    whole = difflib.unified_diff(before, after, "a/f", "b/f")
    assert diff == "diff --git a/f b/f\n" + "".join(whole)


def test_line_matching_costs_a_bounded_amount_of_work(trees: tuple[Path, Path]) -> None:
    """Every line of the codebase's file with a line of the sandbox's between: difflib
    matches them in time quadratic in the lines (a megabyte's: hours of a core)."""
    codebase, view = trees
    (codebase / "f").write_text("".join(f"{i}\n" for i in range(20_000)))
    (view / "f").write_text("".join(f"{i}\ny{i}\n" for i in range(20_000)))
    start = time.monotonic()
    diff = render(trees, ChangeEntry("f", "modified", "file", 1, 0o644))
    assert time.monotonic() - start < 10
    assert diff == (
        "diff --git a/f b/f\nFiles a/f and b/f differ (too many changed lines to diff)\n"
    )
    assert os.stat(codebase / "f").st_size < change_diff.MAX_FILE_BYTES


@pytest.mark.anyio
async def test_diffs_take_turns_one_per_sandbox_and_two_on_the_server() -> None:
    """A diff costs a core and several times its bytes: twenty at once grew a server by
    3.8 GB (a hostile tester's finding). At most two run on the server, one per sandbox; a
    diff cancelled while it waits takes no turn and leaves none held."""
    turns = change_diff.DiffTurns()
    running: list[str] = []
    most = 0
    release = anyio.Event()

    async def diff(sandbox_id: str) -> None:
        nonlocal most
        async with turns.turn(sandbox_id):
            running.append(sandbox_id)
            most = max(most, len(running))
            await release.wait()
            running.remove(sandbox_id)

    async with anyio.create_task_group() as tg:
        for sandbox_id in ("a", "a", "a", "b", "b", "c"):
            tg.start_soon(diff, sandbox_id)
        await anyio.wait_all_tasks_blocked()
        assert len(running) == len(set(running)) == 2  # (two sandboxes; the rest wait)
        with anyio.move_on_after(0.01):  # (one that leaves while it waits)
            await diff("c")
        release.set()
    assert most == 2
    assert not running
    release = anyio.Event()
    async with anyio.create_task_group() as tg:  # (every turn was given back)
        tg.start_soon(diff, "c")
        tg.start_soon(diff, "d")
        await anyio.wait_all_tasks_blocked()
        assert sorted(running) == ["c", "d"]
        release.set()


def test_a_request_reads_a_bounded_amount(
    trees: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file of several names is read once per name: 20,000 names of one file of 1 MiB
    made a diff read 20 GB, and hold a turn of the server's for a minute (a hostile
    tester's finding). What is past the request's reading budget is summarised."""
    monkeypatch.setattr(change_diff, "READ_BUDGET", 3 << 20)
    _, view = trees
    (view / "f0").write_bytes(b"a line\n" * (1 << 17))  # (896 KiB)
    for index in range(1, 6):
        os.link(view / "f0", view / f"f{index}")
    names = [f"f{index}" for index in range(6)]
    diff = render(trees, *(ChangeEntry(n, "added", "file", 1 << 17, 0o644) for n in names))
    shown = [n for n in names if f"+++ b/{n}\n" in diff]
    summarised = [n for n in names if f"(b/{n}: not shown: this diff read its most" in diff]
    assert (shown, summarised) == (names[:3], names[3:]), diff[-500:]
