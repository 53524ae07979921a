"""Sizing on paper (pipeline/plan.py): the arithmetic on a hand-written summary, with round rates so that
every figure can be checked by hand, and the limit named first moving as the inputs change."""

from __future__ import annotations

import json

import pytest

from pipeline.__main__ import main
from pipeline.plan import (
    DEFAULT_MODEL_RATE_GPU, PlanError, Workload, default_rates, format_plan, load_summary, plan, rates_from_summary,
)
from pipeline.spec import spec_from_dict

# 10 shards of 1,000 documents of 100 tokens. One worker's rates: read 10,000 documents/s (1 M
# tokens/s), tokenize 500,000 tokens/s, predict 1 M, postprocess 250,000, write 100,000 documents/s
# (10 M tokens/s).
SUMMARY = {
    "status": "complete", "rows_read": 10_000, "rows_written": 10_000, "rows_errored": 0, "output_rows": 10_000,
    "tokens": 1_000_000, "shards": 10, "model_pool": {"actors": 1, "cpus_per_actor": 1.0, "gpus_per_actor": 1},
    "stages": {
        "read": {"rows": 10_000, "tokens": None, "busy_seconds": 1.0, "batches": 10, "rows_per_second": 10_000.0,
                 "tokens_per_second": None},
        "tokenize": {"rows": 10_000, "tokens": 1_000_000, "busy_seconds": 2.0, "batches": 100,
                     "rows_per_second": 5_000.0, "tokens_per_second": 500_000.0},
        "predict": {"rows": 10_000, "tokens": 1_000_000, "busy_seconds": 1.0, "batches": 100,
                    "rows_per_second": 10_000.0, "tokens_per_second": 1_000_000.0},
        "postprocess": {"rows": 10_000, "tokens": 1_000_000, "busy_seconds": 4.0, "batches": 100,
                        "rows_per_second": 2_500.0, "tokens_per_second": 250_000.0},
        "write": {"rows": 10_000, "tokens": None, "busy_seconds": 0.1, "batches": 100, "rows_per_second": 100_000.0,
                  "tokens_per_second": None},
    },
}
TOKENS, HOURS = 3.6e10, 1.0  # 10 M tokens/s


def job(rows_per_batch=100, rows_per_file=1000, head="token-classification", granularity="document", **paths):
    return spec_from_dict({
        "input": {"path": paths.get("input", "s3://corpus/shards/")},
        "model": {"path": "models/x", "head": head},
        "output": {"path": paths.get("output", "s3://results/x/"), "granularity": granularity,
                   "rows_per_file": rows_per_file},
        "resources": {"gpus_per_actor": 1},
        "batching": {"rows_per_batch": rows_per_batch},
    })


def make_plan(spec, **kw):
    return plan(spec, Workload(TOKENS, HOURS), rates_from_summary(SUMMARY, spec, "summary"), config={}, **kw)


def ceiling(p, name):
    return next(lim["ceiling_tokens_per_second"] for lim in p["limits"] if lim["limit"] == name)


def test_workers_cores_and_gpus_from_one_workers_rates():
    p = make_plan(job())
    assert p["target_tokens_per_second"] == 10_000_000
    assert p["tokens_per_document"] == 100
    workers = {name: s["workers"] for name, s in p["stages"].items()}
    assert workers == {"read": 10, "tokenize": 20, "predict": 10, "postprocess": 40, "write": 1, "finalize": 1}
    # A CPU stage's cores are its busy core-seconds per second; finalisation costs what writing does.
    assert p["cpu_stage_cores"] == 10 + 20 + 40 + 1 + 1
    assert p["model_actors"] == 10 and p["gpus"] == 10 and p["model_actor_cpus"] == 10
    assert p["cpu_cores"] == 72 + 10 + 1  # the CPU stages, one CPU per model actor, the driver
    assert {p["stages"][s]["source"] for s in ("read", "tokenize", "predict", "postprocess", "write")} == {"measured"}


def test_pools_the_spec_caps_below_the_plan_are_named():
    spec = spec_from_dict({"input": {"path": "data/"}, "model": {"path": "m", "head": "token-classification"},
                           "output": {"path": "out/x"}, "batching": {"rows_per_batch": 100},
                           "resources": {"gpus_per_actor": 1, "model_actors": {"min": 2, "max": 12},
                                         "tokenize_actors": 8, "postprocess_actors": 40}})
    p = make_plan(spec)  # needs 10 model actors, 20 tokenize and 40 postprocess actors
    assert p["pools_too_small"] == {"tokenize_actors": {"max": 8, "need": 20}}
    assert "the spec's pools are smaller (tokenize_actors 8 at most): --set resources.tokenize_actors=20" in (
        format_plan(p))


def test_the_limits_ceilings():
    p = make_plan(job(), object_store_gib=1.0)
    assert ceiling(p, "driver") == 100 * 100 / 0.002  # a stats batch of 100 documents per 2 ms
    # 100 shards/s; a shard: 10 parts, 1 file -> 14 PUT-class requests (parts, file, pending record, marker,
    # one bulk DELETE) and 11 GET-class (a GET per part, a LIST); its input: a HEAD and a GET, twice.
    assert ceiling(p, "S3 writes, output prefix") == pytest.approx(10e6 * 3500 / 1400, abs=0.1)
    assert ceiling(p, "S3 reads, output prefix") == pytest.approx(10e6 * 5500 / 1100, abs=0.1)
    assert ceiling(p, "S3 reads, input prefix") == pytest.approx(10e6 * 5500 / 400, abs=0.1)
    assert ceiling(p, "GPUs") == 10 * 1e6
    assert ceiling(p, "shard finalisation") == 2 * 10e6  # two shards at once, at the writer's rate
    # In flight: 3 batches of 10,000 tokens per worker of each stage, at these bytes a token of its input:
    # tokenize 4 (text), predict 20 (text, encoding), postprocess 20 + 2 labels x 4, write 8 + 8 (rows).
    in_flight = 3 * 10_000 * (20 * 4 + 10 * 20 + 40 * 28 + 1 * 16)
    assert ceiling(p, "object store") == pytest.approx(10e6 * 0.5 * 2**30 / in_flight, abs=0.1)


def test_the_first_limit_moves_with_the_inputs():
    # Small batches: the driver tops out at 5 M tokens/s, below the 10 M target.
    p = make_plan(job(rows_per_batch=100))
    assert (p["first_limit"], p["meets_target"]) == ("driver", False)
    # Ten times larger batches: the driver and S3 have room; the GPUs are what to add.
    p = make_plan(job(rows_per_batch=1000))
    assert (p["first_limit"], p["meets_target"]) == ("GPUs", True)
    # Files of 10 rows: 100 files a shard, 10,300 PUTs/s on one prefix (a shard of one batch: no part).
    p = make_plan(job(rows_per_batch=1000, rows_per_file=10))
    assert p["first_limit"] == "S3 writes, output prefix"
    assert ceiling(p, "S3 writes, output prefix") == pytest.approx(10e6 * 3500 / 10_300, abs=0.1)
    assert "S3 reads, output prefix" not in {lim["limit"] for lim in p["limits"]}  # the writer finished it
    # A small object store under batches ten times larger.
    p = make_plan(job(rows_per_batch=1000), object_store_gib=0.5)
    assert p["first_limit"] == "object store" and not p["meets_target"]
    # A slow writer: the driver finalises two shards at a time (a pool of 1), 2 x 500,000 tokens/s.
    spec = job(rows_per_batch=1000)
    slow = {**SUMMARY, "stages": {**SUMMARY["stages"], "write": {"rows": 10_000, "rows_per_second": 5_000.0}}}
    p = plan(spec, Workload(TOKENS, HOURS), rates_from_summary(slow, spec, "summary"), config={})
    assert (p["first_limit"], ceiling(p, "shard finalisation")) == ("shard finalisation", 1e6)
    # ... as many at once as the postprocess pool may grow to: 8 actors, 8 shards, 4 M tokens/s.
    bigger = spec.model_copy(update={"resources": spec.resources.model_copy(update={"postprocess_actors": 8})})
    p = plan(bigger, Workload(TOKENS, HOURS), rates_from_summary(slow, bigger, "summary"), config={})
    assert ceiling(p, "shard finalisation") == 4e6
    # Local paths: no request limits.
    p = make_plan(job(rows_per_batch=1000, input="data/", output="out/x"))
    assert [lim["limit"] for lim in p["limits"]] == ["driver", "object store", "shard finalisation", "GPUs"]


def detail(p, name):
    return next(lim["detail"] for lim in p["limits"] if lim["limit"] == name)


def test_per_token_vectors_weigh_on_the_object_store():
    # Token embeddings carry a hidden-size vector per token through postprocess and write: with an
    # unread config, BERT-base's 768 floats (20 + 4 x 768 bytes a token) overflow 64 GiB's budget.
    spec = job(rows_per_batch=1000, head="embedding", granularity="token")
    bert_base = make_plan(spec, object_store_gib=64)
    assert "3,092 bytes/token into postprocess" in detail(bert_base, "object store")
    assert bert_base["first_limit"] == "object store" and not bert_base["meets_target"]
    # The checkpoint's own config.json: MiniLM's 384 floats fit.
    minilm = plan(spec, Workload(TOKENS, HOURS), rates_from_summary(SUMMARY, spec, "summary"), config={"hidden_size": 384},
                  object_store_gib=64)
    assert "1,556 bytes/token into postprocess" in detail(minilm, "object store")
    assert minilm["first_limit"] == "GPUs"


def test_without_a_summary_the_documented_defaults():
    spec = job(rows_per_batch=1000)
    p = plan(spec, Workload(TOKENS, HOURS), default_rates(spec), config={})
    assert p["stages"]["predict"] == {"tokens_per_second": DEFAULT_MODEL_RATE_GPU, "source": "default",
                                      "workers": 10}
    assert p["rates_from"] == "defaults (pipeline/plan.py)"


def test_a_stage_the_summary_did_not_measure_takes_the_default():
    spec = job()
    summary = {**SUMMARY, "stages": {**SUMMARY["stages"], "write": {"rows": 0, "busy_seconds": 0.0,
                                                                     "rows_per_second": None}}}
    rates = rates_from_summary(summary, spec, "summary")
    assert rates.sources["write"] == "default" and rates.sources["read"] == "measured"


def test_the_table_names_the_first_limit_and_its_fix():
    text = format_plan(make_plan(job()))
    assert "first limit: driver, below the target: at most 5,000,000 tokens/s, 2.00 h" in text
    assert "raise batching.rows_per_batch" in text
    assert "need: 83 CPU cores" in text and "10 GPU(s)" in text


def test_a_summary_is_read_from_its_folder_or_file(tmp_path):
    (tmp_path / "_SUMMARY.json").write_text(json.dumps(SUMMARY))
    assert load_summary(str(tmp_path))[0] == SUMMARY
    assert load_summary(str(tmp_path / "_SUMMARY.json")) == (SUMMARY, str(tmp_path / "_SUMMARY.json"))
    with pytest.raises(PlanError, match="no .*_SUMMARY.json .*give a complete run's output folder"):
        load_summary(str(tmp_path / "elsewhere"))
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(PlanError, match="has no `stages`"):
        load_summary(str(tmp_path / "other.json"))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(PlanError, match=r"broken.json is not JSON \(.* at line 1\); give a run's _SUMMARY.json"):
        load_summary(str(tmp_path / "broken.json"))


def test_the_cli_prints_the_plan_as_json(tmp_path, capsys):
    (tmp_path / "_SUMMARY.json").write_text(json.dumps(SUMMARY))
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"input": {"path": "s3://corpus/shards/"}, "model": {"path": str(tmp_path / "m"),
                                "head": "token-classification"}, "output": {"path": "s3://results/x/", "rows_per_file": 1000},
                                "resources": {"gpus_per_actor": 1}, "batching": {"rows_per_batch": 100}}))
    assert main(["plan", str(spec), "--tokens", "36G", "--hours", "1", "--from", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == make_plan(job()) | {"rates_from": str(tmp_path / "_SUMMARY.json")}


def test_the_cli_refuses_a_missing_summary_in_one_line(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"input": {"path": "data/"}, "model": {"path": "m", "head": "embedding"},
                                "output": {"path": "out/x"}}))
    assert main(["plan", str(spec), "--tokens", "1e9", "--hours", "2", "--from", str(tmp_path / "none")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: --from: no ") and captured.err.count("\n") == 1


def test_a_summary_comes_from_s3(s3_endpoint, s3fs_client):
    from pipeline.spec import StorageSpec

    s3fs_client.pipe("results/plan-run/_SUMMARY.json", json.dumps(SUMMARY).encode())
    storage = StorageSpec(endpoint_url=s3_endpoint)
    assert load_summary("s3://results/plan-run/", storage) == (SUMMARY, "s3://results/plan-run/_SUMMARY.json")


def test_the_checkpoints_widths_come_from_its_config(tmp_path):
    from pipeline.plan import model_config

    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 384, "id2label": {"0": "O", "1": "PER"}}))
    spec = job(rows_per_batch=1000, head="embedding", granularity="token")
    assert model_config(spec.model_copy(update={"model": spec.model.model_copy(update={"path": str(tmp_path)})})) == {
        "hidden_size": 384, "id2label": {"0": "O", "1": "PER"}}
    assert model_config(spec) == {}  # models/x: no such folder here
    assert "BERT-base widths: config.json not read" in detail(make_plan(spec), "object store")


def test_every_limit_but_the_gpus_comes_with_a_fix():
    # The verdict looks the fix up by the limit's name: a renamed limit must not lose its advice.
    from pipeline.plan import _FIX

    names = {lim["limit"] for lim in make_plan(job())["limits"]}
    assert names - {"GPUs"} == set(_FIX)
    # Object store, S3 writes, finalisation: each verdict names its fix.
    store = make_plan(job(rows_per_batch=1000), object_store_gib=0.5)
    assert "first limit: object store, below the target" in format_plan(store) and "--object-store-gib" in (
        format_plan(store))
    files = make_plan(job(rows_per_batch=1000, rows_per_file=10))
    assert "raise batching.rows_per_batch and output.rows_per_file" in format_plan(files)


def test_a_cpu_runs_model_rate_does_not_size_gpus_and_the_lines_say_so():
    """A summary from a laptop run (the model on CPU) under a GPU spec: the GPU count comes from the
    default GPU rate, and the lines that carry GPU figures say why."""
    cpu_run = {**SUMMARY, "model_pool": {"actors": 2, "cpus_per_actor": 1.0, "gpus_per_actor": 0}}
    spec = job()
    p = plan(spec, Workload(TOKENS, HOURS), rates_from_summary(cpu_run, spec, "summary"), config={})
    assert p["stages"]["predict"] == {**p["stages"]["predict"], "tokens_per_second": DEFAULT_MODEL_RATE_GPU,
                                      "source": "default"}
    assert p["stages"]["tokenize"]["source"] == "measured"  # the CPU stages' rates still count
    gpu_line = next(lim for lim in p["limits"] if lim["limit"] == "GPUs")
    assert "the default GPU rate: the summary's model ran on CPU" in gpu_line["detail"]
    need = next(line for line in format_plan(p).splitlines() if line.startswith("need:"))
    assert "GPU(s) (the default GPU rate: the summary's model ran on CPU)" in need
    assert make_plan(spec)["model_note"] == ""  # a GPU run's own rate: no note


def test_a_gpu_plan_says_how_many_cores_of_data_plane_each_gpu_needs():
    from pipeline.plan import DATA_PLANE_TOKENS_PER_CORE

    p = make_plan(job())  # a GPU spec; the summary's model rate: 1 M tokens/s
    assert p["cores_per_gpu"] == -(-1_000_000 // DATA_PLANE_TOKENS_PER_CORE)
    assert f"each GPU (1,000,000 tokens/s) needs {p['cores_per_gpu']:,} CPU cores of data plane" in format_plan(p)
    cpu = spec_from_dict({"input": {"path": "data/"}, "model": {"path": "m", "head": "embedding"},
                          "output": {"path": "out/x"}})
    assert plan(cpu, Workload(TOKENS, HOURS), default_rates(cpu), config={})["cores_per_gpu"] is None
