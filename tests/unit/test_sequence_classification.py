"""The sequence-classification head against transformers' text-classification pipeline, run in-process
through LocalRunner (tokenize -> micro-batched forward -> postprocess), on tiny seeded checkpoints.

The pipeline's output shape depends on whether `top_k` is passed (a dict per text without it, a list
of dicts with it); the comparison is on content: our label/score is the pipeline's best, our `scores`
its list.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers import pipeline as hf_pipeline

from pipeline import columns as C
from pipeline.local import LocalRunner
from pipeline.models import ModelError
from pipeline.spec import spec_from_dict
from pipeline.windows import encode_windows
from tests.models import build_bert, build_roberta

TEXTS = [
    "This movie was wonderful; the actors were great.",
    "A terrible film: boring, too long, and the plot made no sense.",
    "Paris is the capital of France.",
    "ok",
    "Café Müller in Zürich: naïve résumé, São Paulo!",
    "The weather in London is cold and rainy in winter, and the trains are late.",
]
PAIRS = [
    ("A man is playing a guitar.", "Someone plays music."),
    ("The cat sat on the mat.", "A dog is running in the park, far away from any cat."),
    ("ok", "This second segment is much longer than the first one, by far."),
]
FUNCTIONS = ["auto", "softmax", "sigmoid", "none"]
TOP_KS = [1, 2, None]
ATOL = 1e-4


def runner(model_dir, head=None, pair_column=None, **model):
    spec = {"input": {"path": "unused"}, "model": {"path": str(model_dir), "head": "sequence-classification", **model},
            "head": head or {}, "output": {"path": "unused"}}
    if pair_column:
        spec["input"]["text_pair_column"] = pair_column
    return LocalRunner(spec_from_dict(spec))


def run_ok(r, rows):
    results, errors = r.run(rows)
    assert errors.num_rows == 0, errors.to_pylist()
    return {row["id"]: row for row in results.to_pylist()}


def reference(pipe, inputs, function, top_k, **kwargs):
    """(best label, best score, [(label, score)...]) from the pipeline, asked with and without top_k."""
    fn = {} if function == "auto" else {"function_to_apply": function}
    ranked = pipe(inputs, top_k=top_k, **fn, **kwargs)
    if isinstance(ranked, dict):
        ranked = [ranked]
    legacy = pipe(inputs, **fn, **kwargs)  # no top_k: the best label only
    legacy = legacy[0] if isinstance(legacy, list) else legacy
    assert legacy["label"] == ranked[0]["label"]
    return legacy["label"], legacy["score"], [(d["label"], d["score"]) for d in ranked]


def assert_matches(ours, ref):
    label, score, ranked = ref
    assert ours["label"] == label
    assert ours["score"] == pytest.approx(score, abs=ATOL)
    assert [s["label"] for s in ours["scores"]] == [r[0] for r in ranked]
    np.testing.assert_allclose([s["score"] for s in ours["scores"]], [r[1] for r in ranked], atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return build_bert(tmp_path_factory.mktemp("bert-sc"), "sequence-classification", seed=5)


@pytest.fixture(scope="module")
def bert_pipe(bert_dir):
    return hf_pipeline("text-classification", model=str(bert_dir), tokenizer=str(bert_dir))


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory):
    return build_roberta(tmp_path_factory.mktemp("roberta-sc"), "sequence-classification", seed=4)


@pytest.fixture(scope="module")
def multilabel_dir(tmp_path_factory):
    return build_bert(tmp_path_factory.mktemp("bert-ml"), "sequence-classification", seed=3,
                      labels=["sports", "politics", "science", "arts"], problem_type="multi_label_classification")


@pytest.mark.parametrize("function", FUNCTIONS)
def test_matches_pipeline_every_function_and_top_k(bert_dir, bert_pipe, function):
    for top_k in TOP_KS:
        ours = run_ok(runner(bert_dir, {"function_to_apply": function, "top_k": top_k}),
                      [{"id": i, "text": t} for i, t in enumerate(TEXTS)])
        for i, text in enumerate(TEXTS):
            assert_matches(ours[i], reference(bert_pipe, text, function, top_k))
            assert len(ours[i]["scores"]) == (3 if top_k is None else top_k)
            assert ("labels" in ours[i]) == (function == "sigmoid")


def test_labels_vary_with_the_text(bert_dir):
    """The tiny model is not a constant: parity above compares more than one label."""
    ours = run_ok(runner(bert_dir), [{"id": i, "text": t} for i, t in enumerate(TEXTS)])
    assert len({r["label"] for r in ours.values()}) > 1


def test_multi_label_auto_is_sigmoid_with_threshold(multilabel_dir):
    pipe = hf_pipeline("text-classification", model=str(multilabel_dir), tokenizer=str(multilabel_dir))
    r = runner(multilabel_dir, {"top_k": None, "threshold": 0.5})
    schema = r.postprocess.head.output_schema(pa.int64())
    assert schema.field("labels").type == pa.list_(pa.string())
    ours = run_ok(r, [{"id": i, "text": t} for i, t in enumerate(TEXTS)])
    seen_sizes = set()
    for i, text in enumerate(TEXTS):
        ref = reference(pipe, text, "auto", None)
        assert_matches(ours[i], ref)
        expected = [label for label, score in ref[2] if score >= 0.5]
        assert ours[i]["labels"] == expected  # best first
        seen_sizes.add(len(expected))
    assert len(seen_sizes) > 1  # the threshold actually separates labels


def test_single_logit_auto_is_sigmoid_and_regression_is_none(tmp_path):
    one = build_bert(tmp_path / "one", "sequence-classification", labels=["toxic"], seed=4)
    reg = build_bert(tmp_path / "reg", "sequence-classification", labels=["LABEL_0"], problem_type="regression", seed=4)
    for model_dir, expect_multi in ((one, True), (reg, False)):
        pipe = hf_pipeline("text-classification", model=str(model_dir), tokenizer=str(model_dir))
        r = runner(model_dir, {"top_k": None})
        assert r.postprocess.head.multi_label is expect_multi
        ours = run_ok(r, [{"id": i, "text": t} for i, t in enumerate(TEXTS)])
        for i, text in enumerate(TEXTS):
            assert_matches(ours[i], reference(pipe, text, "auto", None))


def test_softmax_output_has_no_labels_column(bert_dir):
    results, _ = runner(bert_dir).run([{"id": "a", "text": TEXTS[0]}])
    assert results.schema.names == ["id", "label", "score", "scores"]
    assert results.schema.field("score").type == pa.float32()
    assert results.schema.field("scores").type == pa.list_(
        pa.struct([("label", pa.string()), ("score", pa.float32())]))


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_text_pairs_match_pipeline(arch, bert_dir, roberta_dir, bert_pipe):
    model_dir = bert_dir if arch == "bert" else roberta_dir
    pipe = bert_pipe if arch == "bert" else hf_pipeline("text-classification", model=str(model_dir),
                                                        tokenizer=str(model_dir))
    r = runner(model_dir, {"top_k": None}, pair_column="hypothesis")
    rows = [{"id": i, "text": a, "hypothesis": b} for i, (a, b) in enumerate(PAIRS)]
    rows.append({"id": 99, "text": TEXTS[0], "hypothesis": None})  # no pair for this row: a single text
    ours = run_ok(r, rows)
    for i, (a, b) in enumerate(PAIRS):
        assert_matches(ours[i], reference(pipe, {"text": a, "text_pair": b}, "auto", None))
        single = reference(pipe, a, "auto", None)
        assert [s["score"] for s in ours[i]["scores"]] != pytest.approx([s[1] for s in single[2]], abs=ATOL)
    assert_matches(ours[99], reference(pipe, TEXTS[0], "auto", None))

    encoded = r.tokenize(r.prepare(rows)).to_pylist()
    tok = AutoTokenizer.from_pretrained(model_dir)
    for row, (a, b) in zip(encoded, PAIRS):
        assert row[C.INPUT_IDS] == [tok(a, b)["input_ids"]]
        if arch == "bert":  # segment ids: 0 for the text and its [CLS]/[SEP], 1 for the pair
            assert row[C.TOKEN_TYPE_IDS] == [tok(a, b)["token_type_ids"]] and 1 in row[C.TOKEN_TYPE_IDS][0]
        else:  # RoBERTa takes no token_type_ids
            assert row[C.TOKEN_TYPE_IDS] == []
    assert encoded[-1][C.TOKEN_TYPE_IDS] == []


def test_long_pairs_truncate_longest_first(bert_dir, bert_pipe):
    a = "The first segment is rather long and keeps going with many words about nothing in particular. " * 3
    b = "Short pair."
    r = runner(bert_dir, {"top_k": None}, pair_column="b", max_length=24, stride=4)
    rows = [{"id": 0, "text": a, "b": b}, {"id": 1, "text": "fits", "b": b}]
    ours = run_ok(r, rows)
    assert_matches(ours[0], reference(bert_pipe, {"text": a, "text_pair": b}, "auto", None, truncation=True,
                                      max_length=24))
    encoded = r.tokenize(r.prepare(rows))
    assert encoded.column(C.TRUNCATED).to_pylist() == [True, False]
    windows = encoded.column(C.INPUT_IDS).to_pylist()
    assert len(windows[0]) == 1 and len(windows[0][0]) == 24
    # longest_first: the short pair survives whole
    tok = AutoTokenizer.from_pretrained(bert_dir)
    assert tok.decode(windows[0][0]).endswith("[SEP] short pair. [SEP]")


def _window_logits(model_dir, text, max_length, stride):
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    (doc,) = encode_windows(tok, [text], max_length, stride)
    with torch.no_grad():
        return np.stack([model(input_ids=torch.tensor([w])).logits[0].numpy() for w in doc.input_ids])


@pytest.mark.parametrize("mode", ["truncate", "mean", "max"])
def test_long_documents(bert_dir, bert_pipe, mode):
    text = " ".join(TEXTS) * 3
    r = runner(bert_dir, {"top_k": None, "long_document": mode}, max_length=32, stride=8)
    ours = run_ok(r, [{"id": 0, "text": text}])[0]
    logits = _window_logits(bert_dir, text, 32, 8)
    assert len(logits) > 2
    combined = {"truncate": logits[0], "mean": logits.mean(0), "max": logits.max(0)}[mode]
    e = np.exp(combined - combined.max())
    probs = e / e.sum()
    labels = AutoModelForSequenceClassification.from_pretrained(bert_dir).config.id2label
    order = np.argsort(-probs, kind="stable")
    assert [s["label"] for s in ours["scores"]] == [labels[int(i)] for i in order]
    np.testing.assert_allclose([s["score"] for s in ours["scores"]], probs[order], atol=ATOL, rtol=0)
    if mode == "truncate":  # the first window is exactly what the pipeline runs with truncation
        assert_matches(ours, reference(bert_pipe, text, "auto", None, truncation=True, max_length=32))
    encoded = r.tokenize(r.prepare([{"id": 0, "text": text}]))
    assert encoded.column(C.TRUNCATED).to_pylist() == [mode == "truncate"]
    assert len(encoded.column(C.INPUT_IDS)[0]) == (1 if mode == "truncate" else len(logits))


def test_forward_is_compact(bert_dir):
    r = runner(bert_dir, {"long_document": "mean"}, max_length=16, stride=4)
    out = r.predict(r.tokenize(r.prepare([{"id": 0, "text": TEXTS[5]}, {"id": 1, "text": "ok"}])))
    per_window = out.column(C.out("logits")).to_pylist()
    assert [len(w) for w in per_window[0]] == [3] * len(per_window[0]) and len(per_window[0]) > 1
    assert [len(w) for w in per_window[1]] == [3]


def test_checkpoint_without_classifier_is_refused(tmp_path):
    bare = build_bert(tmp_path / "bare", "base")
    with pytest.raises(ModelError, match="classifier"):
        runner(bare)
    # ... unless asked for
    results, errors = runner(bare, allow_random_head=True).run([{"id": 0, "text": "hello"}])
    assert results.num_rows == 1 and errors.num_rows == 0
