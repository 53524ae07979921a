"""`_SUCCESS` means the output is exactly the results of the shards in the input now, each once: the
real CLI (a subprocess joining the session's Ray) against an input that changes between runs and an
output folder with hostile files in it. Every case counts rows in the input, in the result files and
in the summary, duplicated and orphaned ones, and checks that nothing outside output.path moved."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.integration._util import SMALL_RESOURCES, write_jsonl, write_spec

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parents[2]
ROWS = 10  # per shard


def _docs(shard: int, n: int = ROWS, word: str = "Paris") -> list[dict]:
    return [{"id": shard * 1000 + i, "text": f"Alice flew to {word} on day {i}."} for i in range(n)]


def _spec(tmp_path: Path, src, out, **input_keys) -> Path:
    return write_spec(tmp_path / "spec.yaml", {
        "input": {"path": str(src), **input_keys},
        "model": {"path": _spec.model_dir, "head": "token-classification", "max_length": 32},
        "output": {"path": str(out)},
        "resources": SMALL_RESOURCES,
    })


@pytest.fixture(autouse=True)
def _model(tiny_ner_dir):
    _spec.model_dir = tiny_ner_dir


def _cli(ray_session, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": ray_session}
    return subprocess.run([sys.executable, "-m", "pipeline", "run", *map(str, args)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def _input_ids(src: Path) -> list:
    ids = []
    for path in sorted(src.iterdir()):
        if path.suffix == ".parquet":
            ids += pq.read_table(path).column("id").to_pylist()
        else:
            ids += [json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()]
    return ids


def _counts(src: Path, out: Path) -> dict:
    """What a reader of the output folder sees: one result row per document (document granularity)."""
    tables = [pq.read_table(p) for p in sorted(out.glob("*.parquet"))]
    in_files = pa.concat_tables(tables).column("id").to_pylist() if tables else []
    wanted = set(_input_ids(src))
    summary = json.loads((out / "_SUMMARY.json").read_text())
    return {"input": len(_input_ids(src)), "files": len(in_files), "summary": summary["rows_read"],
            "duplicated": len(in_files) - len(set(in_files)), "orphaned": len(set(in_files) - wanted),
            "success": (out / "_SUCCESS").exists()}


def _snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()}


def test_a_renamed_and_a_deleted_shard_refuse_the_run_until_retired(tmp_path, ray_session):
    src, out = tmp_path / "in", tmp_path / "out"
    for s in (14, 15, 16):
        write_jsonl(src / f"s{s}.jsonl", _docs(s))
    spec = _spec(tmp_path, src, out)
    first = _cli(ray_session, spec)
    assert first.returncode == 0, first.stderr
    assert _counts(src, out) == {"input": 30, "files": 30, "summary": 30, "duplicated": 0, "orphaned": 0,
                                 "success": True}

    (src / "s14.jsonl").rename(src / "s14b.jsonl")
    (src / "s15.jsonl").unlink()
    before = _snapshot(out)
    refused = _cli(ray_session, spec)
    assert refused.returncode == 2, refused.stderr
    assert "2 shard(s) no longer in the input: s14 (from" in refused.stderr and "--retire" in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("error: output.path:")
    # _SUCCESS withdrawn (the output is not the input's results), nothing else removed.
    assert _snapshot(out) == {rel: v for rel, v in before.items() if rel != "_SUCCESS"}

    # A dead run's leftovers, cleared by the next run that finishes.
    for rel in ("._PROGRESS.json.tmp-0123abcd", "_shards/.s16.json.tmp-89abcdef",
                "_staging/s15/r000000000000-0123456789ab.parquet"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(b"left by a full disk")
    (out / "NOTES.tmp").write_text("mine")
    retired = _cli(ray_session, spec, "--retire")
    assert retired.returncode == 0, retired.stderr
    summary = json.loads(retired.stdout)
    assert summary["shards_retired"] == ["s14", "s15"] and summary["shards_resumed"] == 1
    assert _counts(src, out) == {"input": 20, "files": 20, "summary": 20, "duplicated": 0, "orphaned": 0,
                                 "success": True}
    assert not (out / "_staging").exists() and not list(out.rglob("*.tmp-*"))
    assert sorted(p.name for p in (out / "_shards").iterdir()) == ["s14b.json", "s16.json"]
    assert (out / "NOTES.tmp").read_text() == "mine"
    assert _snapshot(out)["s16-00000.parquet"] == before["s16-00000.parquet"]  # resumed, not redone


def test_a_shard_edited_in_place_with_its_mtime_put_back_is_redone(tmp_path, ray_session):
    src, out = tmp_path / "in", tmp_path / "out"
    write_jsonl(src / "a.jsonl", _docs(1))
    write_jsonl(tmp_path / "elsewhere" / "b.jsonl", _docs(2))
    (src / "b.jsonl").symlink_to(tmp_path / "elsewhere" / "b.jsonl")  # read through the link, not skipped
    spec = _spec(tmp_path, src, f"file://{out}")  # a file:// output is that folder, not one named `file:`
    first = _cli(ray_session, spec)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["shards"] == 2 and not (REPO_ROOT / "file:").exists()
    assert _counts(src, out) == {"input": 20, "files": 20, "summary": 20, "duplicated": 0, "orphaned": 0,
                                 "success": True}

    # Same size, mtime put back (`touch -r`): "Paris" -> "Tokyo" in every row.
    path = src / "a.jsonl"
    stat = path.stat()
    path.write_text(path.read_text().replace("Paris", "Tokyo"))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    again = _cli(ray_session, spec)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert (summary["shards_run"], summary["shards_resumed"]) == (1, 1)
    assert _counts(src, out) == {"input": 20, "files": 20, "summary": 20, "duplicated": 0, "orphaned": 0,
                                 "success": True}
    words = [e["word"] for e in pq.read_table(out / "a-00000.parquet").column("entities").to_pylist()[0]]
    assert "paris" not in " ".join(words).lower()

    # input.verify: checksum - the identity is the content's; switching redoes every shard once.
    checked = _cli(ray_session, _spec(tmp_path, src, out, verify="checksum"))
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["shards_run"] == 2
    marker = json.loads((out / "_shards" / "a.json").read_text())
    assert marker["identity"].keys() == {"size", "sha256"}


def test_a_shard_beside_another_of_its_stem_gets_its_own_key_and_renames_nothing(tmp_path, ray_session):
    src, out = tmp_path / "in", tmp_path / "out"
    write_jsonl(src / "s00.jsonl", _docs(0))
    spec = _spec(tmp_path, src, out)
    assert _cli(ray_session, spec).returncode == 0
    before = _snapshot(out)

    pq.write_table(pa.table({"id": [9000 + i for i in range(ROWS)],
                             "text": [f"Bob met Carol in Rome, day {i}." for i in range(ROWS)]}), src / "s00.parquet")
    second = _cli(ray_session, spec)
    assert second.returncode == 0, second.stderr
    assert (json.loads(second.stdout)["shards_run"], json.loads(second.stdout)["shards_resumed"]) == (1, 1)
    assert _counts(src, out) == {"input": 20, "files": 20, "summary": 20, "duplicated": 0, "orphaned": 0,
                                 "success": True}
    after = _snapshot(out)
    assert after["s00-00000.parquet"] == before["s00-00000.parquet"]  # the jsonl shard keeps its key and files
    assert "s00.parquet-00000.parquet" in after


def test_hostile_files_where_the_job_reads_are_refused_and_nothing_outside_moves(tmp_path, ray_session):
    src, out = tmp_path / "in", tmp_path / "out"
    write_jsonl(src / "a.jsonl", _docs(1))
    (tmp_path / "victim.txt").write_text("not the job's")
    # An output that is a symlink to the input folder: refused, the input untouched.
    (tmp_path / "alias").symlink_to(src)
    inputs = _snapshot(src)
    aliased = _cli(ray_session, _spec(tmp_path, src, tmp_path / "alias"))
    assert aliased.returncode == 2 and "lies inside or contains input.path" in aliased.stderr, aliased.stderr
    assert _snapshot(src) == inputs

    # A hand-made marker naming a file outside the output: refused by a resume and by --fresh alike.
    (out / "_shards").mkdir(parents=True)
    (out / "_shards" / "evil.json").write_text(json.dumps({"key": "evil", "files": ["../victim.txt"]}))
    spec = _spec(tmp_path, src, out)
    for extra in ((), ("--fresh",), ("--retire",)):
        proc = _cli(ray_session, spec, *extra)
        assert proc.returncode == 2, proc.stderr
        assert "_shards/evil.json" in proc.stderr.strip().splitlines()[-1], proc.stderr
        assert (tmp_path / "victim.txt").read_text() == "not the job's"
    assert sorted(p.name for p in out.rglob("*")) == ["_shards", "evil.json"]
