"""The confine helper of Docker sandboxes, built from the package's ``confine.c``.

Docker's own ``--init`` binds a static ``docker-init`` into containers; the Docker runtime
binds this one (read-only, at :data:`IN_CONTAINER`) and runs every command through it, so
that each command gets a Landlock domain of its own (``landlock.c`` says what it allows).
Images need nothing for it (not even a C library): it is one of the server's static helpers
(:mod:`._static_helpers`), built at the first start.
"""

from __future__ import annotations

from pathlib import Path

from ._static_helpers import FIX, HelperUnavailable
from ._static_helpers import build as _build

IN_CONTAINER = "/run/agentfense/confine"
ConfineUnavailable = HelperUnavailable
__all__ = ["FIX", "IN_CONTAINER", "ConfineUnavailable", "build"]


def build(cache_dir: Path) -> Path:
    """The helper for this source, built into ``cache_dir`` unless it is there already."""
    return _build("confine", cache_dir)
