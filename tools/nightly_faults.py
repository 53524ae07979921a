"""Resume after a killed driver, measured: the same job run through the CLI three times, each starting
its own local Ray, as a scheduler would run it.

  1. an uninterrupted run into out/full;
  2. a run into out/resumed, killed with SIGKILL (its whole process group) once about half of the
     shards have their marker;
  3. the same command again, which resumes.

Prints rows in, rows out, duplicated and lost for the resumed output, whether it equals the full
run's, and the wall time of the full run against the resumed one (start-up included in both).

  python tools/nightly_faults.py --model jobs/models/demo-ner --shards 16 --docs 400
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tools.corpus import documents  # noqa: E402


def _cli(spec: Path) -> subprocess.Popen:
    env = {**os.environ, "RAY_ADDRESS": ""}  # each run starts (and its kill ends) its own local Ray
    return subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(spec)], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)


def _spec(work: Path, model: str, out: Path) -> Path:
    path = work / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump({
        "input": {"path": str(work / "in")},
        "model": {"path": model, "head": "token-classification", "max_length": 128},
        "output": {"path": str(out)},
        "resources": {"model_actors": 1, "cpus_per_actor": 1, "tokenize_actors": 1, "postprocess_actors": 1},
    }))
    return path


def _results(out: Path) -> tuple[list, dict]:
    table = pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("part-*.parquet"))])
    ids = table.column("id").to_pylist()
    return ids, dict(zip(ids, table.column("entities").to_pylist()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="jobs/models/demo-ner", help="token-classification checkpoint")
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--docs", type=int, default=400, help="documents per shard")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="nightly-faults-"))
    (work / "in").mkdir()
    docs = documents(args.shards * args.docs, seed=7)
    for s in range(args.shards):
        with open(work / "in" / f"part-{s:03d}.jsonl", "w") as f:
            for i, text in enumerate(docs[s * args.docs : (s + 1) * args.docs]):
                f.write(json.dumps({"id": f"{s}-{i}", "text": text}) + "\n")
    rows_in = args.shards * args.docs

    started = time.time()
    full = _cli(_spec(work, args.model, work / "full"))
    full.communicate()
    full_seconds = time.time() - started
    assert full.returncode == 0, "the uninterrupted run failed"

    out = work / "resumed"
    spec = _spec(work, args.model, out)
    victim = _cli(spec)
    started = time.time()
    while len(list((out / "_shards").glob("*[!g].json"))) < args.shards // 2:  # markers, not .pending.json
        if victim.poll() is not None:
            raise SystemExit("the run finished before it could be killed; use more shards or documents")
        time.sleep(0.2)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    killed_after = time.time() - started
    done = len(list((out / "_shards").glob("*[!g].json")))

    started = time.time()
    rerun = _cli(spec)
    stdout, _ = rerun.communicate()
    resumed_seconds = time.time() - started
    summary = json.loads(stdout)

    ids, got = _results(out)
    _, expected = _results(work / "full")
    errors = summary["rows_errored"]
    print(json.dumps({
        "shards": args.shards, "shards_done_at_kill": done, "killed_after_seconds": round(killed_after, 1),
        "rows_in": rows_in, "rows_out": len(set(ids)), "rows_errored": errors,
        "duplicated": len(ids) - len(set(ids)), "lost": rows_in - len(set(ids)) - errors,
        "equals_uninterrupted_run": got == expected, "rerun_exit_code": rerun.returncode,
        "shards_resumed": summary["shards_resumed"], "shards_run": summary["shards_run"],
        "full_run_seconds": round(full_seconds, 1), "resumed_run_seconds": round(resumed_seconds, 1),
        "resumed_over_full": round(resumed_seconds / full_seconds, 2),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
