"""The composition and decoding modules import one another without a cycle.

The graph is read from the source (ast), not from what happens to be imported: every `import` and
`from … import` counts, at module level or inside a function, except under `if TYPE_CHECKING:`
(never run). A lazy package's table of "memreg.x" strings counts as imports of those modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

SDK = Path(REPO) / "sdk"
SCOPE = [*sorted((SDK / "compose").glob("*.py")), *sorted((SDK / "decode").glob("*.py")),
         SDK / "mixture.py", SDK / "evaluate.py", SDK / "fit.py"]


def module_name(path: Path) -> str:
    parts = path.relative_to(SDK).with_suffix("").parts
    return ".".join(["memreg", *(parts[:-1] if parts[-1] == "__init__" else parts)])


def _runtime_nodes(tree: ast.AST):
    """Every node except those under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The modules of `known` that the file at `path` imports."""
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in _runtime_nodes(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        elif path.name == "__init__.py" and isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = [node.value]  # a lazy table: "memreg.compose.build"
        out.update(n for n in names if n in known)
    out.discard(module_name(path))
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, …, a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def graph() -> dict[str, set[str]]:
    known = {module_name(p) for p in SCOPE}
    return {module_name(p): imports_of(p, known) for p in SCOPE}


def test_the_composition_and_decoding_modules_have_no_import_cycle():
    g = graph()
    assert len(g) >= 12 and g["memreg.compose.model"]  # really read: the model imports its parts
    assert "memreg.decode.assisted" in g["memreg.compose.model"]  # function-level imports count
    cycle = find_cycle(g)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
