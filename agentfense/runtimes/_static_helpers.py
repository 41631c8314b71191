"""The server's static C helpers, built from sources shipped in the package.

Each helper (``confine`` for Docker sandboxes, ``launcher`` for bwrap ones) is its source
files put together in order (``landlock.c`` and ``raw_sockets.c`` first, then the helper's
own) and linked
statically, so that it runs anywhere, in any image, with no C library there. It is built by
the server into a cache under its state directory, named for the hash of those bytes
(written to a temporary name, then renamed: a server killed mid-build leaves no half a
helper). ``$CC`` names the compiler (``cc`` by default).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
FIX = "install gcc and libc6-dev (apt-get install -y gcc libc6-dev)"
_BUILD_TIMEOUT = 120


class HelperUnavailable(Exception):
    """A helper cannot be built here (the message says why, as a sentence)."""


def build(name: str, cache_dir: Path) -> Path:
    """The helper ``name`` (``landlock.c``, ``raw_sockets.c`` and ``<name>.c``), built into
    ``cache_dir`` unless it is there already."""
    files = ("landlock.c", "raw_sockets.c", f"{name}.c")
    try:
        source = b"".join((HERE / file).read_bytes() for file in files)
    except OSError as exc:
        raise HelperUnavailable(
            f"cannot read the {name} helper's source: {exc.strerror or exc}"
        ) from None
    target = cache_dir / f"{name}-{hashlib.sha256(source).hexdigest()[:16]}"
    if target.is_file():
        return target
    compiler = shutil.which(os.environ.get("CC") or "cc")
    if compiler is None:
        raise HelperUnavailable(
            f"there is no C compiler ({os.environ.get('CC') or 'cc'}) to build the {name} "
            f"helper from {name}.c"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=f".{name}-", suffix=".partial", dir=cache_dir)
    os.close(fd)
    try:
        # The bytes hashed are the bytes compiled: the source goes on the compiler's stdin.
        built = subprocess.run(
            [compiler, "-static", "-Os", "-std=c99", "-x", "c", "-o", partial, "-"],
            input=source,
            capture_output=True,
            timeout=_BUILD_TIMEOUT,
            check=False,
        )
        if built.returncode != 0:
            lines = built.stderr.decode(errors="replace").strip().splitlines()
            raise HelperUnavailable(
                f"{compiler} cannot build the {name} helper statically "
                f"({lines[-1] if lines else f'exit {built.returncode}'})"
            )
        os.chmod(partial, 0o755)
        os.replace(partial, target)
        # One helper of a name at a time: those built from an earlier source go (a sandbox
        # that binds or runs one keeps its inode).
        for earlier in cache_dir.glob(f"{name}-*"):
            if earlier != target:
                earlier.unlink(missing_ok=True)
    except subprocess.TimeoutExpired:
        raise HelperUnavailable(
            f"{compiler} did not build the {name} helper within {_BUILD_TIMEOUT} s"
        ) from None
    except OSError as exc:
        raise HelperUnavailable(
            f"cannot build the {name} helper in {cache_dir}: {exc.strerror or exc}"
        ) from None
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target
