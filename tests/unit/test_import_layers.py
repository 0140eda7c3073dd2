"""The project's imports run one way and never in a circle (DESIGN.md §2).

An AST scan of every ``.py`` file of the project's packages: every import statement anywhere in
a file (module level, inside functions, under ``if TYPE_CHECKING``), relative imports resolved to
absolute module names. Two checks on the resulting module graph:

* layers: kernels ← models ← {trainer, rollout} ← rl; rewards imports nothing of the project;
  trainer and rollout never import each other; nothing imports rl;
* cycles: none between the project's modules, lazy (function-level) imports included. A
  package's ``__init__`` importing its own submodules is normal (importing a submodule runs its
  package's ``__init__`` first, which is not counted as an edge), but a submodule importing a
  name from its package's ``__init__`` is an edge to the ``__init__``, so if that ``__init__``
  imports the submodule back it is a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Each top-level package and the top-level packages it may import (itself included).
ALLOWED: dict[str, frozenset[str]] = {
    "kernels": frozenset({"kernels"}),
    "models": frozenset({"kernels", "models"}),
    "trainer": frozenset({"kernels", "models", "trainer"}),
    "rollout": frozenset({"kernels", "models", "rollout"}),
    "rewards": frozenset({"rewards"}),
    "rl": frozenset({"kernels", "models", "trainer", "rollout", "rewards", "rl"}),
}

Edge = tuple[str, str, str]  # (importing module, imported module, "path:line" of the statement)


def project_modules(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Dotted module name → file, for every ``.py`` file under the given top-level packages
    (``pkg/__init__.py`` is the module ``pkg``)."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _known(name: str, modules: Mapping[str, Path]) -> str:
    """The deepest module of the project that ``name`` names or lies in (``a.b.attr`` → ``a.b``)."""
    while name not in modules and "." in name:
        name = name.rpartition(".")[0]
    return name


def import_edges(root: Path, modules: Mapping[str, Path]) -> list[Edge]:
    """Every import of a project module by a project module, found anywhere in the file."""
    tops = {name.split(".")[0] for name in modules}
    edges = []
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                # `from pkg import sub` imports the submodule pkg.sub; `from pkg import name`
                # reads a name of pkg's __init__
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            where = f"{path.relative_to(root)}:{node.lineno}"
            for target in targets:
                if target.split(".")[0] in tops:
                    target = _known(target, modules)
                    if target != module and (module, target, where) not in edges:
                        edges.append((module, target, where))
    return edges


def layer_violations(edges: Iterable[Edge], allowed: Mapping[str, frozenset[str]]) -> list[str]:
    """The edges from a package to one it may not import, as readable lines."""
    out = []
    for source, target, where in edges:
        top, to = source.split(".")[0], target.split(".")[0]
        if to not in allowed[top]:
            out.append(f"{where}: {source} -> {target} ({top} may import only "
                       f"{', '.join(sorted(allowed[top]))})")
    return out


def import_cycles(edges: Iterable[Edge]) -> list[list[str]]:
    """One cycle path ``[a, b, …, a]`` per strongly connected component of the module graph
    that has more than one module (Tarjan's algorithm, iterative)."""
    graph: dict[str, set[str]] = {}
    for source, target, _ in edges:
        graph.setdefault(source, set()).add(target)
        graph.setdefault(target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(component)
    return sorted(_cycle_through(min(c), graph, c) for c in components)


def _cycle_through(start: str, graph: Mapping[str, set[str]], component: set[str]) -> list[str]:
    """A shortest path start → … → start inside one strongly connected component (BFS)."""
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & component):
                if child == start:  # the edge back: walk the parents from node to start
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if child not in parent:
                    parent[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"{start} is in no cycle of {sorted(component)}")


def import_problems(root: Path, allowed: Mapping[str, frozenset[str]]) -> list[str]:
    """The layer violations and the cycles of the packages under ``root``, as readable lines."""
    modules = project_modules(root, allowed)
    edges = import_edges(root, modules)
    where = {(s, t): w for s, t, w in edges}
    problems = layer_violations(edges, allowed)
    for cycle in import_cycles(edges):
        steps = ", ".join(where[(a, b)] for a, b in zip(cycle, cycle[1:]))
        problems.append(f"import cycle: {' -> '.join(cycle)} ({steps})")
    return problems


def test_imports_follow_the_layers_and_have_no_cycles():
    problems = import_problems(ROOT, ALLOWED)
    assert not problems, "\n" + "\n".join(problems)


def test_the_scan_reports_a_forbidden_edge_and_a_cycle(tmp_path):
    files = {
        "low/__init__.py": "from .ops import f  # a package importing its own submodule: fine\n",
        "low/ops.py": "def f():\n    from high.api import g  # lazy, and upward\n    return g\n",
        "low/a.py": "from . import b\n",
        "low/b.py": "def h():\n    from .a import x\n",  # a <-> b through a lazy import
        "low/sub/__init__.py": "from .c import VALUE\nNAME = 1\n",
        "low/sub/c.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import NAME\n"
                         "VALUE = 2\n"),
        "high/__init__.py": "",
        "high/api.py": "import low.ops\ndef g():\n    return low.ops.f\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    problems = import_problems(tmp_path, {"low": frozenset({"low"}), "high": frozenset({"low", "high"})})
    assert problems == [
        "low/ops.py:2: low.ops -> high.api (low may import only low)",
        "import cycle: high.api -> low.ops -> high.api (high/api.py:1, low/ops.py:2)",
        "import cycle: low.a -> low.b -> low.a (low/a.py:1, low/b.py:2)",
        "import cycle: low.sub -> low.sub.c -> low.sub (low/sub/__init__.py:1, low/sub/c.py:3)",
    ], problems
