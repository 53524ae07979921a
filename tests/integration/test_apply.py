"""`pipeline.apply(ds, spec)` (pipeline/api.py): the head's stages on someone's own Ray Dataset, through real Ray. Its
outputs equal transformers' pipeline on the same model and texts (the README's example), every
other column comes through unchanged, no row is dropped, and mistakes are one sentence before any
work."""

from __future__ import annotations

import pytest

from pipeline.spec import SpecError

pytestmark = pytest.mark.slow

TEXTS = [
    "Angela Merkel met Emmanuel Macron in Paris on Tuesday.",
    "Shares of Siemens rose after the announcement in Munich.",
    "",  # no text: an error row, not a lost one
    " ".join(["The committee in Geneva published its report."] * 30),  # longer than one window
]


def _dataset(ray_session):
    import ray

    return ray.data.from_items([{"url": f"https://example.org/{i}", "day": 20261201 + i, "text": t}
                                for i, t in enumerate(TEXTS)], override_num_blocks=2)


def test_apply_adds_the_heads_columns_and_carries_the_others(tiny_ner_dir, ray_session):
    from transformers import pipeline as hf_pipeline

    import pipeline

    spec = {"model": {"path": tiny_ner_dir, "head": "token-classification"},
            "head": {"aggregation_strategy": "simple", "ignore_labels": []},
            # Autoscaling pools (Ray Data's min/max actor pools) run the same stages.
            "resources": {"cpus_per_actor": 0.5, "model_actors": {"min": 1, "max": 2},
                          "tokenize_actors": {"min": 1, "max": 2}}}
    out = pipeline.apply(_dataset(ray_session), spec)
    rows = sorted(out.take_all(), key=lambda r: r["day"])

    assert [r["url"] for r in rows] == [f"https://example.org/{i}" for i in range(len(TEXTS))]
    assert set(rows[0]) == {"url", "day", "entities", "error"}  # no id in, no made-up id out
    assert rows[2]["error"] == "text is empty" and rows[2]["entities"] is None
    ner = hf_pipeline("token-classification", model=tiny_ner_dir, aggregation_strategy="simple", ignore_labels=[])
    for row, text in zip(rows, TEXTS):
        if not text:
            continue
        assert row["error"] is None
        want = [(e["entity_group"], e["start"], e["end"]) for e in ner(text)]
        got = [(e["entity_group"], e["start"], e["end"]) for e in row["entities"]]
        assert got == want
        # `word` is the text's own span (transformers' is the decoded, here lower-cased, tokens).
        assert [e["word"] for e in row["entities"]] == [text[a:b] for _, a, b in got]
        assert [e["score"] for e in row["entities"]] == pytest.approx([float(e["score"]) for e in ner(text)], abs=1e-5)


def test_apply_keeps_the_id_column_and_goes_per_token(minilm_dir, ray_session):
    import ray

    import pipeline

    ds = ray.data.from_items([{"doc": 7, "text": "Hello world", "lang": "en"},
                              {"doc": 8, "text": "Bonjour le monde", "lang": "fr"}])
    spec = {"input": {"id_column": "doc"}, "model": {"path": minilm_dir, "head": "embedding", "max_length": 32},
            "output": {"granularity": "token"}, "resources": {"cpus_per_actor": 0.5}}
    rows = pipeline.apply(ds, spec).take_all()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir)
    per_doc = {7: len(tok.tokenize("Hello world")), 8: len(tok.tokenize("Bonjour le monde"))}
    assert sorted((r["doc"], r["lang"]) for r in rows) == sorted(
        [(7, "en")] * per_doc[7] + [(8, "fr")] * per_doc[8])
    assert all(len(r["embedding"]) == 384 and r["error"] is None for r in rows)


@pytest.mark.parametrize(
    "columns, spec, message",
    [
        ({"body": "x"}, {}, "input.text_column: column 'text' not in the dataset (it has: body)"),
        ({"text": "x", "error": "y"}, {}, "the dataset has a column 'error'"),
        ({"text": "x", "entities": "y"}, {}, "'entities' is also an output column of this head"),
        ({"text": "x"}, {"output": {"granularity": "token"}, "model": {"head": "sequence-classification"}},
         "output.granularity: `token` is for token-classification and embedding"),
    ],
)
def test_apply_mistakes_are_one_sentence_before_any_work(tiny_ner_dir, ray_session, columns, spec, message):
    import ray

    import pipeline

    base = {"model": {"path": tiny_ner_dir, "head": "token-classification", **spec.get("model", {})},
            "output": spec.get("output", {})}
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        pipeline.apply(ray.data.from_items([columns]), base)


def test_the_readme_example_on_a_two_cpu_ray_finishes_and_equals_the_cli(tiny_ner_dir, ray_session, tmp_path):
    """The README's Python API example as written (read_parquet on a file path, the model pool
    autoscaling to 4 actors) on the session's `ray.init(num_cpus=2)`: its pools would ask for 3 CPUs of
    2 and Ray Data's read task would never start, so placement fuses the stages into one model actor.
    Its entities equal the CLI job's on the same file (spans and labels exactly; scores to 1e-5, as
    another micro-batching may change their last bits)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    import pipeline
    from tests.integration._util import write_spec

    texts = [t for t in TEXTS if t] * 3
    path = tmp_path / "shards" / "part-0.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table({"url": [f"https://example.org/{i}" for i in range(len(texts))], "text": texts}), path)
    assert ray.cluster_resources()["CPU"] == 2

    ds = ray.data.read_parquet(str(path))                          # columns: url, text
    tagged = pipeline.apply(ds, {
        "model": {"path": tiny_ner_dir, "head": "token-classification"},
        "head": {"aggregation_strategy": "simple"},
        "resources": {"model_actors": {"min": 1, "max": 4}},
    })
    got = {r["url"]: r["entities"] for r in tagged.take_all()}

    spec = write_spec(tmp_path / "spec.yaml", {
        "input": {"path": str(path.parent)}, "model": {"path": tiny_ner_dir, "head": "token-classification"},
        "head": {"aggregation_strategy": "simple"}, "output": {"path": str(tmp_path / "out"), "columns": ["url"]},
        "resources": {"model_actors": 1, "cpus_per_actor": 0.5, "tokenize_actors": 1, "postprocess_actors": 1}})
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(spec)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], env={**os.environ, "RAY_ADDRESS": ray_session},
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["rows_written"] == len(texts)
    want = {r["url"]: r["entities"] for r in pq.read_table(tmp_path / "out" / "part-0-00000.parquet").to_pylist()}
    assert got.keys() == want.keys() and len(got) == len(texts)
    for url in want:
        assert [(e["entity_group"], e["start"], e["end"], e["word"]) for e in got[url]] == \
            [(e["entity_group"], e["start"], e["end"], e["word"]) for e in want[url]]
        assert [e["score"] for e in got[url]] == pytest.approx([e["score"] for e in want[url]], abs=1e-5)
