"""The linter, as part of the tests: no unused imports or names, no undefined names, no syntax errors."""

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_ruff_finds_nothing():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "F,E9", "--no-cache", "pipeline", "tests",
                           "jobs"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
