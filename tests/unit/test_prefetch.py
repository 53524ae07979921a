"""The model stage's feeder: micro-batches padded into reused host buffers, the next one staged before
the current one runs. On CPU, with the real tiny NER model: results in document order and equal to
running each window alone, the threaded (CUDA-style) order equal to the synchronous one, buffers
allocated once, and the page-locked path chosen only for CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import columns as C
from pipeline.batching import pad_batch
from pipeline.local import LocalRunner
from pipeline.predict import MicroBatchFeeder, pins_host_memory
from pipeline.spec import spec_from_dict


def _spec(model_dir, max_tokens=96, max_length=24):
    return spec_from_dict({
        "input": {"path": "unused"},
        "model": {"path": model_dir, "head": "token-classification", "max_length": max_length},
        "output": {"path": "unused-out"},
        "batching": {"max_tokens": max_tokens},
    })


def _docs(n):
    # Lengths from one word to several windows, in no order, so micro-batches differ in shape.
    words = "Alice met Bob in Paris and they walked to the station together".split()
    return [{"id": i, "text": " ".join(words[: 1 + (i * 7) % len(words)] * (1 + i % 5))} for i in range(n)]


@pytest.mark.parametrize("device, pinned", [("cpu", False), (torch.device("cpu"), False), ("cuda", True),
                                            ("cuda:1", True), (torch.device("cuda", 0), True), ("meta", False)])
def test_page_locked_buffers_only_for_cuda(device, pinned):
    assert pins_host_memory(device) is pinned


def test_on_cpu_no_thread_no_stream_no_page_locked_memory():
    feeder = MicroBatchFeeder("cpu", pad_id=0, uses_token_types=True, capacity=64)
    assert feeder.pool is None and feeder.stream is None
    windows = [np.array([5, 6, 7]), np.array([8])]
    (_, inputs), = feeder.feed([np.array([0, 1])], windows, [None, None])
    assert not inputs["input_ids"].is_pinned()
    assert inputs["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert inputs["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert inputs["token_type_ids"].tolist() == [[0, 0, 0], [0, 0, 0]]


@pytest.mark.parametrize("background", [False, True])
def test_staged_micro_batches_equal_fresh_padding_in_order(background):
    """Each handed-over micro-batch equals padding its windows afresh, even though the buffers
    still hold a larger earlier micro-batch, and groups come out in the order given."""
    rng = np.random.default_rng(0)
    windows = [rng.integers(1, 1000, size=n) for n in (9, 2, 7, 1, 5, 3, 8)]
    types = [None, np.ones(2, dtype=np.int64), None, None, np.array([0, 0, 1, 1, 1]), None, None]
    groups = [np.array([0, 6]), np.array([2, 4, 5]), np.array([1, 3]), np.array([6])]
    feeder = MicroBatchFeeder("cpu", pad_id=3, uses_token_types=True, capacity=8, background=background)
    seen = []
    for group, inputs in feeder.feed(groups, windows, types):
        ids, mask = pad_batch([windows[i] for i in group], 3)
        assert inputs["input_ids"].tolist() == ids.tolist()
        assert inputs["attention_mask"].tolist() == mask.tolist()
        expected_types = np.zeros_like(ids)
        for row, i in enumerate(group):
            if types[i] is not None:
                expected_types[row, : len(types[i])] = types[i]
        assert inputs["token_type_ids"].tolist() == expected_types.tolist()
        seen.append(group.tolist())
    assert seen == [g.tolist() for g in groups]


def test_the_two_buffer_sets_alternate_and_grow_only_past_their_capacity():
    windows = [np.arange(1, n + 1) for n in (4, 4, 3, 2, 2, 12)]
    groups = [np.array([0, 1]), np.array([2]), np.array([3, 4]), np.array([0]), np.array([5])]
    feeder = MicroBatchFeeder("cpu", pad_id=0, uses_token_types=False, capacity=8)
    used = [inputs["input_ids"].untyped_storage().data_ptr() for _, inputs in feeder.feed(groups, windows, [None] * 6)]
    first, second = (b.tensors["input_ids"] for b in feeder.buffers)
    # Groups 0-3 fit the 8-value capacity: they alternate between the two sets allocated once. The
    # 12-token window (group 4, set 0) outgrows set 0, which is reallocated; set 1 is kept.
    assert used[:4] == [used[0], used[1]] * 2 and used[0] != used[1]
    assert used[1] == second.untyped_storage().data_ptr() and second.numel() == 8
    assert used[4] == first.untyped_storage().data_ptr() != used[0] and first.numel() == 12


def test_predict_results_equal_each_window_run_alone_in_document_order(tiny_ner_dir):
    """Prefetched, padded, sorted micro-batches give every window what it gets unpadded and alone."""
    runner = LocalRunner(_spec(tiny_ner_dir))
    batch = runner.predict(runner.tokenize(runner.prepare(_docs(30))))
    model = runner.predict.model
    windows = batch.column(C.INPUT_IDS).to_pylist()
    probs = batch.column(C.out("probs")).to_pylist()
    assert sum(len(w) for w in windows) > 30  # some documents span several windows
    for doc_windows, doc_probs in zip(windows, probs):
        assert len(doc_windows) == len(doc_probs)
        for window, got in zip(doc_windows, doc_probs):
            with torch.inference_mode():
                alone = torch.softmax(model(input_ids=torch.tensor([window])).logits[0].float(), -1).numpy()
            np.testing.assert_allclose(np.asarray(got).reshape(alone.shape), alone, atol=1e-5)


def test_threaded_prefetch_gives_the_synchronous_result(tiny_ner_dir):
    """The CUDA-style order (a background thread stages micro-batch k + 1 while k runs), forced on
    CPU, changes nothing in the output."""
    runner = LocalRunner(_spec(tiny_ner_dir))
    tokens = runner.tokenize(runner.prepare(_docs(40)))
    synchronous = runner.predict(tokens)
    runner.predict.feeder = MicroBatchFeeder("cpu", runner.predict.pad_id, runner.predict.uses_token_types,
                                             capacity=96, background=True)
    assert runner.predict.feeder.pool is not None
    assert runner.predict(tokens).to_pylist() == synchronous.to_pylist()
