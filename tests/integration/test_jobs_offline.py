"""Every shipped job spec (jobs/*.yaml, globbed: a new spec is covered without touching this file) runs
offline, end to end, through the real CLI on files in the repository: `python -m pipeline run SPEC
--limit 5`, joined to the tests' local Ray (a Ray start each would double the file's time; the laptop
mode itself is tests/integration/test_laptop_run.py's), and writes the columns its head promises for
the first 5 input rows.

What each run changes in its spec, with --set (nothing else):
- output.path: a temporary folder (never out/ in the checkout);
- model.path: a demo model made by `tools.make_demo_model --head ...` for the spec's head, with a few
  training steps (the `demo_model` fixture, once per head) instead of jobs/models/demo-* (which a test
  cannot assume was made); the embedding spec takes the shipped MiniLM checkpoint, as its comment says;
  the S3 checkpoints of the cluster specs are replaced the same way. A spec whose model.path is local
  must name the folder the tool makes for its head by default;
- input.path, only where the spec reads S3 or a path that needs --set (ner_extraction.yaml,
  nightly_tagging.yaml): the sample file in jobs/data/ of the same format;
- resources: the tests' Ray (RAY_ADDRESS), no GPU, one small actor per pool, to fit its 2 CPUs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration._util import concat, read_outputs

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parents[2]
JOB_SPECS = sorted((REPO_ROOT / "jobs").glob("*.yaml"))
DATA = Path("jobs/data")  # relative, as the specs give it: the CLI runs in the repository root
LIMIT = 5

# model.head -> `tools.make_demo_model --head` (None: the MiniLM checkpoint shipped by the package).
DEMO_HEADS = {"token-classification": "ner", "sequence-classification": "sentiment", "fill-mask": "fill-mask",
              "question-answering": "qa", "embedding": None}
# Local stand-ins for inputs that are not in the repository: by head, then by the input's format.
QA_SAMPLE = DATA / "questions.jsonl"
SAMPLE = {".parquet": DATA / "sample.parquet", ".jsonl": DATA / "sample.jsonl"}
# One small actor per pool: a cluster spec's stages on this machine's 2 cores.
SMALL_LOCAL = {"ray_address": "null", "gpus_per_actor": 0, "model_actors": 1, "cpus_per_actor": 0.5,
               "tokenize_actors": 1, "postprocess_actors": 1, "model_resources": "{}", "cpu_stage_resources": "{}"}


def test_the_specs_are_found():
    assert {"laptop.yaml", "embeddings.yaml", "sentiment.yaml", "fill_mask.yaml", "qa.yaml", "ner_extraction.yaml",
            "nightly_tagging.yaml"} <= {p.name for p in JOB_SPECS}


def _is_local(path: str) -> bool:
    return "://" not in path


def _input_override(spec) -> str | None:
    """A local sample for an input that is not a file in the repository (S3, or a dated placeholder)."""
    path = spec.input.path
    if _is_local(path) and list(REPO_ROOT.glob(path)):
        assert not Path(path).is_absolute() and (REPO_ROOT / path).resolve().is_relative_to(REPO_ROOT), path
        return None
    if spec.model.head == "question-answering":
        return str(QA_SAMPLE)
    return str(SAMPLE[".parquet" if ".parquet" in path else ".jsonl"])


def _model_path(spec, demo_model, minilm_dir) -> str:
    from tools.make_demo_model import default_out

    head = DEMO_HEADS[spec.model.head]  # a KeyError here: a new head; add its demo model and columns
    if head is None:
        return minilm_dir
    if _is_local(spec.model.path):
        # The spec runs on the model `python -m tools.make_demo_model --head HEAD` makes by default.
        assert (REPO_ROOT / spec.model.path).resolve() == default_out(head), (
            f"{spec.model.path}: not where `python -m tools.make_demo_model --head {head}` saves the model "
            f"({default_out(head).relative_to(REPO_ROOT)})")
    return demo_model(head)


def expected_columns(spec, model_dir: str) -> list[str]:
    """The output columns the spec's head writes (pipeline/heads/*.py `output_schema`), after the id
    and the carried input columns (output.columns)."""
    head, opts = spec.model.head, spec.head
    token_rows = ["token_index", "token", "start", "end"]
    if head == "token-classification":
        own = ["entities"] if spec.output.granularity == "document" else [*token_rows, "label", "score"]
    elif head == "embedding":
        own = ["embedding"] if spec.output.granularity == "document" else [*token_rows, "embedding"]
    elif head == "sequence-classification":
        from transformers import AutoConfig

        from pipeline.heads.sequence_classification import resolve_function

        multi_label = resolve_function(opts.function_to_apply, AutoConfig.from_pretrained(model_dir)) == "sigmoid"
        own = ["label", "score", "scores"] + (["labels"] if multi_label else [])
    elif head == "fill-mask":
        own = ["masks"]
    elif head == "question-answering":
        own = ["answer", "score", "start", "end"] + (["answers"] if opts.top_k > 1 else [])
    else:
        raise AssertionError(f"{head}: a new head; add the columns it writes here")
    return ["id", *spec.output.columns, *own]


def _input_rows(path: str, n: int) -> list[dict]:
    """The first `n` input rows (the input's files in sorted order, as the job reads its shards)."""
    import pyarrow.parquet as pq

    rows: list[dict] = []
    for file in sorted(REPO_ROOT.glob(path)):
        if file.suffix == ".parquet":
            rows += pq.read_table(file).slice(0, n - len(rows)).to_pylist()
        else:
            with open(file) as f:
                rows += [json.loads(line) for line, _ in zip(f, range(n - len(rows)))]
        if len(rows) >= n:
            break
    return rows


def _check_values(spec, rows: list[dict], inputs: dict) -> None:
    """A light look at the values: the head's output is well formed for its input."""
    head = spec.model.head
    for row in rows:
        given = inputs[row["id"]]
        if head == "embedding":
            assert len(row["embedding"]) == 384
        elif head == "sequence-classification":
            assert row["label"] == row["scores"][0]["label"] and 0.0 <= row["score"] <= 1.0
        elif head == "fill-mask":
            text = given[spec.input.text_column]
            assert len(row["masks"]) == text.count("[MASK]") >= 1
            for mask in row["masks"]:
                assert text[mask["start"] : mask["end"]] == "[MASK]"
                assert len(mask["predictions"]) == spec.head.top_k
        elif head == "question-answering":
            assert given[spec.input.context_column][row["start"] : row["end"]] == row["answer"]
        elif head == "token-classification":
            text = given[spec.input.text_column]
            assert all(0 <= e["start"] < e["end"] <= len(text) for e in row["entities"]), row["entities"]


@pytest.mark.parametrize("spec_path", JOB_SPECS, ids=lambda p: p.name)
def test_job_spec_runs_offline(spec_path, tmp_path, demo_model, minilm_dir, ray_session):
    from pipeline.spec import load_spec

    spec = load_spec(spec_path)
    out = tmp_path / "out"
    model_dir = _model_path(spec, demo_model, minilm_dir)
    overrides = [f"output.path={out}", f"model.path={model_dir}",
                 *(f"resources.{key}={value}" for key, value in SMALL_LOCAL.items())]
    local_input = _input_override(spec)
    if local_input is not None:
        overrides.append(f"input.path={local_input}")
    spec = load_spec(spec_path, overrides)  # as the CLI will read it

    args = [sys.executable, "-m", "pipeline", "run", str(spec_path.relative_to(REPO_ROOT)), "--limit", str(LIMIT)]
    for item in overrides:
        args += ["--set", item]
    env = {**os.environ, "RAY_ADDRESS": ray_session}
    proc = subprocess.run(args, check=False, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(args)}\n{proc.stderr[-4000:]}"

    summary = json.loads(proc.stdout)
    assert summary["status"] == "limited", summary
    assert summary["rows_read"] == summary["rows_written"] == LIMIT and summary["rows_errored"] == 0, summary
    outputs = read_outputs(str(out))
    assert outputs["summary"] == summary and not outputs["errors"]
    table = concat(outputs["results"])
    assert table is not None, "no output Parquet file"
    assert table.schema.names == expected_columns(spec, model_dir)
    inputs = {r[spec.input.id_column]: r for r in _input_rows(spec.input.path, LIMIT)}
    ids = table.column("id").to_pylist()
    assert sorted(set(ids)) == sorted(inputs)  # the first LIMIT input rows, each written
    if spec.output.granularity == "document":
        assert len(ids) == LIMIT  # one output row per input row
        _check_values(spec, table.to_pylist(), inputs)
