"""The shape of the code: no import cycles between modules, and services that share only
`shared/`.

Every import counts, wherever it stands: at the top, under `if TYPE_CHECKING:` or inside a
function. A cycle hidden in a function or a type-checking block is still two modules that
cannot be understood, tested or moved one without the other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from shared.settings import REPO_ROOT

PACKAGES = ("shared", "ingestor", "trainer", "predictor", "gateway", "streamops")
SERVICES = ("ingestor", "trainer", "predictor", "gateway")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def imported(name: str, path: Path) -> Iterator[str]:
    """The project modules `name` imports (`from a import b` is a.b when that is a module)."""
    known = modules()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            found = target
            while found and found not in known:
                found = found.rpartition(".")[0]
            if found and found != name:
                yield found


@cache
def graph() -> dict[str, frozenset[str]]:
    return {name: frozenset(imported(name, path)) for name, path in modules().items()}


def cycles(edges: dict[str, frozenset[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_cycles() -> None:
    edges = {
        "a": frozenset({"b"}),
        "b": frozenset({"c"}),
        "c": frozenset({"a"}),
        "d": frozenset({"a"}),
    }
    assert cycles(edges) == [["a", "b", "c"]]
    assert cycles({"a": frozenset({"b"}), "b": frozenset()}) == []


def test_the_import_graph_sees_the_project() -> None:
    edges = graph()
    assert "shared.events" in edges["ingestor.app"]
    assert "predictor.service" in edges["predictor.app"]


def test_no_import_cycles() -> None:
    found = cycles(dict(graph()))
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_services_share_only_shared() -> None:
    """A service imports no other service; shared/ imports no service (streamops/, the CLI and
    the local stack, may import them all)."""
    wrong = []
    for name, targets in graph().items():
        top = name.split(".")[0]
        if top not in (*SERVICES, "shared"):
            continue
        for target in targets:
            other = target.split(".")[0]
            if other != top and other in (*SERVICES, "streamops"):
                wrong.append(f"{name} imports {target}")
    assert not wrong, "\n".join(sorted(wrong))
