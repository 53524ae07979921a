"""Bad input fails alone (issue 20), through the real CLI joining the session's Ray: a Parquet shard with
bytes that are not UTF-8 in its text column, and a JSONL shard with a byte order mark and ids
[7001, "007", 7, "7", 7001], beside a good shard. The run completes; the bad value is one error row; the
BOM is no error; the ids become strings ("007" stays apart from "7"), and the two repeated ids of the
JSONL shard are counted as duplicates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.output import SUCCESS
from tests.integration._util import SMALL_RESOURCES, concat, explain, read_outputs, write_jsonl, write_spec

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parents[2]

GOOD_IDS = list(range(1001, 1021))
ODD_IDS = [7001, "007", 7, "7", 7001]
PARQUET_TEXTS = [b"Carol lives in Rome.", b"Dave \xff\xfe went to Oslo.", b"Eve works at Acme.", b"Frank met Grace."]


def _cli(ray_session, *args) -> subprocess.CompletedProcess:
    """The CLI as users run it, a driver joining the session's Ray (as in test_cli_run.py)."""
    env = {**os.environ, "RAY_ADDRESS": ray_session}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def _parquet_with_unchecked_text(path, ids, texts):
    """What a writer that does not check UTF-8 leaves: a string (UTF8-annotated) column holding raw bytes."""
    offsets = np.cumsum([0] + [len(t) for t in texts]).astype(np.int32)
    text = pa.Array.from_buffers(pa.string(), len(texts), [None, pa.py_buffer(offsets.tobytes()),
                                                           pa.py_buffer(b"".join(texts))])
    pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "text": text}), path)


def test_bad_input_fails_alone(tmp_path, tiny_ner_dir, ray_session):
    src, out = tmp_path / "in", tmp_path / "out"
    write_jsonl(src / "good.jsonl", [{"id": i, "text": f"Alice met Bob in Paris, day {i}."} for i in GOOD_IDS])
    odd = b"".join(json.dumps({"id": v, "text": f"Zoe visited Berlin, note {n}."}).encode() + b"\n"
                   for n, v in enumerate(ODD_IDS))
    (src / "ids.jsonl").write_bytes(b"\xef\xbb\xbf" + odd)
    _parquet_with_unchecked_text(src / "bad.parquet", [201, 202, 203, 204], PARQUET_TEXTS)
    spec = write_spec(tmp_path / "spec.yaml", {
        "input": {"path": str(src)},
        "model": {"path": tiny_ner_dir, "head": "token-classification", "max_length": 32},
        # Per-token rows: a document's several rows count once as a duplicate.
        "output": {"path": str(out), "granularity": "token"},
        "resources": SMALL_RESOURCES,
    })

    proc = _cli(ray_session, "run", str(spec))
    assert proc.returncode == 0, explain(proc.stderr)
    assert (out / SUCCESS).exists()
    outputs = read_outputs(str(out))
    summary = outputs["summary"]
    assert summary == json.loads(proc.stdout)

    # Rows in: 20 + 5 + 4. One error row (the Parquet value); the BOM and the odd ids are none.
    assert (summary["rows_read"], summary["rows_written"], summary["rows_errored"]) == (29, 28, 1)
    assert summary["duplicate_ids"] == 2  # the second "7" (from 7 and "7") and the second "7001"
    assert summary["top_errors"] == {"text is not valid UTF-8 (invalid start byte)": 1}

    errors = concat(outputs["errors"]).to_pylist()
    assert errors == [{"id": "202", "error": "text is not valid UTF-8 (invalid start byte)", "shard": "bad", "row": 1}]

    results = concat(outputs["results"])
    assert results.schema.field("id").type == pa.string()  # strings win: one string id in one shard
    assert results.num_rows == summary["output_rows"]
    documents = [(i, t) for i, t in zip(results.column("id").to_pylist(), results.column("token_index").to_pylist())
                 if t == 0]
    assert len(documents) == summary["rows_written"] == 28  # every document, duplicates included
    assert sorted({i for i, _ in documents}) == sorted(
        [str(i) for i in GOOD_IDS] + ["7001", "007", "7"] + ["201", "203", "204"])  # 26 distinct ids
    odd_ids = [i for i, _ in documents if i in {"7001", "007", "7"}]
    assert odd_ids == ["7001", "007", "7", "7", "7001"]  # in input order; "007" is never 7

    markers = {p.stem: json.loads(p.read_text()) for p in (out / "_shards").glob("*.json")}
    assert {k: (m["rows"], m["rows_errored"], m["duplicate_ids"]) for k, m in markers.items()} == {
        "good": (20, 0, 0), "ids": (5, 0, 2), "bad": (4, 1, 0)}
