"""Layering of the package, read from the source's AST (no imports executed).

The runtime (everything outside cli/, converters/, evaluate/ and bench/) never imports the
tools built on it; converters and evaluate import only the runtime; bench may use all three.
Imports count wherever they are (module level or inside functions), relative ones included, as
do ``importlib.import_module("...")`` calls with a literal name (an f-string counts as its
literal prefix, e.g. ``f"sfpn_edge.cli.{name}"`` as ``sfpn_edge.cli``) and the registries'
``"sfpn_edge.module:Attribute"`` implementation strings (imported when the entry is used). Cython kernels (.pyx,
not Python syntax) are read line by line for their import statements.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set

REPO = Path(__file__).resolve().parents[1]
# Where each package's sources live (setup.py's package_dir).
SOURCES = {"sfpn_edge": REPO / "sfpn_edge", "sfpn_edge.converters": REPO / "converters",
           "sfpn_edge.kernels": REPO / "kernels"}
TOOLS = ("cli", "converters", "evaluate", "bench")
ALLOWED = {  # layer -> the layers it may import
    "runtime": {"runtime"},
    "converters": {"runtime", "converters"},
    "evaluate": {"runtime", "evaluate"},
    "bench": {"runtime", "converters", "evaluate", "bench"},
    "cli": {"runtime", "converters", "evaluate", "bench", "cli"},
}
RUNTIME = ["sfpn_edge.io", "sfpn_edge.detect", "sfpn_edge.detect.mtcnn", "sfpn_edge.detect.policy",
           "sfpn_edge.align", "sfpn_edge.embed", "sfpn_edge.score", "sfpn_edge.pipeline", "sfpn_edge.gallery",
           "sfpn_edge.video", "sfpn_edge.track", "sfpn_edge.stream",
           "sfpn_edge.backends", "sfpn_edge.backends.select", "sfpn_edge.models", "sfpn_edge.calibration",
           "sfpn_edge.cache", "sfpn_edge.bundle", "sfpn_edge.bundle_install", "sfpn_edge.errors",
           "sfpn_edge.platform_info", "sfpn_edge.kernels", "sfpn_edge.kernels.engine", "sfpn_edge.kernels.warp"]


def module_files() -> Dict[str, Path]:
    """Every module of the package -> its source file (a package is its ``__init__.py``)."""
    files = {}
    for package, root in SOURCES.items():
        for path in sorted([*root.rglob("*.py"), *root.rglob("*.pyx")]):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join([package, *parts])] = path
    return files


MODULES = module_files()


def layer(module: str) -> str:
    part = module.split(".")[1] if "." in module else ""
    if part == "__main__":  # python -m sfpn_edge: the CLI
        return "cli"
    return part if part in TOOLS else "runtime"


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The absolute module named by a (possibly relative) ``from ... import``."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
    base = package[:len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _literal_module(call: ast.Call) -> Optional[str]:
    """The module named by ``importlib.import_module(...)`` / ``__import__(...)``, if literal."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if name not in ("import_module", "__import__") or not call.args:
        return None
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        return str(arg.values[0].value).rsplit(".", 1)[0]
    return None


IMPL = re.compile(r"sfpn_edge(\.\w+)+:\w+")  # a registry entry's "module:Attribute"


def _named(module: str, tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, node)
            for alias in node.names:
                yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
        elif isinstance(node, ast.Call):
            name = _literal_module(node)
            if name:
                yield name
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and IMPL.fullmatch(node.value):
            yield node.value.partition(":")[0]


def _named_in_cython(text: str) -> Iterator[str]:
    for match in re.finditer(r"^\s*(?:from\s+(\S+)\s+c?import\s+(\w+)|c?import\s+([\w.]+))", text, re.M):
        base, name, plain = match.groups()
        yield plain or (f"{base}.{name}" if f"{base}.{name}" in MODULES else base)


def imports(module: str) -> Set[str]:
    """The package's modules that ``module`` imports (the closest known module of each name)."""
    path = MODULES[module]
    text = path.read_text(encoding="utf-8")
    found = set()
    for name in _named_in_cython(text) if path.suffix == ".pyx" else _named(module, ast.parse(text)):
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name and name != module:
            found.add(name)
    return found


GRAPH = {module: imports(module) for module in MODULES}


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_module_is_found():
    assert set(RUNTIME) <= set(MODULES)
    assert {layer(m) for m in RUNTIME} == {"runtime"}
    assert {layer(m) for m in MODULES} == set(ALLOWED)


def test_reader_sees_function_level_relative_and_importlib_imports():
    assert "sfpn_edge.backends.native_backend" in GRAPH["sfpn_edge.backends"]   # a registry entry
    assert "sfpn_edge.converters.convert" in GRAPH["sfpn_edge.cli.convert"]     # inside a function
    tree = ast.parse("from . import policy\nfrom .. import io\nimportlib.import_module('sfpn_edge.bench')\n"
                     "importlib.import_module(f'sfpn_edge.cli.{name}')\n")
    assert set(_named("sfpn_edge.detect.mtcnn", tree)) == {
        "sfpn_edge.detect.policy", "sfpn_edge.io", "sfpn_edge.bench", "sfpn_edge.cli"}
    cython = "import numpy as np\ncimport numpy as cnp\nfrom sfpn_edge.errors import ImageError\n"
    assert set(_named_in_cython(cython)) == {"numpy", "sfpn_edge.errors"}


def test_layers_import_only_themselves_and_below():
    wrong = sorted(f"{m} ({layer(m)}) imports {i} ({layer(i)})"
                   for m, deps in GRAPH.items() for i in deps if layer(i) not in ALLOWED[layer(m)])
    assert wrong == []


def test_no_import_cycles():
    """Counting module-level and function-level imports alike."""
    assert cycles(GRAPH) == []
