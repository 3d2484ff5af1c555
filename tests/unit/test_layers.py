"""The layers of llama_triton/ and frontend/ as their imports draw them (read with ast: nothing is
imported, so a lazy import inside a function, or one under TYPE_CHECKING, counts like any other).

The units are `frontend` (the HTTP side, one unit whatever packages it holds inside), each child of
`llama_triton` (a subpackage such as `llama_triton.engine`, or a top-level module such as
`llama_triton.contract`), and the Triton model shells (model_repository/*/1/model.py). The top
level is this table of units, not the two folders: `llama_triton` holds both the library the
frontend imports and the launcher (`serve`) that starts the frontend.

* `LAYERS` is the intended layering, written down: which unit may import which. Every import
  between units must be one it allows, and a unit the table does not place fails the test.
* No cycle between packages at any depth: between the units, and between the subpackages of any
  package (frontend's groups included, whatever they are called), counting paths through modules
  outside that package too.
* No private name crosses a module boundary: `from m import _x`, `m._x` and `Class._x` where `m` or
  `Class` was imported from another of our modules.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("llama_triton", "frontend")
MODEL_SHELLS = "model_repository"

# The intended layering, bottom up. A unit may import the units it names, nothing else.
_LEAF: frozenset[str] = frozenset()
LAYERS: dict[str, frozenset[str]] = {
    "llama_triton": _LEAF,                      # the package's __init__: a docstring
    # Torch-free leaves every side shares: the request errors and guide types of the decoder's
    # interface, the serving defaults, the decoder-failure file (frontend -> launcher), the start-up
    # heap freeze and the TTFT stamp switch.
    "llama_triton.contract": _LEAF,
    "llama_triton.defaults": _LEAF,
    "llama_triton.failure_file": _LEAF,
    "llama_triton.startup_heap": _LEAF,
    "llama_triton.ttft_stamps": _LEAF,
    # Both sides of the wire: text handling, and TensorRT-LLM's tensor interface.
    "llama_triton.text": frozenset({"llama_triton.contract", "llama_triton.defaults"}),
    "llama_triton.trtllm": frozenset({"llama_triton.contract"}),
    # Inside Triton: the model, the CPU engine over it, the decoder model around an engine.
    "llama_triton.llama": _LEAF,
    "llama_triton.engine": frozenset({"llama_triton.contract", "llama_triton.defaults", "llama_triton.text",
                                      "llama_triton.llama"}),
    "llama_triton.backend": frozenset({"llama_triton.contract", "llama_triton.defaults", "llama_triton.text",
                                       "llama_triton.trtllm", "llama_triton.engine", "llama_triton.startup_heap",
                                       "llama_triton.ttft_stamps"}),
    MODEL_SHELLS: frozenset({"llama_triton.backend", "llama_triton.text"}),
    # The HTTP side: never the engine, the model or the decoder's backend (torch), never the launcher.
    "frontend": frozenset({"llama_triton.contract", "llama_triton.defaults", "llama_triton.text",
                           "llama_triton.trtllm", "llama_triton.failure_file", "llama_triton.startup_heap",
                           "llama_triton.ttft_stamps"}),
    # Setting the stack up: the launcher starts the frontend; the GPU build renders the repository
    # the launcher serves.
    "llama_triton.serve": frozenset({"llama_triton.defaults", "llama_triton.trtllm", "llama_triton.llama",
                                     "llama_triton.failure_file", "frontend"}),
    "llama_triton.gpu": frozenset({"llama_triton.defaults", "llama_triton.trtllm", "llama_triton.llama",
                                   "llama_triton.serve"}),
}


@dataclass(frozen=True)
class Module:
    name: str           # dotted; a model shell is model_repository.<model>
    path: Path
    rel: str            # the path from the repository root, for messages
    is_package: bool    # an __init__.py


@dataclass(frozen=True)
class Import:
    importer: str
    target: str         # the module of ours it reaches
    line: int


def discover(root: Path = ROOT) -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for top in PACKAGES:
        for path in sorted((root / top).rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            modules[".".join(parts)] = Module(".".join(parts), path, str(path.relative_to(root)),
                                              rel.name == "__init__")
    for path in sorted(root.glob(f"{MODEL_SHELLS}/*/1/model.py")):
        name = f"{MODEL_SHELLS}.{path.parts[-3]}"      # Triton loads each shell on its own
        modules[name] = Module(name, path, str(path.relative_to(root)), False)
    return modules


def owner(dotted: str, modules: dict[str, Module]) -> str | None:
    """The module of ours that `dotted` (a module, or a name inside one) belongs to."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in modules:
            return ".".join(parts[:n])
    return None


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


class ModuleReader:
    """One module's imports of our modules, the names they bind, and its private uses across modules."""

    def __init__(self, module: Module, modules: dict[str, Module]):
        self.module, self.modules = module, modules
        self.tree = ast.parse(module.path.read_text(), filename=str(module.path))
        self.imports: list[Import] = []
        self.bindings: dict[str, str] = {}     # local name -> the dotted thing of ours it names
        self.private_uses: list[str] = []
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                self._import(node)
            elif isinstance(node, ast.ImportFrom):
                self._import_from(node)
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Attribute) and is_private(node.attr):
                self._attribute(node)

    def _where(self, node: ast.AST) -> str:
        return f"{self.module.rel}:{node.lineno}"

    def _reach(self, dotted: str, node: ast.AST) -> str | None:
        target = owner(dotted, self.modules)
        imp = Import(self.module.name, target or "", node.lineno)
        if target is not None and target != self.module.name and imp not in self.imports:
            self.imports.append(imp)
        return target

    def _import(self, node: ast.Import) -> None:
        for alias in node.names:
            if self._reach(alias.name, node) is None:
                continue
            if alias.asname:
                self.bindings[alias.asname] = alias.name
            else:
                first = alias.name.split(".")[0]
                self.bindings[first] = first

    def _base(self, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        parts = self.module.name.split(".")
        if not self.module.is_package:
            parts = parts[:-1]
        parts = parts[:len(parts) - (node.level - 1)]
        return ".".join(parts + ([node.module] if node.module else []))

    def _import_from(self, node: ast.ImportFrom) -> None:
        base = self._base(node)
        if owner(base, self.modules) is None:
            return
        for alias in node.names:
            full = f"{base}.{alias.name}"
            target = self._reach(full if full in self.modules else base, node)
            if alias.name == "*":
                continue
            self.bindings[alias.asname or alias.name] = full
            if full not in self.modules and is_private(alias.name) and target != self.module.name:
                self.private_uses.append(f"{self._where(node)}: from {base} import {alias.name}")

    def _attribute(self, node: ast.Attribute) -> None:
        chain = [node.attr]
        value = node.value
        while isinstance(value, ast.Attribute):
            chain.append(value.attr)
            value = value.value
        if not isinstance(value, ast.Name) or value.id not in self.bindings:
            return      # self._x, obj._x: not a name imported from another module
        dotted = ".".join([self.bindings[value.id]] + chain[:0:-1])
        home = owner(dotted, self.modules)
        if home is not None and home != self.module.name:
            self.private_uses.append(f"{self._where(node)}: {value.id}.{'.'.join(chain[::-1])} "
                                     f"({home}'s private name)")


def unit(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "llama_triton" else parts[0]


def read_tree(root: Path = ROOT) -> tuple[dict[str, Module], list[ModuleReader]]:
    modules = discover(root)
    return modules, [ModuleReader(m, modules) for m in modules.values()]


def reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one node."""
    nodes = set(graph) | {n for targets in graph.values() for n in targets}
    reachable = {n: reach(graph, n) for n in nodes}
    found = {frozenset({m for m in reachable[n] if n in reachable[m]} | {n}) for n in nodes}
    return sorted((c for c in found if len(c) > 1), key=sorted)


def layer_violations(readers: Iterable[ModuleReader]) -> list[str]:
    bad = []
    for r in readers:
        for imp in r.imports:
            a, b = unit(imp.importer), unit(imp.target)
            if a != b and b not in LAYERS.get(a, _LEAF):
                bad.append(f"{a} -> {b}: {r.module.rel}:{imp.line} imports {imp.target}")
    return bad


def package_cycles(modules: dict[str, Module], readers: Iterable[ModuleReader]) -> list[str]:
    """Cycles between units, and between the subpackages of every package, with the imports that make them."""
    imports = [imp for r in readers for imp in r.imports]
    found = []
    # (level, module -> its node at that level, the nodes that are packages): any cycle among the
    # units counts; inside a package, one that takes in a subpackage.
    levels: list[tuple[str, Callable[[str], str], set[str]]] = [
        ("units", unit, set(LAYERS) | {unit(m) for m in modules})]
    for pkg in sorted(n for n, m in modules.items() if m.is_package):
        def child(name: str, pkg: str = pkg) -> str:
            if not name.startswith(pkg + "."):
                return name             # outside the package: a node of its own, paths through it count
            return f"{pkg}.{name[len(pkg) + 1:].split('.')[0]}"
        subpackages = {child(n) for n, m in modules.items() if m.is_package and n.startswith(pkg + ".")}
        if subpackages:
            levels.append((pkg, child, subpackages))
    for level, node, packages in levels:
        graph: dict[str, set[str]] = defaultdict(set)
        edges: dict[tuple[str, str], list[Import]] = defaultdict(list)
        for imp in imports:
            a, b = node(imp.importer), node(imp.target)
            if a != b:
                graph[a].add(b)
                edges[(a, b)].append(imp)
        for scc in cycles(graph):
            if scc & packages:
                how = "; ".join(f"{modules[i.importer].rel}:{i.line} imports {i.target}"
                                for (a, b), imps in sorted(edges.items()) if a in scc and b in scc for i in imps[:2])
                found.append(f"[{level}] {' <-> '.join(sorted(scc))}: {how}")
    return found


def test_the_intended_layering_has_no_cycle_and_places_every_unit():
    assert not cycles({a: set(b) for a, b in LAYERS.items()}), "LAYERS itself has a cycle"
    modules = discover()
    unplaced = sorted({unit(m) for m in modules} - set(LAYERS))
    assert not unplaced, f"units the layering does not place (add them to LAYERS): {unplaced}"


def test_every_import_between_units_is_one_the_layering_allows():
    _, readers = read_tree()
    bad = layer_violations(readers)
    assert not bad, "imports the layering does not allow:\n" + "\n".join(bad)


def test_no_cycle_between_packages_at_any_depth():
    modules, readers = read_tree()
    found = package_cycles(modules, readers)
    assert not found, "package cycles:\n" + "\n".join(found)


def test_no_private_name_is_used_across_modules():
    _, readers = read_tree()
    bad = [use for r in readers for use in r.private_uses]
    assert not bad, "private names used outside their module:\n" + "\n".join(bad)


def test_the_reader_sees_what_it_must(tmp_path):
    """The checks above can fail: a small tree with a lazy cycle between two subpackages, a
    disallowed unit import, and each kind of private use, as the checks read it."""
    files = {
        "frontend/__init__.py": "",
        "frontend/a/__init__.py": "",
        "frontend/a/x.py": "def f():\n    from frontend.b import y\n    return y._hidden\n",
        "frontend/b/__init__.py": "",
        "frontend/b/y.py": "from ..a.x import f\nfrom frontend.a import x as ax\n_hidden = 1\n",
        "frontend/c.py": "from frontend.b.y import _hidden\nfrom frontend.b.y import Thing\nThing._inner\n",
        "llama_triton/__init__.py": "",
        "llama_triton/engine/__init__.py": "",
        "llama_triton/engine/e.py": "import frontend.c\n",
        "llama_triton/text/__init__.py": "",
        "llama_triton/text/t.py": "",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    modules, readers = read_tree(tmp_path)
    assert layer_violations(readers) == ["llama_triton.engine -> frontend: llama_triton/engine/e.py:1 "
                                         "imports frontend.c"]
    found = package_cycles(modules, readers)
    assert len(found) == 1 and found[0].startswith("[frontend] frontend.a <-> frontend.b:"), found
    uses = sorted(u for r in readers for u in r.private_uses)
    assert uses == ["frontend/a/x.py:3: y._hidden (frontend.b.y's private name)",
                    "frontend/c.py:1: from frontend.b.y import _hidden",
                    "frontend/c.py:3: Thing._inner (frontend.b.y's private name)"], uses
