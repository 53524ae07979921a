"""A laptop's run: the CLI with a spec that sizes no stage pool and no model CPUs starts its own local
Ray and runs the three stages fused in the model actors (compose.ModelStages). Its results, errors
and counts are those of the same job run with a pool per stage, and its summary still names each
stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration._util import SMALL_RESOURCES, check_counts, read_outputs, rows, write_jsonl, write_spec

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parents[2]
LONG = " ".join(["Carol met Dave in Rome."] * 20)  # several 32-token windows


def _lines() -> list:
    good = [{"id": i, "text": f"Alice met Bob in Paris, day {i}."} for i in range(40)]
    return [*good, {"id": 40, "text": ""}, {"id": 41, "text": LONG}, '{"id": 42, "text": "broken']


def test_a_laptop_run_fuses_the_stages_and_gives_the_pooled_results(tmp_path, tiny_ner_dir, ray_session):
    from pipeline.job import run
    from pipeline.spec import spec_from_dict

    src = write_jsonl(tmp_path / "in" / "docs.jsonl", _lines())
    spec = {
        "input": {"path": str(src)},
        "model": {"path": tiny_ner_dir, "head": "token-classification", "max_length": 32},
        "output": {"path": str(tmp_path / "laptop"), "max_error_fraction": 1.0},
        "batching": {"rows_per_batch": 8},
        "resources": {"model_actors": 2},  # the default here would be one (a small input): see test_model_cpus
    }
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own Ray, as on a laptop
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(write_spec(tmp_path / "spec.yaml", spec))],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    laptop = read_outputs(str(tmp_path / "laptop"))
    check_counts(laptop, expect_read=43, expect_written=41, expect_errored=2)
    stages = laptop["summary"]["stages"]
    # Each part reported under its own name; error rows pass through every stage.
    assert {s: stages[s]["rows"] for s in ("tokenize", "predict", "postprocess")} == {
        "tokenize": 43, "predict": 43, "postprocess": 43}
    assert all(stages[s]["busy_seconds"] > 0 for s in ("tokenize", "predict", "postprocess"))
    # A shard under rows_per_batch x GROUP_BYTES_PER_ROW bytes travels whole, in one block (a larger one
    # streams in blocks of rows_per_batch: tests/integration/test_faults.py's shards).
    assert stages["predict"]["batches"] == 1
    # Fused in two model actors (the spec sizes the model pool only), the cores shared out: the Ray
    # the job started itself is no reason to take the pooled path.
    threads = max(1, os.cpu_count() // 2)
    assert laptop["summary"]["model_pool"] == {"actors": 2, "cpus_per_actor": float(threads), "gpus_per_actor": 0,
                                               "fused": True}
    assert f"model: 2 actor(s), {threads} CPU each; each tokenizes and postprocesses its own batches" in proc.stderr

    pooled_spec = {**spec, "output": {**spec["output"], "path": str(tmp_path / "pooled")}, "resources": SMALL_RESOURCES}
    run(spec_from_dict(pooled_spec), progress=lambda msg: None)
    pooled = read_outputs(str(tmp_path / "pooled"))
    def ordered(out, part):  # an error row's id may be null (the broken line): order by input place
        return sorted(rows(out[part]), key=lambda r: (r.get("row", -1), str(r["id"])))

    assert ordered(laptop, "results") == ordered(pooled, "results")
    assert len(ordered(laptop, "errors")) == 2 and ordered(laptop, "errors") == ordered(pooled, "errors")
    assert pooled["summary"]["model_pool"]["fused"] is False
    for key in ("rows_read", "rows_written", "rows_errored", "tokens", "windows", "label_counts"):
        assert laptop["summary"][key] == pooled["summary"][key], key
    assert json.loads(proc.stdout)["status"] == "complete"
