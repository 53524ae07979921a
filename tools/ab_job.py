"""Two commits of the job, timed in alternating whole runs on the bench corpus: how a start-up or
speed change is shown on a shared, noisy machine (one run moves 10-20% with the neighbours' load;
a pair run back to back moves together).

    python -m tools.ab_job BASE [NEW] [--pairs 5] [--docs 3000] [--model DIR]

Each commit is checked out as a git worktree in a temporary folder; each run is
`python -m pipeline run SPEC --fresh` with PYTHONPATH set to that worktree (Ray's workers inherit
it), timed from its start to its exit. NEW defaults to the working tree as it is. The order
alternates (A B, B A, ...). Prints each run, each commit's median, and how many pairs NEW won.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def _worktree(commit: str, where: Path) -> Path:
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(where), commit], cwd=REPO, check=True)
    return where


def _run(tree: Path, spec: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "RAY_AUTH_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(spec), "--fresh"], cwd=tree, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the job at {tree} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="the commit to compare against")
    parser.add_argument("new", nargs="?", default=None, help="a commit (default: the working tree)")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--docs", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=str(REPO / "jobs/models/demo-ner"))
    args = parser.parse_args(argv)
    from tools.corpus import documents

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trees = {"A": _worktree(args.base, tmp / "a")}
        trees["B"] = _worktree(args.new, tmp / "b") if args.new else REPO
        try:
            corpus = tmp / "corpus.jsonl"
            corpus.write_text("".join(json.dumps({"id": i, "text": t}) + "\n"
                                      for i, t in enumerate(documents(args.docs, seed=args.seed, long_tail=True))))
            spec = tmp / "spec.yaml"
            spec.write_text(yaml.safe_dump({
                "input": {"path": str(corpus)},
                "model": {"path": str(Path(args.model).resolve()), "head": "token-classification"},
                "output": {"path": str(tmp / "out")},
            }))
            print(f"A = {args.base}, B = {args.new or 'the working tree'}; {args.docs} documents; {args.pairs} pairs",
                  flush=True)
            walls: dict[str, list[float]] = {"A": [], "B": []}
            for pair in range(args.pairs):
                for name in ("A", "B") if pair % 2 == 0 else ("B", "A"):
                    walls[name].append(_run(trees[name], spec))
                    print(f"pair {pair + 1}: {name} {walls[name][-1]:.1f} s", flush=True)
        finally:
            for name in ("A", "B"):
                if trees[name] != REPO:
                    subprocess.run(["git", "worktree", "remove", "--force", str(trees[name])], cwd=REPO)
    won = sum(b < a for a, b in zip(walls["A"], walls["B"]))
    for name, values in walls.items():
        print(f"{name}: median {statistics.median(values):.1f} s ({', '.join(f'{v:.1f}' for v in sorted(values))})")
    print(f"B faster in {won} of {args.pairs} pairs")


if __name__ == "__main__":
    main()
