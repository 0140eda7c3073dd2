"""Our top-level `kernels` package shares its name with the PyPI `kernels` (hub kernels) that
transformers probes for; transformers must never take ours for it (DESIGN.md §2)."""

import importlib.util


def test_transformers_does_not_mistake_our_kernels_package():
    from transformers.utils import import_utils

    assert importlib.util.find_spec("kernels") is not None  # ours is importable...
    assert not import_utils.is_kernels_available()  # ...and transformers does not use it


def test_kernels_imports_nothing_of_the_project():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "kernels"
    project = {"rl", "rollout", "trainer", "rewards"}
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            assert not any(n.split(".")[0] in project for n in names), f"{path} imports {names}"
