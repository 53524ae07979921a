"""The CPU stages work on whole batches (flat NumPy arrays and Arrow offsets). These properties pin
them to simpler, per-document definitions on random inputs: windows equal the tokenizer's own
overflowing windows; the best window per token, entity aggregation and every head's postprocess give,
for a batch, what they give for its documents one at a time; the combined logits and vectors equal the
row-wise formulas they replaced, bit for bit."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import columns as C
from pipeline.aggregation import STRATEGIES, Aggregation, TokenBatch, aggregate_batch, aggregate_entities
from pipeline.heads.sequence_classification import apply_function
from pipeline.local import LocalRunner
from pipeline.spec import spec_from_dict
from pipeline.windows import WindowCutter, best_window_positions, offsets_of
from tests.models import NER_LABELS, build_bert, bpe_tokenizer, wordpiece_tokenizer, xlm_roberta_tokenizer

SAMPLES = ["John Smith works at Acme Corporation in New York.", "北京是中华人民共和国的首都。", "Café naïve ＦＵＬＬ width",
           "emoji 😀👍🏽 and\ttabs\r\nnew lines", "e\u0301 combining", "  double  spaces  ", "[MASK] and [SEP] inside"]
texts_strategy = st.lists(
    st.lists(st.sampled_from(SAMPLES), min_size=0, max_size=6).map(" ".join)
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",), max_codepoint=0x1FAFF), max_size=60),
    min_size=1, max_size=5,
)
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module", params=["wordpiece", "bpe", "unigram"])
def tokenizer(request):
    return {"wordpiece": wordpiece_tokenizer, "bpe": bpe_tokenizer, "unigram": xlm_roberta_tokenizer}[request.param]()


@settings(max_examples=60, **SETTINGS)
@given(texts=texts_strategy, max_length=st.integers(6, 40), data=st.data())
def test_windows_equal_the_tokenizers_own(tokenizer, texts, max_length, data):
    stride = data.draw(st.integers(0, max_length // 2))
    windows = WindowCutter(tokenizer, max_length, stride)(texts)
    theirs = tokenizer(texts, truncation=True, max_length=max_length, stride=stride, return_overflowing_tokens=True,
                       return_attention_mask=False, return_token_type_ids=False)
    values, offsets = windows.window_tokens()
    assert [values[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])] == [list(w) for w in theirs["input_ids"]]
    owner = np.repeat(np.arange(len(texts)), np.diff(windows.doc_windows))
    assert owner.tolist() == list(theirs["overflow_to_sample_mapping"])
    whole = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    assert windows.token_ids.tolist() == [t for ids in whole["input_ids"] for t in ids]
    assert list(zip(windows.starts.tolist(), windows.ends.tolist())) == [tuple(o) for os in whole["offset_mapping"] for o in os]
    # Heads that need no offsets cut with the tokenizer's faster call: the same windows.
    fast = WindowCutter(tokenizer, max_length, stride, offsets=False)(texts)
    assert fast.starts is None and fast.window_tokens()[0].tolist() == values.tolist()


def _best_window_one_document(starts, lengths, n_tokens):
    """The per-document loop the batch version replaced: windows in order, a later one wins only
    when strictly farther from its edges."""
    best_window = np.full(n_tokens, -1)
    best_dist = np.full(n_tokens, -1)
    for w, (s, n) in enumerate(zip(starts, lengths)):
        pos = np.arange(n)
        dist = np.minimum(pos, n - 1 - pos)
        better = dist > best_dist[s + pos]
        best_window[(s + pos)[better]] = w
        best_dist[(s + pos)[better]] = dist[better]
    return best_window, np.arange(n_tokens) - np.asarray(starts)[best_window]


@settings(max_examples=200, **SETTINGS)
@given(counts=st.lists(st.integers(0, 60), min_size=1, max_size=6), content=st.integers(2, 16), data=st.data())
def test_best_window_of_a_batch_equals_each_document_alone(counts, content, data):
    stride = data.draw(st.integers(0, content - 1))
    step = content - stride
    starts, lengths, per_doc = [], [], []
    for n in counts:  # the tokenizer's cut (see pipeline.windows)
        k = 1 if n <= content else 1 + -(-(n - content) // step)
        s = [i * step for i in range(k)]
        starts.append(s)
        lengths.append([min(content, n - a) for a in s])
        per_doc.append(k)
    window, position, doc_offsets = best_window_positions(
        np.concatenate(starts), np.concatenate(lengths), offsets_of(np.array(per_doc)))
    assert np.diff(doc_offsets).tolist() == counts
    first_window = offsets_of(np.array(per_doc))
    for d, n in enumerate(counts):
        ref_window, ref_position = _best_window_one_document(starts[d], lengths[d], n)
        a, b = doc_offsets[d], doc_offsets[d + 1]
        assert (window[a:b] - first_window[d]).tolist() == ref_window.tolist()
        assert position[a:b].tolist() == ref_position.tolist()


@settings(max_examples=80, **SETTINGS)
@given(texts=texts_strategy, seed=st.integers(0, 2**16), strategy=st.sampled_from(STRATEGIES),
       ignore=st.sampled_from([["O"], [], ["O", "PER"], ["B-PER"]]), word_aware=st.booleans())
def test_batch_aggregation_equals_each_document_alone(texts, seed, strategy, ignore, word_aware):
    tok = wordpiece_tokenizer()
    enc = tok(texts, add_special_tokens=False, return_offsets_mapping=True)
    rng = np.random.default_rng(seed)
    id2label = dict(enumerate(NER_LABELS))
    # Word-aware: WordPiece's "##"; otherwise the whitespace heuristic on the same tokens.
    prefix = "##" if word_aware else None
    docs, flat = [], {"lens": [], "ids": [], "starts": [], "ends": [], "probs": []}
    for ids, offsets in zip(enc["input_ids"], enc["offset_mapping"]):
        logits = rng.normal(size=(len(ids), len(NER_LABELS))).astype(np.float32) * 3
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        strs = tok.convert_ids_to_tokens(ids)
        starts = np.array([o[0] for o in offsets], dtype=np.int64)
        ends = np.array([o[1] for o in offsets], dtype=np.int64)
        docs.append(dict(token_strs=strs, token_ids=np.array(ids, dtype=np.int64), starts=starts, ends=ends, probs=probs))
        flat["lens"].append(np.array([len(s) for s in strs], dtype=np.int64))
        flat["ids"].append(np.array(ids, dtype=np.int64))
        flat["starts"].append(starts)
        flat["ends"].append(ends)
        flat["probs"].append(probs.reshape(-1, len(NER_LABELS)))
    how = Aggregation(id2label, strategy, ignore, prefix, tok.unk_token_id)
    lens, ids, starts, ends, probs = (np.concatenate(flat[k]) for k in ("lens", "ids", "starts", "ends", "probs"))
    found = aggregate_batch(TokenBatch(texts, lens, ids, starts, ends, offsets_of(np.array([len(i) for i in enc["input_ids"]]))),
                            probs, how)
    words = found.words(texts).to_pylist()
    for d, (text, doc) in enumerate(zip(texts, docs)):
        alone = aggregate_entities(text, doc["token_strs"], doc["token_ids"], (doc["starts"], doc["ends"]), doc["probs"], how)
        mine = [{"entity_group": found.names[k], "score": found.score[i].item(), "word": words[i],
                 "start": found.start[i].item(), "end": found.end[i].item()}
                for i, k in enumerate(found.name.tolist()) if found.document[i] == d]
        assert mine == alone


# ---- whole stages: a batch equals its documents one at a time ------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return {head: str(build_bert(tmp_path_factory.mktemp(head), head, seed=1))
            for head in ("token-classification", "sequence-classification", "embedding")}


CASES = [
    ("token-classification", "document", {"aggregation_strategy": "simple"}),
    ("token-classification", "document", {"aggregation_strategy": "average", "ignore_labels": []}),
    ("token-classification", "token", {}),
    ("embedding", "document", {"long_document": "mean"}),
    ("embedding", "document", {"long_document": "truncate", "normalize": True}),
    ("embedding", "token", {"normalize": True}),
    ("sequence-classification", "document", {"long_document": "mean", "top_k": 2}),
    ("sequence-classification", "document", {"long_document": "max", "function_to_apply": "sigmoid", "threshold": 0.3}),
    ("sequence-classification", "document", {"long_document": "truncate"}),
]
DOCS = ["John Smith works at Acme Corporation in New York. " * 4, "", "Paris.", "\u200b\u200d", "北京是首都。 " * 9,
        "naïve café ＦＵＬＬ " * 6]


@pytest.mark.parametrize("head,granularity,options", CASES)
def test_a_batch_equals_its_documents_one_at_a_time(models, head, granularity, options):
    spec = spec_from_dict({"input": {"path": "unused"}, "model": {"path": models[head], "head": head, "max_length": 16,
                                                                   "stride": 4},
                           "head": options, "output": {"path": "unused", "granularity": granularity}})
    runner = LocalRunner(spec)
    prepared = runner.prepare([{"id": i, "text": t} for i, t in enumerate(DOCS)])
    encoded = runner.tokenize(prepared)
    one_by_one = [runner.tokenize(prepared.slice(i, 1)) for i in range(prepared.num_rows)]
    assert encoded.to_pylist() == pa.concat_tables(one_by_one).to_pylist()
    # One model run for both: a forward pass over other micro-batches may differ in the last bits.
    predicted = runner.predict(encoded)
    together = runner.postprocess(predicted)
    # Slices of a batch: Arrow offsets that do not start at 0, as Ray hands out.
    alone = pa.concat_tables([runner.postprocess(predicted.slice(i, 1)) for i in range(predicted.num_rows)])
    assert together.to_pylist() == alone.to_pylist()
    # A batch in several chunks (as Ray may pass a block), for both stages.
    chunks = pa.concat_tables([prepared.slice(0, 2), prepared.slice(2)])
    assert runner.tokenize(chunks).to_pylist() == encoded.to_pylist()
    chunks = pa.concat_tables([predicted.slice(0, 3), predicted.slice(3)])
    assert runner.postprocess(chunks).to_pylist() == together.to_pylist()
    errors = {i: e for i, e in zip(together.column(C.ID).to_pylist(), together.column(C.ERROR).to_pylist()) if e}
    # Rejected by the reader, and by the tokenizer (format characters only): both pass through, one row each.
    assert errors == {1: "text is empty", 3: "the text has no tokens for this tokenizer"}
    assert together.num_rows > len(DOCS) or granularity == "document"


# ---- the formulas the batch code replaced ---------------------------------------------------------


def _windows_batch(per_doc: list[np.ndarray], name: str, window_lengths: list[list[int]]) -> pa.Table:
    """A batch as the model stage leaves it: `_out_<name>` per window, and windows of those lengths."""
    flat = np.concatenate([w.ravel() for w in per_doc]).astype(np.float32)
    width = per_doc[0].shape[1]
    n_windows = np.array([len(w) for w in per_doc])
    inner = pa.ListArray.from_arrays(pa.array(np.arange(n_windows.sum() + 1, dtype=np.int32) * width), pa.array(flat))
    ids = [[[1] * n for n in lengths] for lengths in window_lengths]
    return pa.table({C.ID: pa.array(range(len(per_doc)), pa.int64()),
                     C.out(name): pa.ListArray.from_arrays(pa.array(offsets_of(n_windows).astype(np.int32)), inner),
                     C.INPUT_IDS: pa.array(ids, pa.list_(pa.list_(pa.int32())))})


window_counts = st.lists(st.integers(1, 5), min_size=1, max_size=6)


@settings(max_examples=100, **SETTINGS)
@given(counts=window_counts, seed=st.integers(0, 2**16), mode=st.sampled_from(["mean", "max", "truncate"]),
       function=st.sampled_from(["softmax", "sigmoid", "none"]))
def test_sequence_classification_equals_the_row_wise_formula(models, counts, seed, mode, function):
    from pipeline.stages import load_head

    spec = spec_from_dict({"input": {"path": "unused"}, "model": {"path": models["sequence-classification"],
                                                                   "head": "sequence-classification"},
                           "head": {"long_document": mode, "function_to_apply": function, "top_k": None},
                           "output": {"path": "unused"}})
    head = load_head(spec)
    rng = np.random.default_rng(seed)
    # Rounded logits make exact ties, whose order must follow the labels'.
    logits = [np.round(rng.normal(size=(k, head.num_labels)), 1).astype(np.float32) for k in counts]
    produced = head.postprocess_table(_windows_batch(logits, "logits", [[8] * k for k in counts]))
    labels = produced.columns["scores"].to_pylist()
    for d, windows in enumerate(logits):
        combined = windows[0] if mode == "truncate" else windows.max(axis=0) if mode == "max" else windows.mean(axis=0)
        scores = apply_function(combined, function)
        order = sorted(range(head.num_labels), key=lambda i: float(scores[i]), reverse=True)
        assert [s["label"] for s in labels[d]] == [head.label_strings[i].as_py() for i in order]
        assert [s["score"] for s in labels[d]] == [float(np.float32(scores[i])) for i in order]


@settings(max_examples=100, **SETTINGS)
@given(counts=window_counts, seed=st.integers(0, 2**16), data=st.data())
def test_document_embedding_equals_the_row_wise_formula(models, counts, seed, data):
    from pipeline.stages import load_head

    spec = spec_from_dict({"input": {"path": "unused"}, "model": {"path": models["embedding"], "head": "embedding"},
                           "head": {"long_document": "mean", "normalize": False}, "output": {"path": "unused"}})
    head = load_head(spec)
    rng = np.random.default_rng(seed)
    vectors = [rng.normal(size=(k, head.hidden)).astype(np.float32) for k in counts]
    lengths = [data.draw(st.lists(st.integers(3, 512), min_size=k, max_size=k)) for k in counts]
    produced = head.postprocess_table(_windows_batch(vectors, "vector", lengths))
    got = np.asarray(produced.columns["embedding"].to_pylist(), dtype=np.float32)
    for d, windows in enumerate(vectors):
        weights = np.array(lengths[d], dtype=np.float64)
        expected = windows[0] if len(windows) == 1 else (windows * weights[:, None]).sum(0) / weights.sum()
        assert got[d].tobytes() == expected.astype(np.float32).tobytes()
