"""The confine helper of Docker sandboxes, built from the package's ``confine.c``.

Docker's own ``--init`` binds a static ``docker-init`` into containers; the Docker runtime
binds this one (read-only, at :data:`IN_CONTAINER`) and runs every command through it, so
that each command gets a Landlock domain of its own (``confine.c`` says what it allows).
Images need nothing for it (not even a C library): it is linked statically, by the server,
from the source shipped in the package, into a cache under the server's state directory
keyed by the source's hash (written to a temporary name, then renamed: a server killed
mid-build leaves no half a helper). ``$CC`` names the compiler (``cc`` by default).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("confine.c")
IN_CONTAINER = "/run/agentfense/confine"
FIX = "install gcc and libc6-dev (apt-get install -y gcc libc6-dev)"
_BUILD_TIMEOUT = 120


class ConfineUnavailable(Exception):
    """The helper cannot be built here (the message says why, as a sentence)."""


def build(cache_dir: Path) -> Path:
    """The helper for this source, built into ``cache_dir`` unless it is there already."""
    try:
        source = SOURCE.read_bytes()
    except OSError as exc:
        raise ConfineUnavailable(f"cannot read {SOURCE}: {exc.strerror or exc}") from None
    target = cache_dir / f"confine-{hashlib.sha256(source).hexdigest()[:16]}"
    if target.is_file():
        return target
    compiler = shutil.which(os.environ.get("CC") or "cc")
    if compiler is None:
        raise ConfineUnavailable(
            f"there is no C compiler ({os.environ.get('CC') or 'cc'}) to build the confine "
            f"helper from {SOURCE.name}"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=".confine-", suffix=".partial", dir=cache_dir)
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
            raise ConfineUnavailable(
                f"{compiler} cannot build the confine helper statically "
                f"({lines[-1] if lines else f'exit {built.returncode}'})"
            )
        os.chmod(partial, 0o755)
        os.replace(partial, target)
        # One helper at a time: those built from an earlier source go (a container that
        # binds one keeps its inode).
        for earlier in cache_dir.glob("confine-*"):
            if earlier != target:
                earlier.unlink(missing_ok=True)
    except subprocess.TimeoutExpired:
        raise ConfineUnavailable(
            f"{compiler} did not build the confine helper within {_BUILD_TIMEOUT} s"
        ) from None
    except OSError as exc:
        raise ConfineUnavailable(
            f"cannot build the confine helper in {cache_dir}: {exc.strerror or exc}"
        ) from None
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target
