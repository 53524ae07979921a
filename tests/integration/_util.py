"""Helpers for the end-to-end tests: write inputs, read a job's outputs back (local or s3://)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import yaml

# Fractional CPUs so that the three actor pools (1.5 CPUs) and a read / write task fit in the session's
# two logical CPUs; torch in the model actor runs one thread.
SMALL_RESOURCES = {"model_actors": 1, "cpus_per_actor": 0.5, "tokenize_actors": 1, "postprocess_actors": 1}


def write_jsonl(path: Path, lines: list) -> Path:
    """Write lines as given: dicts become JSON, strings are written raw (to make invalid lines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for line in lines:
            f.write((json.dumps(line) if isinstance(line, dict) else line) + "\n")
    return path


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def read_outputs(root: str, fs=None) -> dict:
    """A job's outputs under `root`: {"summary": dict, "results": [(file, table)], "errors": [(file, table)]}.
    `fs` is an fsspec filesystem for s3:// roots (None: local)."""
    if fs is None:
        base = Path(root)
        summary = json.loads((base / "_SUMMARY.json").read_text())
        results = [(p.name, pq.read_table(p)) for p in sorted(base.glob("*.parquet"))]
        errors = [(p.name, pq.read_table(p)) for p in sorted((base / "_errors").glob("*.parquet"))]
        return {"summary": summary, "results": results, "errors": errors}
    bare = root.split("://", 1)[-1].rstrip("/")
    with fs.open(f"{bare}/_SUMMARY.json") as f:
        summary = json.load(f)

    def tables(prefix: str) -> list:
        out = []
        for p in sorted(fs.glob(f"{prefix}/*.parquet")):
            with fs.open(p, "rb") as f:
                out.append((p.rsplit("/", 1)[-1], pq.read_table(f)))
        return out

    return {"summary": summary, "results": tables(bare), "errors": tables(f"{bare}/_errors")}


def concat(tables: list) -> pa.Table | None:
    """All rows of [(file, table)] in one table (files of one run share a schema)."""
    if not tables:
        return None
    return pa.concat_tables([t for _, t in tables])


def rows(tables: list) -> list[dict]:
    return [r for _, t in tables for r in t.to_pylist()]


def check_counts(out: dict, expect_read: int, expect_written: int, expect_errored: int) -> None:
    """rows read = written + errored, in the summary and in the files."""
    s = out["summary"]
    assert s["status"] == "complete"
    assert (s["rows_read"], s["rows_written"], s["rows_errored"]) == (expect_read, expect_written, expect_errored)
    assert s["rows_read"] == s["rows_written"] + s["rows_errored"]
    assert sum(t.num_rows for _, t in out["errors"]) == s["rows_errored"]
    assert sum(t.num_rows for _, t in out["results"]) == s["output_rows"]
    # Every input row is accounted for exactly once: as output (its id) or as an error row.
    result_ids = {r["id"] for r in rows(out["results"])}
    assert len(result_ids) == s["rows_written"]


def explain(stderr: str) -> str:
    """What a failed CLI run printed: from a crash's "Fatal Python error" (with the threads' stacks
    that follow it) when there is one, else the end."""
    crash = stderr.find("Fatal Python error")
    return stderr[crash : crash + 6000] if crash >= 0 else stderr[-3000:]
