"""The linter, as part of the tests: no unused imports or names, no undefined names, no syntax errors."""

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_ruff_finds_nothing():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "F,E9", "--no-cache", "pipeline", "tests",
                           "jobs"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# Functions allowed more than six parameters: none any more.
MANY_PARAMETERS: set[tuple[str, str]] = set()


def test_no_function_takes_more_than_six_parameters():
    """Decided once, handed on as a typed object: a function that needs more takes the object
    (job.Run, placement.Placement, sinks.Finalizing, markers.Request, summary.Progress)."""
    import ast

    found = set()
    for path in sorted((REPO_ROOT / "pipeline").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ("self", "cls")]
                if len(names) > 6:
                    found.add((path.relative_to(REPO_ROOT).as_posix(), node.name))
    assert found == MANY_PARAMETERS


def test_rays_private_modules_are_used_in_raycompat_only():
    """pyproject.toml's Ray range is the one tested; what a newer Ray may break is in one module."""
    import re

    private = re.compile(r"\bray\.(_private|_raylet|data\._internal)\b|\._from_parent\b|_global_node")
    found = [f"{path.relative_to(REPO_ROOT)}:{n}" for path in sorted((REPO_ROOT / "pipeline").rglob("*.py"))
             if path.name != "raycompat.py"
             for n, line in enumerate(path.read_text().splitlines(), 1) if private.search(line)]
    assert not found, found
    assert private.search((REPO_ROOT / "pipeline" / "raycompat.py").read_text())  # the pattern still finds them
