"""`make test` on a fresh machine (issue 24, finding 16): the system packages the tests need come
from one list (build/system-packages.txt) through one script that the Makefile runs, and .ci/run
through it: installed with apt-get as root, otherwise a stop at once with the one command to run."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "build" / "system_packages.sh"
LIST = ROOT / "build" / "system-packages.txt"


def packages(path: Path) -> list[str]:
    return [w for line in path.read_text().splitlines() for w in line.split("#", 1)[0].split()]


def run_as_nobody(listed: str) -> subprocess.CompletedProcess:
    """The script, given this list, as a user who cannot install anything (setpriv when the suite
    runs as root). The list comes on stdin: that user may not read the test's temporary files."""
    cmd = [str(SCRIPT), "-"]
    if os.geteuid() == 0:
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    return subprocess.run(cmd, input=listed, capture_output=True, text=True, timeout=60)


def test_one_list_has_what_the_suite_needs():
    assert {"chromium", "postgresql"} <= set(packages(LIST))


def test_without_root_a_missing_package_stops_at_once_with_the_command():
    r = run_as_nobody("dpkg   # installed on every Debian\nllama-triton-no-such-package\n")
    assert r.returncode == 1
    assert "sudo apt-get install -y llama-triton-no-such-package\n" in r.stderr
    assert "dpkg" not in r.stderr.split("install -y", 1)[1]       # only what is missing


def test_nothing_to_do_when_everything_is_installed():
    r = run_as_nobody("dpkg\n")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_make_test_and_ci_use_the_script():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: .*\bsystem-packages\b", makefile, re.M)
    assert re.search(r"^system-packages:\n\t@build/system_packages.sh$", makefile, re.M)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "apt-get install -y -q chromium" not in ci
