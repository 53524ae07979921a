"""The `_SUCCESS` contract's cases (issue 20) through the CLI of a checkout, with the counts a reader of
the output sees: rows in the input now, rows in the result files, rows in the summary, duplicated and
orphaned ids, whether `_SUCCESS` stands. Run it against two checkouts to compare them:

  python tools/success_cases.py .                      # this checkout
  git worktree add /tmp/before <rev> && python tools/success_cases.py /tmp/before

Builds a tiny token-classification checkpoint (tests/models.py) and works under a temporary folder.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

REPO = str(Path(sys.argv[1]).resolve()) if len(sys.argv) > 1 else "."
ROOT = Path(tempfile.mkdtemp(prefix="success-cases-")) / "case"
MODEL = ROOT.parent / "model"


def cli(spec, *args):
    p = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(spec), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    return p.returncode, (p.stderr.strip().splitlines() or [""])[-1][:140]


def docs(s, n=100):
    return [{"id": s * 1000 + i, "text": f"Alice flew to Paris on day {i}."} for i in range(n)]


def write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def spec(src, out, name="spec"):
    p = ROOT / f"{name}.yaml"
    p.write_text(
        yaml.safe_dump(
            {
                "input": {"path": str(src)},
                "model": {"path": str(MODEL), "head": "token-classification"},
                "output": {"path": str(out)},
            }
        )
    )
    return p


def input_ids(src):
    ids = []
    for p in sorted(Path(src).iterdir()):
        ids += (
            pq.read_table(p).column("id").to_pylist()
            if p.suffix == ".parquet"
            else [json.loads(line)["id"] for line in p.read_text().splitlines()]
        )
    return ids


def counts(src, out):
    got = [i for f in sorted(glob.glob(f"{out}/*.parquet")) for i in pq.read_table(f).column("id").to_pylist()]
    want = set(input_ids(src))
    s = json.loads(Path(out, "_SUMMARY.json").read_text()) if Path(out, "_SUMMARY.json").exists() else {}
    return dict(
        input=len(input_ids(src)),
        files=len(got),
        summary=s.get("rows_read"),
        duplicated=len(got) - len(set(got)),
        orphaned=len(set(got) - want),
        success=Path(out, "_SUCCESS").exists(),
    )


def fresh_dir():
    shutil.rmtree(ROOT, ignore_errors=True)
    ROOT.mkdir(parents=True)


def main():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.models import build_bert

    build_bert(MODEL, head="token-classification", seed=1)
    fresh_dir()
    src, out = ROOT / "in", ROOT / "out"
    for s in range(14, 17):
        write(src / f"s{s}.jsonl", docs(s))
    cli(spec(src, out))
    (src / "s14.jsonl").rename(src / "s14b.jsonl")
    (src / "s15.jsonl").unlink()
    rc, line = cli(spec(src, out))
    print("renamed+deleted:", "exit", rc, counts(src, out), "|", line)
    if rc != 0:
        rc, line = cli(spec(src, out), "--retire")
        print("  then --retire:", "exit", rc, counts(src, out))

    fresh_dir()
    write(src / "s00.jsonl", docs(0))
    cli(spec(src, out))
    pq.write_table(
        pa.table({"id": [9000 + i for i in range(100)], "text": [f"Bob met Carol in Rome {i}." for i in range(100)]}),
        src / "s00.parquet",
    )
    rc, line = cli(spec(src, out))
    print("same stem added:", "exit", rc, counts(src, out), sorted(p.name for p in (out / "_shards").iterdir()))

    fresh_dir()
    write(src / "a.jsonl", docs(1))
    cli(spec(src, out))
    st = (src / "a.jsonl").stat()
    (src / "a.jsonl").write_text((src / "a.jsonl").read_text().replace("Paris", "Tokyo"))
    os.utime(src / "a.jsonl", ns=(st.st_atime_ns, st.st_mtime_ns))
    p = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(spec(src, out))],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    print(
        "edited in place, touch -r:", "exit", p.returncode, "shards redone:", json.loads(p.stdout)["shards_run"], "of 1"
    )

    fresh_dir()
    write(src / "a.jsonl", docs(1))
    pq.write_table(pa.table({"id": [5], "text": ["x y"]}), src / "b.parquet")
    (ROOT / "alias").symlink_to(src)
    before = sorted(p.name for p in src.iterdir())
    rc, line = cli(spec(src, ROOT / "alias"))
    print(
        "output symlink to input:",
        "exit",
        rc,
        "files added to the input folder:",
        len(sorted(p.name for p in src.iterdir())) - len(before),
        "|",
        line[:60],
    )

    fresh_dir()
    write(src / "a.jsonl", docs(1))
    (ROOT / "elsewhere").mkdir()
    write(ROOT / "elsewhere" / "b.jsonl", docs(2))
    (src / "b.jsonl").symlink_to(ROOT / "elsewhere" / "b.jsonl")
    os.chdir(ROOT)
    rc, line = cli(spec(src, f"file://{out}"))
    s = json.loads(Path(out, "_SUMMARY.json").read_text()) if Path(out, "_SUMMARY.json").exists() else {}
    print(
        "file:// output + symlinked shard:",
        "exit",
        rc,
        "shards",
        s.get("shards"),
        "rows",
        s.get("rows_read"),
        "folder named file: made:",
        any(Path(REPO).glob("file:")) or Path(ROOT, "file:").exists(),
    )

    fresh_dir()
    write(src / "a.jsonl", docs(1))
    (ROOT / "victim.txt").write_text("mine")
    (out / "_shards").mkdir(parents=True)
    (out / "_shards" / "evil.json").write_text(
        json.dumps({"key": "evil", "files": ["../victim.txt"], "error_files": []})
    )
    rc, line = cli(spec(src, out), "--fresh")
    print("evil marker + --fresh:", "exit", rc, "victim exists:", (ROOT / "victim.txt").exists(), "|", line)


if __name__ == "__main__":
    main()
