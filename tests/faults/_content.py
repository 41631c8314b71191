"""Self-checking file content: a file is one line (its name and a generation) repeated, so a
torn or half-written file, or one that mixes two generations, is told from a whole one."""

from __future__ import annotations

import shlex

REPEATS = 400  # about 6 KiB a file


def content(name: str, gen: int, repeats: int = REPEATS) -> bytes:
    return f"{name}:{gen}\n".encode() * repeats


def generation(name: str, data: bytes, repeats: int = REPEATS) -> int:
    """The generation of a whole file named ``name``; ValueError if it is not one."""
    first, _, _ = data.partition(b"\n")
    label, _, gen = first.decode(errors="replace").rpartition(":")
    if label != name or not gen.isdigit() or data != content(name, int(gen), repeats):
        raise ValueError(f"{name} is torn or foreign: {len(data)} bytes, starting {first[:60]!r}")
    return int(gen)


def shell_writer(names: list[str], gen: int) -> str:
    """A POSIX shell command (busybox has it) that writes each file's content for ``gen``."""
    lines = [
        f"yes {shlex.quote(f'{n}:{gen}')} | head -n {REPEATS} > {shlex.quote(n)}" for n in names
    ]
    return " && ".join(lines)


def python_writer(names: list[str], gen: int, *, links: int = 0) -> str:
    """A python3 command that writes each file's content for ``gen``: every other one in
    place, the others as editors save (a new file renamed over the old one); and, for the
    first ``links`` names, a second name by a hard link (such files are committed as
    copies)."""
    script = (
        "import os,sys\n"
        f"g={gen}\n"
        f"names={names!r}\n"
        "for i,n in enumerate(names):\n"
        f"    d=('%s:%d\\n'%(n,g)).encode()*{REPEATS}\n"
        "    if i%2: open(n,'wb').write(d); continue\n"
        "    open(n+'.new','wb').write(d); os.replace(n+'.new',n)\n"  # as editors save
        f"for n in names[:{links}]:\n"
        "    l=n+'.link'\n"
        "    if os.path.lexists(l): os.unlink(l)\n"
        "    os.link(n,l)\n"
    )
    return f"python3 -c {shlex.quote(script)}"
