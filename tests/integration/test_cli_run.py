"""The CLI run as users run it (a subprocess joining the session's Ray, as a driver on a cluster's
head does): stdout carries only the summary JSON, progress goes to stderr without Ray's own notices,
and `--limit N` runs the first N rows end to end without marking the input done."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.output import SUCCESS, SUMMARY
from tests.integration._util import SMALL_RESOURCES, concat, read_outputs, write_jsonl, write_spec

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parents[2]


def _corpus(root: Path) -> Path:
    for shard in range(3):
        write_jsonl(root / f"part-{shard}.jsonl",
                    [{"id": shard * 100 + i, "text": f"Alice met Bob in Paris, day {i}."} for i in range(30)])
    return root


def _cli(ray_session, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": ray_session}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def test_limit_runs_the_first_rows_and_a_full_run_completes_them(tmp_path, tiny_ner_dir, ray_session):
    from pipeline.job import run
    from pipeline.spec import load_spec

    src = _corpus(tmp_path / "in")
    out = tmp_path / "out"
    spec = write_spec(tmp_path / "spec.yaml", {
        "input": {"path": str(src)},
        "model": {"path": tiny_ner_dir, "head": "token-classification", "max_length": 32},
        "output": {"path": str(out)},
        "resources": SMALL_RESOURCES,
    })
    proc = _cli(ray_session, "run", str(spec), "--limit", "45")
    assert proc.returncode == 0, proc.stderr

    # stdout: the summary JSON and nothing else; stderr: our progress, none of Ray's notices.
    summary = json.loads(proc.stdout)
    assert summary == json.loads((out / SUMMARY).read_text())
    for noise in ("core_worker", "Progress bars", "\x1b[", "WARNING", "INFO"):
        assert noise not in proc.stderr, proc.stderr
    *_, progress, done = proc.stderr.splitlines()
    assert "45/45 rows" in progress and done == f"done: results in {out}, report {out}/_REPORT.html", proc.stderr

    # The first 45 rows: all of part-0 and the first 15 of part-1; part-2 untouched.
    assert summary["status"] == "limited" and summary["limit"] == 45
    assert summary["rows_read"] == summary["rows_written"] == 45
    assert not (out / SUCCESS).exists()  # the input is not done
    ids = concat(read_outputs(str(out))["results"]).column("id").to_pylist()
    assert ids == list(range(30)) + list(range(100, 115))
    assert not list(out.glob("part-2*"))
    assert json.loads((out / "_shards" / "part-1.json").read_text())["limit"] == 15
    # The stages' measures: each saw the 45 rows.
    assert {s: summary["stages"][s]["rows"] for s in summary["stages"]} == dict.fromkeys(
        ("read", "tokenize", "predict", "postprocess", "write"), 45)
    assert summary["stages"]["predict"]["tokens"] == summary["tokens"] > 0
    assert summary["model_busy_seconds"] > 0
    assert sum(summary["timeline"]["rows"]["predict"]) == 45

    # A full run keeps the whole shard the dry run finished, redoes the cut one, does the rest.
    full = run(load_spec(spec), progress=lambda m: None)
    assert full["status"] == "complete" and (out / SUCCESS).exists()
    assert full["shards_resumed"] == 1 and full["shards_run"] == 2
    results = concat(read_outputs(str(out))["results"])
    assert sorted(results.column("id").to_pylist()) == [s * 100 + i for s in range(3) for i in range(30)]
    assert results.num_rows == full["rows_read"] == 90

    # A dry run over rows already done does nothing and leaves the complete output's records alone.
    before = (out / SUMMARY).read_text()
    again = run(load_spec(spec), progress=lambda m: None, limit=45)
    # Its summary counts the shards that hold the first 45 rows, which are done whole: 2 x 30.
    assert again["status"] == "limited" and again["shards_run"] == 0 and again["rows_read"] == 60
    assert (out / SUMMARY).read_text() == before and (out / SUCCESS).exists()
