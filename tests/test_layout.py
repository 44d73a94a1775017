"""The package layout: sub-packages that mirror the course, imports that point one way, no cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dsnb"

# Lower layers never import higher ones: data -> model -> plan -> train -> compress / serve -> course.
LAYERS = {
    "dsnb.cache": 0, "dsnb.progress": 0, "dsnb.values": 0,
    "dsnb.data": 1,
    "dsnb.model": 2,
    "dsnb.plan": 3,
    "dsnb.train": 4,
    "dsnb.compress": 5, "dsnb.serve": 5,
    "dsnb.course": 6, "dsnb.checklist": 6, "dsnb.doctor": 6, "dsnb.exercises": 6, "dsnb.ledger": 6, "dsnb": 6,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    while module not in LAYERS:
        module = module.rsplit(".", 1)[0]
    return LAYERS[module]


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    out = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dsnb"):
            for alias in node.names:  # `from dsnb.data import corpus` imports the module dsnb.data.corpus
                sub = f"{node.module}.{alias.name}"
                out.add(sub if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists() else node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("dsnb")}
    return out


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    for target in _imports(MODULES[module]):
        assert _layer(target) <= _layer(module), f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"


def test_no_import_cycles():
    graph = {m: {t for t in _imports(p, top_level_only=True) if t in MODULES and t != m} for m, p in MODULES.items()}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]) if nxt in stack else nxt)
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_every_module_says_its_job():
    for module, path in MODULES.items():
        doc = ast.get_docstring(ast.parse(path.read_text()))
        if path.name == "__init__.py" and not path.read_text().strip():
            continue
        assert doc and not doc.startswith("TODO"), f"{module} has no docstring saying what it is for"
