"""frontend/ is grouped by concern (docs/ARCHITECTURE.md, "Code map"): each package directly under
frontend/ is a group, and each top-level module (settings.py, errors.py, __main__.py) a group of one.

* A group is entered only through its package: another group's module imports
  `from frontend.<group> import name`, with `name` in that package's `__all__`, never
  `frontend.<group>.<submodule>`.
* Inside a group, modules import each other by their submodule path, never through their own
  package (whose `__init__` imports them: a cycle at import time).
* The groups' dependency graph (every import, lazy ones included) has no cycle.
* No module of frontend/ or llama_triton/ is over 550 lines.

The imports are read from the source (ast), so a lazy import inside a function counts too.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FRONTEND = ROOT / "frontend"
MAX_LINES = 550


def _group_of_path(front: Path, path: Path) -> str:
    return path.relative_to(front).parts[0].removesuffix(".py")


def _package_groups(front: Path) -> set[str]:
    return {p.name for p in front.iterdir() if p.is_dir() and (p / "__init__.py").exists()}


def _modules(front: Path) -> list[Path]:
    return sorted(p for p in front.rglob("*.py") if p.parent != front or p.name != "__init__.py")


def _frontend_imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, imported names) of every `frontend...` import in the file; `import frontend.x`
    gives the module and no names."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "frontend":
            out.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == "frontend"]
    return out


def _target_group(module: str, names: list[str]) -> list[str]:
    """The groups an import statement reaches: `frontend.G...` -> G; `from frontend import a, b` -> a, b."""
    parts = module.split(".")
    return [parts[1]] if len(parts) > 1 else names


def _is_submodule(package: Path, name: str) -> bool:
    return (package / f"{name}.py").exists() or (package / name / "__init__.py").exists()


def _exports(front: Path, group: str) -> set[str]:
    tree = ast.parse((front / group / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return set()


def group_violations(front: Path) -> list[str]:
    packages = _package_groups(front)
    bad = []
    for path in _modules(front):
        own = _group_of_path(front, path)
        is_init = path.name == "__init__.py" and path.parent.name in packages
        where = path.relative_to(front.parent)
        for line, module, names in _frontend_imports(path):
            parts = module.split(".")
            for target in _target_group(module, names):
                if target not in packages:
                    continue             # a top-level module: settings, errors
                if target == own:
                    # `from frontend.<own> import <submodule>` is a submodule path; a name of the
                    # package's __init__ is not
                    names_of_init = [n for n in names if not _is_submodule(front / own, n)]
                    if len(parts) == 2 and names_of_init and not is_init:
                        bad.append(f"{where}:{line}: imports {names_of_init} through its own group's package")
                    continue
                if len(parts) != 2:
                    bad.append(f"{where}:{line}: imports {module if len(parts) > 2 else 'frontend.' + target} "
                               f"past the {target} group's package")
                    continue
                missing = sorted(set(names) - _exports(front, target))
                if missing:
                    bad.append(f"{where}:{line}: imports {missing} from frontend.{target}, which does not export them "
                               f"(__all__)")
    return bad


def group_graph(front: Path) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    groups = _package_groups(front) | {p.stem for p in front.glob("*.py") if p.name != "__init__.py"}
    for path in _modules(front):
        own = _group_of_path(front, path)
        deps = graph.setdefault(own, set())
        for _line, module, names in _frontend_imports(path):
            deps.update(t for t in _target_group(module, names) if t in groups and t != own)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of the graph as a path [a, b, ..., a], or [] when it has none."""
    state: dict[str, int] = {}      # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_groups_are_entered_through_their_package_only():
    bad = group_violations(FRONTEND)
    assert not bad, "\n".join(bad)


def test_the_group_graph_has_no_cycle():
    graph = group_graph(FRONTEND)
    assert len(graph) > 5 and any(graph.values()), graph      # the groups and their imports were read
    assert not find_cycle(graph), f"frontend groups import each other in a cycle: {' -> '.join(find_cycle(graph))}"


def test_no_production_module_is_over_550_lines():
    """frontend/ and llama_triton/ alike (issue 28): a module past a screenful of screens holds several jobs."""
    modules = _modules(FRONTEND) + sorted((ROOT / "llama_triton").rglob("*.py"))
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in modules}
    assert len(sizes) > 80, sizes        # the modules of both trees were read
    over = {path: n for path, n in sizes.items() if n > MAX_LINES}
    assert not over, f"over {MAX_LINES} lines, split them by job: {over}"


# The checks themselves, on made-up trees: each would catch what it is for.

def test_a_cycle_is_found():
    assert find_cycle({"http": {"openai"}, "openai": {"decoder"}, "decoder": {"http"}}) == \
        ["decoder", "http", "openai", "decoder"]
    assert find_cycle({"http": {"openai", "decoder"}, "openai": {"decoder"}, "decoder": set()}) == []


def test_a_submodule_import_across_groups_is_found(tmp_path):
    front = tmp_path / "frontend"
    for group in ("http", "openai"):
        (front / group).mkdir(parents=True)
    (front / "__init__.py").write_text("")
    (front / "openai" / "__init__.py").write_text("from frontend.openai.service import Service\n"
                                                  "__all__ = ['Service']\n")
    (front / "openai" / "service.py").write_text("class Service: ...\nclass Hidden: ...\n")
    (front / "http" / "__init__.py").write_text("__all__ = []\n")
    (front / "http" / "app.py").write_text("from frontend.openai.service import Service\n"
                                           "from frontend.openai import Hidden\n"
                                           "from frontend.openai import Service\n"
                                           "def later():\n    import frontend.openai.service\n")
    (front / "http" / "routes.py").write_text("from frontend.http import create_app\nfrom frontend.http import app\n")
    bad = group_violations(front)
    assert any("app.py:1:" in b and "past the openai group's package" in b for b in bad), bad
    assert any("app.py:2:" in b and "Hidden" in b for b in bad), bad
    assert any("app.py:5:" in b and "past the openai group's package" in b for b in bad), bad   # lazy imports too
    assert any("routes.py:1:" in b and "its own group's package" in b for b in bad), bad
    assert not any("routes.py:2:" in b for b in bad), bad
    assert not any("app.py:3:" in b for b in bad), bad
    assert group_graph(front) == {"http": {"openai"}, "openai": set()}
