"""Embeddings with the real MiniLM checkpoint through Ray: document vectors (384 floats, equal to a
direct mean-pooled, normalised forward pass: the checkpoint's sentence-transformers defaults) and token
vectors (one row per non-special token, long documents included), both `fixed_size_list<float>[384]`."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from tests.integration._util import SMALL_RESOURCES, check_counts, read_outputs, rows, write_jsonl

pytestmark = pytest.mark.slow

DOCS = [
    {"id": 10, "text": "The quick brown fox jumps over the lazy dog."},
    {"id": 11, "text": "Ray Data runs batch inference on a cluster."},
    {"id": 12, "text": " ".join(["Long documents are cut into overlapping windows."] * 8)},  # > 32 tokens
]
MAX_LENGTH = 32


def _run(tmp_path, minilm_dir, granularity):
    from pipeline.job import run
    from pipeline.spec import spec_from_dict

    src = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    spec = spec_from_dict(
        {
            "input": {"path": str(src)},
            "model": {"path": minilm_dir, "head": "embedding", "max_length": MAX_LENGTH},
            "head": {},  # the checkpoint's own: mean pooling, then its Normalize module
            "output": {"path": str(tmp_path / "out"), "granularity": granularity},
            "resources": SMALL_RESOURCES,
        }
    )
    summary = run(spec, progress=lambda msg: None)
    return summary, read_outputs(str(tmp_path / "out"))


def test_document_embeddings_match_a_direct_forward_pass(tmp_path, minilm_dir, ray_session):
    import torch
    from transformers import AutoModel, AutoTokenizer

    summary, out = _run(tmp_path, minilm_dir, "document")
    check_counts(out, expect_read=3, expect_written=3, expect_errored=0)
    assert summary["documents_truncated"] == 1  # long_document: truncate (the default) keeps window one
    got = {r["id"]: np.asarray(r["embedding"], dtype=np.float32) for r in rows(out["results"])}
    assert sorted(got) == [10, 11, 12]
    assert all(v.shape == (384,) for v in got.values())
    for _, table in out["results"]:
        assert table.schema.field("id").type == pa.int64()
        assert table.schema.field("embedding").type == pa.list_(pa.float32(), 384)

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    model = AutoModel.from_pretrained(minilm_dir).eval()
    enc = tokenizer([d["text"] for d in DOCS], padding=True, truncation=True, max_length=MAX_LENGTH,
                    return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    for doc, vec in zip(DOCS, expected):
        np.testing.assert_allclose(got[doc["id"]], vec, atol=2e-4, rtol=1e-3)


def test_token_embeddings_one_row_per_non_special_token(tmp_path, minilm_dir, ray_session):
    from transformers import AutoTokenizer

    summary, out = _run(tmp_path, minilm_dir, "token")
    check_counts(out, expect_read=3, expect_written=3, expect_errored=0)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    results = rows(out["results"])
    for doc in DOCS:
        mine = sorted((r for r in results if r["id"] == doc["id"]), key=lambda r: r["token_index"])
        expected = tokenizer(doc["text"], add_special_tokens=False)["input_ids"]
        assert [r["token"] for r in mine] == tokenizer.convert_ids_to_tokens(expected), doc["id"]
        assert all(len(r["embedding"]) == 384 for r in mine)
        assert all(0 <= r["start"] < r["end"] <= len(doc["text"]) for r in mine)
    assert summary["output_rows"] == len(results) == sum(
        len(tokenizer(d["text"], add_special_tokens=False)["input_ids"]) for d in DOCS
    )
    assert summary["documents_truncated"] == 0  # token granularity runs every window
    assert summary["windows"] > len(DOCS)
    for _, table in out["results"]:
        assert table.schema.field("embedding").type == pa.list_(pa.float32(), 384)
