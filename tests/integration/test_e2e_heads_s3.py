"""The other heads through Ray, reading from and writing to moto's S3: sequence classification with
text pairs (Parquet), fill-mask (JSONL, a row without a mask becomes an error row), question answering
(question/context columns). Each result is compared with the same head run in-process."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.job import run
from pipeline.local import LocalRunner
from pipeline.spec import spec_from_dict
from tests.integration._util import SMALL_RESOURCES, check_counts, concat, read_outputs, rows
from tests.models import build

pytestmark = pytest.mark.slow


def _put_parquet(fs, path, table):
    buf = io.BytesIO()
    pq.write_table(table, buf)
    with fs.open(path, "wb") as f:
        f.write(buf.getvalue())


def _put_jsonl(fs, path, records):
    with fs.open(path, "wb") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records).encode())


def _spec(inp, model_dir, head, out, endpoint, head_options=None, input_options=None):
    return spec_from_dict({
        "input": {"path": inp, **(input_options or {})},
        "model": {"path": model_dir, "head": head, "max_length": 64},
        "head": head_options or {},
        "output": {"path": out, "max_error_fraction": 1.0},  # deliberate bad rows
        "storage": {"endpoint_url": endpoint},
        "resources": SMALL_RESOURCES,
    })


def _same_as_in_process(spec, inputs, results, key):
    local, _ = LocalRunner(spec).run(inputs)
    expected = {r["id"]: r for r in local.to_pylist()}
    got = {r["id"]: r for r in results.to_pylist()}
    assert got.keys() == expected.keys()
    for ident, row in got.items():
        assert row[key] == expected[ident][key]


def test_sequence_classification_with_pairs_on_s3(tmp_path, s3_endpoint, s3fs_client, ray_session):
    model_dir = build("bert", tmp_path / "cls", head="sequence-classification", labels=["neg", "neu", "pos"])
    inputs = [{"id": 1, "premise": "The cat sat on the mat.", "hypothesis": "A cat is sitting."},
              {"id": 2, "premise": "It rained all day in Paris.", "hypothesis": None},
              {"id": 3, "premise": None, "hypothesis": "nothing"}]
    _put_parquet(s3fs_client, "data/cls/part-0.parquet", pa.Table.from_pylist(inputs))
    spec = _spec("s3://data/cls/", str(model_dir), "sequence-classification", "s3://results/cls/", s3_endpoint,
                 {"top_k": None}, {"text_column": "premise", "text_pair_column": "hypothesis"})
    summary = run(spec, progress=lambda m: None)
    out = read_outputs("s3://results/cls/", s3fs_client)
    check_counts(out, expect_read=3, expect_written=2, expect_errored=1)
    assert summary == out["summary"]
    results = concat(out["results"])
    assert all(len(r["scores"]) == 3 and r["label"] in ("neg", "neu", "pos") for r in results.to_pylist())
    _same_as_in_process(spec, inputs, results, "scores")
    assert rows(out["errors"])[0]["error"] == "text is null"


def test_fill_mask_on_s3(tmp_path, s3_endpoint, s3fs_client, ray_session):
    model_dir = build("bert", tmp_path / "mlm", head="masked-lm")
    inputs = [{"id": "a", "text": "Paris is the [MASK] of France."},
              {"id": "b", "text": "No mask in this one."},
              {"id": "c", "text": "[MASK] and [MASK] again."}]
    _put_jsonl(s3fs_client, "data/mlm/in.jsonl", inputs)
    spec = _spec("s3://data/mlm/in.jsonl", str(model_dir), "fill-mask", "s3://results/mlm/", s3_endpoint, {"top_k": 3})
    run(spec, progress=lambda m: None)
    out = read_outputs("s3://results/mlm/", s3fs_client)
    check_counts(out, expect_read=3, expect_written=2, expect_errored=1)
    results = {r["id"]: r for r in rows(out["results"])}
    assert [(m["start"], m["end"]) for m in results["c"]["masks"]] == [(0, 6), (11, 17)]
    assert all(len(m["predictions"]) == 3 for m in results["a"]["masks"])
    (err,) = rows(out["errors"])
    assert err["id"] == "b" and "[MASK]" in err["error"]
    _same_as_in_process(spec, inputs, concat(out["results"]), "masks")


def test_question_answering_on_s3(tmp_path, s3_endpoint, s3fs_client, ray_session):
    model_dir = build("bert", tmp_path / "qa", head="question-answering")
    context = "The Eiffel Tower stands in Paris. It was finished in 1889 by Gustave Eiffel's company. " * 4
    inputs = [{"id": 1, "q": "Where is the tower?", "c": context},
              {"id": 2, "q": "", "c": context},
              {"id": 3, "q": "When was it finished?", "c": None}]
    _put_jsonl(s3fs_client, "data/qa/in.jsonl", inputs)
    spec = _spec("s3://data/qa/in.jsonl", str(model_dir), "question-answering", "s3://results/qa/", s3_endpoint,
                 {"doc_stride": 16, "max_question_len": 16, "top_k": 2},
                 {"question_column": "q", "context_column": "c"})
    run(spec, progress=lambda m: None)
    out = read_outputs("s3://results/qa/", s3fs_client)
    check_counts(out, expect_read=3, expect_written=1, expect_errored=2)
    (answer,) = rows(out["results"])
    assert answer["answer"] == context[answer["start"]:answer["end"]]
    assert len(answer["answers"]) == 2
    assert out["summary"]["windows"] > 1  # the context was split into windows
    assert sorted(r["error"] for r in rows(out["errors"])) == ["context is null", "question is empty"]
    local_inputs = [{"id": r["id"], "q": r["q"], "c": r["c"]} for r in inputs]
    _same_as_in_process(spec, local_inputs, concat(out["results"]), "answers")
