"""Parity of the question-answering head with transformers 4.57's `QuestionAnsweringPipeline`.

transformers 5 has no question-answering pipeline, so the reference outputs were computed once with
4.57 by tests/golden/make_qa_golden.py on tiny seeded models that are committed next to it
(tests/golden/models/: BERT with WordPiece, the same with a left-padding tokenizer, RoBERTa with a
byte-level BPE, DistilBERT (no token type ids), MobileBERT (trigram embeddings) and ELECTRA with the
same WordPiece vocabulary, XLM-R and DeBERTa-v2 with a SentencePiece Unigram vocabulary). Here the job's own path (tokenize -> model -> postprocess, in process) runs the
same models on the same inputs and must give the same windows, answers, character spans and scores.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # the project is not installed into the venv; run from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from pipeline import columns as C
from pipeline.local import LocalRunner
from pipeline.heads.base import RowError
from pipeline.models import ModelError, load_model
from pipeline.spec import spec_from_dict
from pipeline.stages import load_head

GOLDEN_DIR = REPO_ROOT / "tests" / "golden"
GOLDEN = json.loads((GOLDEN_DIR / "qa_golden.json").read_text(encoding="utf-8"))
MODELS = {name: GOLDEN_DIR / "models" / sub for name, sub in GOLDEN["models"].items()}
SCORE_TOL = 1e-4
MODEL_CLASSES = {
    "bert": "BertForQuestionAnswering",
    "bert-left": "BertForQuestionAnswering",
    "roberta": "RobertaForQuestionAnswering",
    "distilbert": "DistilBertForQuestionAnswering",
    "mobilebert": "MobileBertForQuestionAnswering",
    "electra": "ElectraForQuestionAnswering",
    "xlm-roberta": "XLMRobertaForQuestionAnswering",
    "deberta-v2": "DebertaV2ForQuestionAnswering",
}


def _spec(model_dir, opts: dict, **model_extra):
    return spec_from_dict(
        {
            "input": {"path": "memory.jsonl"},
            "model": {"path": str(model_dir), "head": "question-answering", "max_length": opts["max_seq_len"],
                      **model_extra},
            "head": {k: opts[k] for k in ("doc_stride", "max_answer_len", "max_question_len", "top_k",
                                          "handle_impossible_answer")},
            "output": {"path": "unused"},
        }
    )


def _groups():
    groups = defaultdict(list)
    for case in GOLDEN["cases"]:
        groups[(case["model"], case["options"])].append(case)
    return groups


GROUPS = _groups()


def _digest(row: dict) -> str:
    """The golden's window fingerprint, from our tokenize stage: per window the input ids, offsets,
    word ids and sequence ids (what span decoding reads)."""
    windows = [
        [ids, [[a, b] for a, b in zip(starts, ends)], words, seqs]
        for ids, starts, ends, words, seqs in zip(row[C.INPUT_IDS], row["_tok_starts"], row["_tok_ends"],
                                                  row["_word_ids"], row["_seq_ids"])
    ]
    return hashlib.sha1(json.dumps(windows, separators=(",", ":")).encode()).hexdigest()[:16]


def _close(ours: dict, ref: dict, where: str) -> None:
    got = (ours["answer"], ours["start"], ours["end"])
    want = (ref["answer"], ref["start"], ref["end"])
    assert got == want, f"{where}: {got!r} != pipeline's {want!r}"
    assert ours["score"] == pytest.approx(ref["score"], abs=SCORE_TOL), f"{where}: score {ours['score']} != {ref['score']}"
    # Scores can be tiny (1e-7): relative agreement too (float32 probabilities; observed within 3e-6).
    assert ours["score"] == pytest.approx(ref["score"], rel=1e-3, abs=1e-9), f"{where}: score {ours['score']} != {ref['score']}"


@pytest.mark.parametrize("model,options", sorted(GROUPS), ids=lambda v: str(v))
def test_matches_transformers_457_pipeline(model, options):
    opts = GOLDEN["option_sets"][options]
    cases = GROUPS[(model, options)]
    runner = LocalRunner(_spec(MODELS[model], opts))
    rows = []
    for k, case in enumerate(cases):
        question, context = GOLDEN["pairs"][case["pair"]]
        rows.append({"id": k, "question": question, "context": context})

    # The windows are the pipeline's, token for token (ids, offsets, word and sequence ids).
    tokenized = runner.tokenize(runner.prepare(rows)).to_pylist()
    for k, (case, row) in enumerate(zip(cases, tokenized)):
        if "error" in case:
            assert row[C.ERROR] is not None, f"case {k}: the pipeline failed ({case['error']}); we did not"
            continue
        assert row[C.ERROR] is None, f"case {k}: {row[C.ERROR]}"
        assert len(row[C.INPUT_IDS]) == case["n_windows"], f"case {k}: window count"
        assert _digest(row) == case["windows_sha1"], f"case {k}: windows differ from the pipeline's"
        assert row[C.N_TOKENS] == sum(len(w) for w in row[C.INPUT_IDS])
        assert row[C.TRUNCATED] is False

    results, errors = runner.run(rows)
    assert ("answers" in results.schema.names) == (opts["top_k"] > 1)
    assert results.schema.field("score").type == pa.float32()
    assert results.schema.field("start").type == pa.int32()
    by_id = {r["id"]: r for r in results.to_pylist()}
    failed = {r["id"]: r[C.ERROR] for r in errors.to_pylist()}
    assert set(failed) == {k for k, c in enumerate(cases) if "error" in c}, failed
    for k, case in enumerate(cases):
        if "error" in case:
            assert "question" in failed[k]
            continue
        where = f"{model} options {options} pair {case['pair']}"
        ours = by_id[k]
        _close(ours, case["answers"][0], where)
        if opts["top_k"] > 1:
            assert len(ours["answers"]) == len(case["answers"]), f"{where}: {ours['answers']} vs {case['answers']}"
            for i, (a, b) in enumerate(zip(ours["answers"], case["answers"])):
                _close(a, b, f"{where} answer {i}")


def test_golden_covers_the_hard_cases():
    """The parity test is only as good as its cases (make_qa_golden.py asserts more of this)."""
    cases = [c for c in GOLDEN["cases"] if "answers" in c]
    assert any(c["n_windows"] > 3 for c in cases)
    nulls = [c for c in cases if GOLDEN["option_sets"][c["options"]]["handle_impossible_answer"]
             and c["answers"][0]["answer"] == ""]
    assert nulls and len(nulls) < len(cases) // 2
    assert any("error" in c for c in GOLDEN["cases"])
    assert set(MODELS) == {c["model"] for c in cases} == set(MODEL_CLASSES)
    for model in MODELS:  # every model under every option set, with long and null-answer cases
        mine = [c for c in cases if c["model"] == model]
        assert {c["options"] for c in mine} == set(range(len(GOLDEN["option_sets"]))), model
        assert any(c["n_windows"] > 3 for c in mine), model
        if model != "bert-left":  # left padding: the context comes first, [CLS] is rarely the best
            assert any(c in nulls for c in mine), model


@pytest.fixture(scope="module")
def base_model_dir(tmp_path_factory):
    """The golden BERT's encoder without the question-answering head (a plain BertModel)."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, BertModel

    src = MODELS["bert"]
    torch.manual_seed(0)
    model = BertModel(AutoConfig.from_pretrained(src), add_pooling_layer=False)
    d = tmp_path_factory.mktemp("bert-base")
    model.save_pretrained(d)
    AutoTokenizer.from_pretrained(src).save_pretrained(d)
    return d


def test_base_model_without_qa_weights_is_refused(base_model_dir):
    opts = GOLDEN["option_sets"][0]
    spec = _spec(base_model_dir, opts)
    head = load_head(spec)
    with pytest.raises(ModelError, match="qa_outputs"):
        load_model(str(base_model_dir), head, spec.model)
    allowed = _spec(base_model_dir, opts, allow_random_head=True)
    model = load_model(str(base_model_dir), load_head(allowed), allowed.model)
    assert type(model).__name__ == "BertForQuestionAnswering"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_golden_model_loads_with_its_head(name):
    spec = _spec(MODELS[name], GOLDEN["option_sets"][0])
    head = load_head(spec)
    model = load_model(str(MODELS[name]), head, spec.model)
    assert type(model).__name__ == MODEL_CLASSES[name]
    # DistilBERT, RoBERTa and XLM-R take no token type ids (their tokenizers make none): none are
    # stored or passed.
    assert head.uses_token_types == (name in ("bert", "bert-left", "mobilebert", "electra", "deberta-v2"))


def test_mobilebert_padding_does_not_reach_the_trigram_embedding():
    """MobileBERT's trigram embedding reads each token's right neighbour: in a right-padded
    micro-batch the last real token would see [PAD] (non-zero in the golden model, as in trained
    ones) where the pipeline's unpadded window has zeros. The forward pass must give each window
    the logits it gets alone."""
    import numpy as np
    import torch

    opts = GOLDEN["option_sets"][0]
    runner = LocalRunner(_spec(MODELS["mobilebert"], opts))
    model, head = runner.predict.model, runner.predict.head
    assert model.config.trigram_input
    assert model.get_input_embeddings().weight[head.tokenizer.pad_token_id].abs().sum() > 0
    rows = [{"id": k, "question": q, "context": c} for k, (q, c) in enumerate(GOLDEN["pairs"][:3])]
    table = runner.predict(runner.tokenize(runner.prepare(rows)))
    assert sum(table.column(C.PADDED_SLOTS).to_pylist()) > 0  # the windows did share a padded batch
    for ids_per_window, types_per_window, starts in zip(table.column(C.INPUT_IDS).to_pylist(),
                                                        table.column(C.TOKEN_TYPE_IDS).to_pylist(),
                                                        table.column(C.out("start")).to_pylist()):
        for ids, types, ours in zip(ids_per_window, types_per_window, starts):
            with torch.inference_mode():
                alone = model(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([types]),
                              attention_mask=torch.ones(1, len(ids), dtype=torch.long)).start_logits[0]
            np.testing.assert_allclose(ours, alone.numpy(), atol=1e-4)


def test_doc_stride_must_fit_the_model_window():
    """model.max_length passes the spec check but the model holds fewer positions: refused up front."""
    opts = dict(GOLDEN["option_sets"][0], max_seq_len=512, doc_stride=100)
    with pytest.raises(ValueError, match="head.doc_stride"):
        load_head(_spec(MODELS["bert"], opts))


def test_question_without_room_is_an_error_row():
    opts = GOLDEN["option_sets"][0]
    runner = LocalRunner(_spec(MODELS["bert"], opts))
    rows = [
        {"id": "ok", "question": "Where?", "context": "In Paris."},
        {"id": "long", "question": " ".join(["where"] * 60), "context": "In Paris."},
        {"id": "empty", "question": "Where?", "context": "   "},
    ]
    results, errors = runner.run(rows)
    assert results.column("id").to_pylist() == ["ok"]
    reasons = dict(zip(errors.column("id").to_pylist(), errors.column(C.ERROR).to_pylist()))
    assert set(reasons) == {"long", "empty"}
    assert "question" in reasons["long"] and "no room" in reasons["long"]


def test_rows_the_tokenizer_refuses_do_not_fail_the_batch(monkeypatch):
    """Were the up-front check to miss a row, the tokenizer's error (a Rust panic for a stride that
    does not fit) fails the batch call; each row is then tokenized alone and only the bad one fails."""
    from pipeline.heads.question_answering import QuestionAnswering

    monkeypatch.setattr(QuestionAnswering, "_no_room", lambda self, qs, cs: [None] * len(qs))
    opts = GOLDEN["option_sets"][0]  # 48 tokens, doc_stride 16
    head = load_head(_spec(MODELS["bert"], opts))
    long_context = " ".join(["paris"] * 80)
    rows = [
        {C.QUESTION: "Where?", C.CONTEXT: long_context},
        {C.QUESTION: " ".join(["where"] * 30), C.CONTEXT: long_context},  # 15 tokens of room <= 16
        {C.QUESTION: " ".join(["where"] * 60), C.CONTEXT: long_context},  # no room at all
    ]
    out = head.encode_batch(rows)
    assert isinstance(out[0], dict) and len(out[0][C.INPUT_IDS]) > 1
    assert all(isinstance(o, RowError) for o in out[1:]), out[1:]


@pytest.mark.parametrize("model", sorted(MODELS))
def test_word_to_chars_port_matches_tokenizers(model):
    """Postprocess replays `Encoding.word_to_chars` from stored word and sequence ids; check the port
    against the real thing on every word of every window, both sequences."""
    from transformers import AutoTokenizer

    from pipeline.heads.question_answering import _sequence_span, _word_to_chars

    tok = AutoTokenizer.from_pretrained(MODELS[model])
    checked = 0
    short = [p for p in GOLDEN["pairs"] if len(p[0]) < 60]
    for question, context in short + [["[CLS] x", "a  \u200b  [PAD] b"], ["Why?", "\u200b"]]:
        enc = tok(question, context, truncation="only_second", max_length=40, stride=4, return_overflowing_tokens=True)
        for e in enc.encodings:
            words = [-1 if w is None else w for w in e.word_ids]
            seqs = [-1 if s is None else s for s in e.sequence_ids]
            for seq in (0, 1):
                span = _sequence_span(seqs, seq)
                for w in range(max(words) + 2):
                    ref = e.word_to_chars(w, sequence_index=seq)
                    assert _word_to_chars(e.offsets, words, span, w) == (tuple(ref) if ref is not None else None)
                    checked += 1
    assert checked > 100


def test_default_window_is_the_pipelines_384_tokens(tmp_path):
    """A spec without model.max_length gets transformers' QA default (max_seq_len 384, doc_stride 128):
    a context longer than 384 tokens is cut into exactly the windows the pipeline's tokenizer call
    makes, and the best answer over them is a span of the context."""
    from transformers import AutoTokenizer

    from tests.models import build_bert

    model_dir = build_bert(tmp_path / "qa", head="question-answering", seed=2)
    spec = spec_from_dict({"input": {"path": "memory.jsonl"}, "model": {"path": str(model_dir),
                                                                        "head": "question-answering"},
                           "output": {"path": "unused"}})
    assert spec.model.max_length == 384 and spec.head.doc_stride == 128
    question = "Where did the committee meet?"
    context = " ".join(f"In year {1900 + k} the committee met in Geneva with {k} delegates." for k in range(60))
    tok = AutoTokenizer.from_pretrained(model_dir)
    expected = tok(question, context, truncation="only_second", max_length=384, stride=128,
                   return_overflowing_tokens=True)["input_ids"]
    assert len(tok(question, context)["input_ids"]) > 384 and len(expected) >= 3
    runner = LocalRunner(spec)
    rows = [{"id": 0, "question": question, "context": context}]
    (tokenized,) = runner.tokenize(runner.prepare(rows)).to_pylist()
    assert tokenized[C.INPUT_IDS] == [list(w) for w in expected]
    results, errors = runner.run(rows)
    assert errors.num_rows == 0
    (answer,) = results.to_pylist()
    assert answer["answer"] == context[answer["start"]:answer["end"]] and answer["answer"]
