"""Check that the dependency ranges pyproject.toml claims for Ray and transformers hold.

Reads the ranges of `ray[data]` and `transformers` from `[project].dependencies`, asks the package
index (`pip index versions`) for the releases inside them, and tests these cases, each in a throwaway
venv with the project installed from this checkout (`pip install -e '.[test]'`) plus the pins:

    ray-lowest, ray-newest     the lowest / newest Ray in range, with the current transformers
    tf-lowest-N, tf-newest-N   the lowest / newest transformers N.x of each major release in range,
                               with the current Ray

("current" is the version installed where this tool runs, else the newest in range; torch is pinned
to the current one too.) Cases that pin the same versions run once. In each venv it runs the
end-to-end and parity tests (DEFAULT_TESTS), then prints a Markdown table and exits 1 if any case
failed to install or had a failing test.

    python -m tools.compat [--cases tf-lowest-5 ...] [--tests PATH ...] [--keep] [--logs DIR]

pip's and pytest's full output of each case go to DIR (a new temp folder by default, kept).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TESTS = [
    "tests/integration/test_e2e_local.py",
    "tests/integration/test_apply.py",
    "tests/unit/test_aggregation.py",
    "tests/unit/test_sequence_classification.py",
    "tests/unit/test_fill_mask.py",
    "tests/unit/test_question_answering.py",
    "tests/unit/test_embedding.py",
]
INSTALL_TIMEOUT_S = 1800
TEST_TIMEOUT_S = 1800


def declared_ranges() -> dict[str, Requirement]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    reqs = {r.name: r for r in map(Requirement, deps)}
    return {"ray": reqs["ray"], "transformers": reqs["transformers"]}


def released(name: str) -> list[Version]:
    """Final releases of `name` on the index, ascending."""
    out = subprocess.run([sys.executable, "-m", "pip", "index", "versions", name],
                         capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("Available versions:"))
    versions = []
    for v in line.split(":", 1)[1].split(","):
        try:
            versions.append(Version(v.strip()))
        except InvalidVersion:
            pass
    return sorted(v for v in versions if not v.is_prerelease and not v.is_devrelease)


def current(name: str, fallback: Version) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return str(fallback)


def plan_cases() -> dict[str, tuple[str, str]]:
    rng = declared_ranges()
    ray = [v for v in released("ray") if v in rng["ray"].specifier]
    tf = [v for v in released("transformers") if v in rng["transformers"].specifier]
    if not ray or not tf:
        sys.exit(f"no release inside {rng['ray']} / {rng['transformers']}")
    print(f"ranges: {rng['ray']} -> {len(ray)} releases; {rng['transformers']} -> {len(tf)} releases")
    ray_now, tf_now = current("ray", ray[-1]), current("transformers", tf[-1])
    cases = {"ray-lowest": (str(ray[0]), tf_now), "ray-newest": (str(ray[-1]), tf_now)}
    for major in sorted({v.major for v in tf}):  # each major release the range admits: its lowest and newest
        same = [v for v in tf if v.major == major]
        cases |= {f"tf-lowest-{major}": (ray_now, str(same[0])), f"tf-newest-{major}": (ray_now, str(same[-1]))}
    return cases


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def run_case(name: str, ray: str, tf: str, tests: list[str], keep: bool, logs: Path) -> dict:
    row = {"case": name, "ray": ray, "transformers": tf, "ok": False,
           "install": "", "tests": "-", "seconds": "-"}
    venv = Path(tempfile.mkdtemp(prefix=f"compat-{name}-"))
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "RAY_ADDRESS")}
    env |= {"VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
            "RAY_AUTH_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    try:
        print(f"\n== {name}: ray {ray}, transformers {tf} (venv {venv})", flush=True)
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pins = [f"ray[data]=={ray}", f"ray[default]=={ray}", f"transformers=={tf}"]
        try:
            pins.append(f"torch=={metadata.version('torch')}")
        except metadata.PackageNotFoundError:
            pass
        cmd = [str(py), "-m", "pip", "install", "-e", f"{REPO}[test]", *pins]
        try:
            pip = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=INSTALL_TIMEOUT_S)
            (logs / f"{name}.pip.log").write_text(pip.stdout + pip.stderr)
            error = pip.returncode and (last_line(pip.stderr) or f"pip exited {pip.returncode}")
        except subprocess.TimeoutExpired:
            error = f"timed out after {INSTALL_TIMEOUT_S} s"
        if error:
            row["install"] = f"failed: {error}"
            print(row["install"], flush=True)
            return row
        row["install"] = f"ok ({time.monotonic() - t0:.0f} s)"
        print(f"installed in {time.monotonic() - t0:.0f} s; running {len(tests)} test files", flush=True)
        t1 = time.monotonic()
        try:
            res = subprocess.run([str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                                 cwd=REPO, env=env, capture_output=True, text=True, timeout=TEST_TIMEOUT_S)
            out, rc, summary = res.stdout + res.stderr, res.returncode, last_line(res.stdout)
        except subprocess.TimeoutExpired as e:
            partial = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or ""
            out, rc, summary = partial, -1, f"timed out after {TEST_TIMEOUT_S} s"
        row["seconds"] = f"{time.monotonic() - t1:.0f}"
        (logs / f"{name}.pytest.log").write_text(out)
        counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|errors?)\b", summary)}
        bad = counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
        row["tests"] = f"{counts.get('passed', 0)}/{bad}" if counts else f"? ({summary[:60]})"
        row["ok"] = rc == 0
        print(summary, flush=True)
        failures = [ln for ln in out.splitlines() if re.match(r"(FAILED|ERROR) \S+\.py", ln)]
        for ln in failures[:10]:
            print("  " + ln[:200])
        if len(failures) > 10:
            print(f"  ... {len(failures) - 10} more in {logs / f'{name}.pytest.log'}")
        return row
    finally:
        if keep:
            print(f"kept {venv}")
        else:
            shutil.rmtree(venv, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", metavar="CASE",
                    help="run only these cases: ray-lowest, ray-newest, tf-lowest-N, tf-newest-N")
    ap.add_argument("--tests", nargs="+", default=DEFAULT_TESTS, help="test paths (relative to the repo)")
    ap.add_argument("--keep", action="store_true", help="keep the venvs")
    ap.add_argument("--logs", type=Path, help="folder for pip's and pytest's output (default: a new temp folder)")
    args = ap.parse_args(argv)
    missing = [t for t in args.tests if not (REPO / t.split("::")[0]).exists()]
    if missing:
        ap.error(f"no such test file: {', '.join(missing)}")
    logs = args.logs or Path(tempfile.mkdtemp(prefix="compat-logs-"))
    logs.mkdir(parents=True, exist_ok=True)
    print(f"logs: {logs}")

    cases, seen = {}, {}
    for name, pins in plan_cases().items():
        if args.cases and name not in args.cases:
            continue
        if pins in seen:
            print(f"{name} (ray {pins[0]}, transformers {pins[1]}) coincides with {seen[pins]}: run once")
        else:
            seen[pins] = name
            cases[name] = pins
    rows = [run_case(name, ray, tf, args.tests, args.keep, logs) for name, (ray, tf) in cases.items()]

    print("\n| case | ray | transformers | install | tests passed/failed | seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        install = r["install"].replace("|", "\\|")
        print(f"| {r['case']} | {r['ray']} | {r['transformers']} | {install} | {r['tests']} | {r['seconds']} |")
    return 0 if rows and all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
