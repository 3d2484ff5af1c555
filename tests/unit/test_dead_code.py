"""No dead or test-only code in the production modules: vulture over frontend/, llama_triton/, the
Triton model files, benchmarks/ and build/ (pyproject.toml's [tool.vulture]) finds no unused function,
class, method, property, attribute or variable that build/vulture_allowlist.py does not name."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def vulture(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vulture", *args], cwd=cwd, capture_output=True, text=True)


def test_no_unused_code_outside_the_reviewed_allowlist():
    result = vulture()
    # 0: nothing unused; 3: unused code found (each finding is one line of stdout); else a usage error
    assert result.returncode == 0, "unused code (delete it, use it, or add it to build/vulture_allowlist.py " \
                                   f"with the reason):\n{result.stdout}{result.stderr}"


def test_the_check_reports_an_unused_function_and_an_unused_class(tmp_path):
    """The configuration catches what the check is for (the project's settings, on a file of dead code)."""
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (tmp_path / "mod.py").write_text(textwrap.dedent("""
        class Unused:
            pass

        def unused_function():
            return 1
        """))
    result = vulture("mod.py", cwd=tmp_path)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "unused class 'Unused'" in result.stdout and "unused function 'unused_function'" in result.stdout
