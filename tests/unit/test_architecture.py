"""The package's shape (docs/ARCHITECTURE.md): layers, no cycles, top-level imports, no MPI
in the algorithm packages. Read from the source with ``ast``; nothing is imported."""
from __future__ import annotations

import ast
import os
from typing import Dict, List, Set, Tuple

import pytest

PACKAGE = "r2d2_hpc"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: Layer of each top-level module or subpackage, bottom up (docs/ARCHITECTURE.md).
LAYERS: Dict[str, int] = {
    "r2d2_hpc": 0, "config": 0, "types": 0, "seeding": 0,
    "presets": 1, "storage": 1,
    "envs": 2, "replay": 2,
    "agent": 3,
    "comm": 4,
    "checkpoint": 5,
    "job": 6,
    "cli": 7,
}
#: Packages whose modules must not import MPI (the algorithm objects).
NO_MPI = ("config", "types", "presets", "storage", "envs", "replay", "agent", "checkpoint")


def _modules() -> Dict[str, ast.Module]:
    out = {}
    base = os.path.join(ROOT, PACKAGE)
    for d, _, files in os.walk(base):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(d, f)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                rel = rel[: -len(".__init__")] if rel.endswith(".__init__") else rel
                with open(path, encoding="utf-8") as fh:
                    out[rel] = ast.parse(fh.read(), path)
    return out


MODULES = _modules()


def _part(module: str) -> str:
    """``r2d2_hpc.replay.shard`` -> ``replay``; ``r2d2_hpc.config`` -> ``config``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _imports(tree: ast.Module) -> List[Tuple[str, int, bool]]:
    """(imported module, line, inside a function) of every import in ``tree``."""
    out = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                out.append((child.module, child.lineno, in_function))
            visit(child, inner)

    visit(tree, False)
    return out


def _project_deps(module: str) -> Set[str]:
    """The project modules ``module`` imports (a ``from pkg import mod`` counts as ``pkg.mod``)."""
    deps = set()
    for node in ast.walk(MODULES[module]):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == PACKAGE:
            deps.add(node.module)
            deps.update(f"{node.module}.{a.name}" for a in node.names
                        if f"{node.module}.{a.name}" in MODULES)
        elif isinstance(node, ast.Import):
            deps.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
    return {d for d in deps if d in MODULES and d != module}


def test_every_module_has_a_layer() -> None:
    unknown = sorted({_part(m) for m in MODULES} - set(LAYERS))
    assert not unknown, f"add {unknown} to LAYERS and to docs/ARCHITECTURE.md"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    mine = _part(module)
    bad = []
    for dep in sorted(_project_deps(module)):
        theirs = _part(dep)
        if theirs == mine or dep == PACKAGE:
            continue
        if LAYERS[theirs] >= LAYERS[mine]:
            bad.append(f"{dep} (layer {LAYERS[theirs]} {theirs}; {module} is layer "
                       f"{LAYERS[mine]} {mine})")
    assert not bad, f"{module} imports upward or sideways: {bad}"


def test_no_import_cycles() -> None:
    graph = {m: _project_deps(m) for m in MODULES}
    state: Dict[str, int] = {}
    cycles: List[List[str]] = []

    def walk(m: str, path: List[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(path[path.index(d):] + [d] if d in path else [m, d])
            elif d not in state:
                walk(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            walk(m, [m])
    assert not cycles, cycles


def test_project_modules_are_imported_at_the_top() -> None:
    local = [f"{m}:{line} imports {name}" for m, tree in sorted(MODULES.items())
             for name, line, in_function in _imports(tree)
             if in_function and name.split(".")[0] == PACKAGE]
    assert not local, local


@pytest.mark.parametrize("package", NO_MPI)
def test_algorithm_packages_do_not_import_mpi(package: str) -> None:
    users = [f"{m}:{line}" for m, tree in sorted(MODULES.items()) if _part(m) == package
             for name, line, _ in _imports(tree) if name.split(".")[0] == "mpi4py"]
    assert not users, users
