"""docs/ARCHITECTURE.md's code map names every module of frontend/ and llama_triton/, and every
path it names exists."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _code_map() -> str:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    return text[text.index("## Code map"):]


def test_every_module_is_on_the_code_map():
    code_map = _code_map()
    rows = [line for line in code_map.splitlines() if line.startswith("|")]
    missing = []
    for path in sorted((ROOT / "frontend").rglob("*.py")) + sorted((ROOT / "llama_triton").rglob("*.py")):
        if path.name == "__init__.py":
            continue
        rel = path.relative_to(ROOT)
        package = rel.parent.name    # frontend, engine, text, ...
        # the row names the file, and its package is named in the row or in its group's heading
        ok = False
        group = ""
        for row in rows:
            if row.startswith("| **"):
                group = row
                continue
            if re.search(rf"(^|[`/ ]){re.escape(path.name)}`", row) and (f"{package}/" in row or f"{package}/" in group):
                ok = True
                break
        if not ok:
            missing.append(str(rel))
    assert not missing, f"not on the ARCHITECTURE.md code map: {missing}"


def test_every_full_path_on_the_code_map_exists():
    for path in re.findall(r"`((?:frontend|llama_triton|tests|model_repository|build|benchmarks)/[^`]*)`", _code_map()):
        assert list(ROOT.glob(path)) if "*" in path else (ROOT / path).exists(), path
