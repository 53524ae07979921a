"""S3 round trip through the CLI, as users run it: input shards (gzipped JSONL and Parquet) and the
checkpoint in a bucket of moto's S3 server, results written back to a bucket, the endpoint given with
`--set storage.endpoint_url=...`, credentials from the environment.

The CLI process joins the test session's Ray (RAY_ADDRESS), like a driver on a cluster's head node;
the Ray workers got the dummy credentials when that Ray started."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.integration._util import explain, SMALL_RESOURCES, check_counts, read_outputs, rows, write_spec

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]

JSONL_ROWS = [
    {"id": "doc-a", "text": "Alice works at Acme in Paris."},
    {"id": "doc-b", "text": ""},  # empty: an error row
    {"id": "doc-c", "text": "Bob visited Berlin last May."},
]
PARQUET_ROWS = {"id": ["pq-1", "pq-2"], "text": ["Zoe flew to Tokyo.", "Ivan joined Siemens in Munich."]}


def _upload(fs, local_dir: str, prefix: str) -> None:
    for path in Path(local_dir).rglob("*"):
        if path.is_file():
            fs.put_file(str(path), f"{prefix}/{path.relative_to(local_dir).as_posix()}")


def test_s3_round_trip_through_the_cli(tmp_path, s3_endpoint, s3fs_client, tiny_ner_dir, ray_session):
    fs = s3fs_client
    # Inputs: one gzipped JSONL shard and one Parquet shard under one prefix.
    payload = "".join(json.dumps(r) + "\n" for r in JSONL_ROWS).encode()
    with fs.open("data/corpus/a.jsonl.gz", "wb") as f:
        f.write(gzip.compress(payload))
    buf = io.BytesIO()
    pq.write_table(pa.table(PARQUET_ROWS), buf)
    with fs.open("data/corpus/b.parquet", "wb") as f:
        f.write(buf.getvalue())
    _upload(fs, tiny_ner_dir, "models/tiny-ner")

    spec_path = write_spec(
        tmp_path / "s3-job.yaml",
        {
            "input": {"path": "s3://data/corpus/"},
            "model": {"path": "s3://models/tiny-ner/", "head": "token-classification", "max_length": 64},
            "output": {"path": "s3://results/ner/", "max_error_fraction": 1.0},  # a deliberate bad row
            "resources": SMALL_RESOURCES,
        },
    )
    env = {**os.environ, "RAY_ADDRESS": ray_session}
    cmd = [sys.executable, "-m", "pipeline", "run", str(spec_path), "--set", f"storage.endpoint_url={s3_endpoint}"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, explain(proc.stderr)
    printed = json.loads(proc.stdout)

    out = read_outputs("s3://results/ner/", fs)
    assert out["summary"] == printed
    assert out["summary"]["shards"] == 2
    check_counts(out, expect_read=5, expect_written=4, expect_errored=1)
    # String ids stay strings, in results and errors.
    for _, table in out["results"] + out["errors"]:
        assert table.schema.field("id").type == pa.string()
    assert sorted(r["id"] for r in rows(out["results"])) == ["doc-a", "doc-c", "pq-1", "pq-2"]
    (err,) = rows(out["errors"])
    assert err["id"] == "doc-b" and "text is empty" in err["error"] and err["shard"] == "a"

    # The checkpoint was copied from S3 into the (per-session) local model cache, completely.
    cache = Path(os.environ["PIPELINE_MODEL_CACHE"])
    copies = [d for d in cache.iterdir() if (d / ".complete").exists()]
    assert copies and all((d / "config.json").exists() and (d / "model.safetensors").exists() for d in copies)
