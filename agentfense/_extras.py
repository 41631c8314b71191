"""What the ``server`` extra brings, and what of it this installation lacks.

The client (``pip install agentfense-sandbox``) needs only its own dependencies; serving
(``agentfense serve``, or ``agentfense run`` with its embedded server) needs the ``server``
extra too. ``serve`` refuses at once and ``doctor`` fails when a module of it is missing, each
naming the command that installs it. pyproject.toml's ``server`` extra and
:data:`SERVER_MODULES` are kept equal by tests/test_client_imports.py.
"""

from __future__ import annotations

import importlib.util

DISTRIBUTION = "agentfense-sandbox"  # the name on PyPI; the import name is agentfense

# the server extra's distributions, each with the module the server imports from it
SERVER_MODULES = {
    "docker": "docker",
    "prometheus-client": "prometheus_client",
}

SERVER_INSTALL = f"pip install '{DISTRIBUTION}[server]'"


def _importable(module: str) -> bool:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # a parent that fails, or a module without a spec
        return False
    # A namespace package is only a folder of that name (a project's docker/, on sys.path
    # as the working directory of `python -m agentfense`), never the distribution.
    return spec is not None and spec.origin not in (None, "namespace")


def missing_server_distributions() -> list[str]:
    """The server extra's distributions whose module cannot be imported here, sorted."""
    return sorted(dist for dist, module in SERVER_MODULES.items() if not _importable(module))


def server_extra_problem() -> str | None:
    """Why this installation cannot serve (a sentence naming the install command), or None."""
    missing = missing_server_distributions()
    if not missing:
        return None
    names = missing[0] if len(missing) == 1 else f"{', '.join(missing[:-1])} and {missing[-1]}"
    verb = "is" if len(missing) == 1 else "are"
    return f"serving needs the server extra, and {names} {verb} not installed: {SERVER_INSTALL}"
