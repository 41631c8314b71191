"""No two modules of the package import each other, directly or round a longer loop.

Every import counts, wherever it is written: at the top, under ``TYPE_CHECKING``, or inside a
function. A loop through any of them is two-way coupling, whatever Python tolerates.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import agentfense

PACKAGE = Path(agentfense.__file__).parent
GENERATED = PACKAGE / "_proto"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, known: set[str] | None = None) -> Iterator[str]:
    """The modules ``name`` (at ``path``) imports: of ``known`` only, or all when None."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # ``from package import module`` imports the module, not the package's body
            # (beyond its __init__, which every import of the package runs anyway)
            names = [f"{base}.{alias.name}" for alias in node.names]
            targets = [n for n in names if known is not None and n in known] or [base]
        else:
            continue
        for target in targets:
            if known is None or (target in known and target != name):
                yield target


def _graph() -> dict[str, set[str]]:
    files = {
        _module_name(path): path for path in PACKAGE.rglob("*.py") if GENERATED not in path.parents
    }
    known = set(files)
    return {name: set(_imports(path, name, known)) for name, path in files.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_the_package_has_no_import_cycle() -> None:
    graph = _graph()
    assert "agentfense.server.sandboxes" in graph  # (the walk found the package)
    assert _cycles(graph) == []


def test_the_check_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


WIRE = ("grpclib", "betterproto", "h2", "agentfense._proto", "agentfense._error_details")


def test_only_the_grpc_layer_of_the_server_touches_the_wire() -> None:
    server = PACKAGE / "server"
    grpc_layer = server / "_grpc"
    offenders = {}
    for path in server.rglob("*.py"):
        if grpc_layer in path.parents:
            continue
        name = _module_name(path)
        wire = sorted(
            t for t in _imports(path, name) if any(t == w or t.startswith(w + ".") for w in WIRE)
        )
        if wire:
            offenders[name] = wire
    assert offenders == {}
