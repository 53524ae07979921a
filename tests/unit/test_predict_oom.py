"""Out of memory in the model stage: the micro-batch is retried in halves, and the token budget
stays below what failed for the rest of the run. On CPU, with the real tiny NER model and a head
that raises `torch.OutOfMemoryError` above a padded size, as a GPU would."""

from __future__ import annotations

import sys

import pytest
import torch

from pipeline.local import LocalRunner
from pipeline.predict import MIN_TOKEN_BUDGET
from pipeline.spec import spec_from_dict

DEVICE_LIMIT = 200  # padded tokens the pretend device holds


def _spec(model_dir, max_tokens):
    return spec_from_dict({
        "input": {"path": "unused"},
        "model": {"path": model_dir, "head": "token-classification", "max_length": 32},
        "output": {"path": "unused-out"},
        "batching": {"max_tokens": max_tokens},
    })


def _docs(n):
    return [{"id": i, "text": " ".join(["Alice met Bob in Paris."] * (1 + i % 4))} for i in range(n)]


def _assert_same_rows(got, want) -> None:
    """Every row, label and span equal; scores to a tolerance. Halving changes how windows are grouped
    into micro-batches, and a float computed in another grouping may differ in its last bits (1.5e-8
    on an AMD EPYC, none on the Intel machine where this was written): the same rows in the same
    order is the promise, not the same rounding."""
    assert got.column_names == want.column_names
    _assert_close(got.to_pylist(), want.to_pylist(), "rows")


def _assert_close(a, b, where: str) -> None:
    if isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6), where
    elif isinstance(b, dict):
        assert isinstance(a, dict) and a.keys() == b.keys(), where
        for k in b:
            _assert_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(b, list):
        assert isinstance(a, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.fixture
def small_device(monkeypatch):
    """Every forward pass records its padded size; above DEVICE_LIMIT it fails as CUDA would."""
    from pipeline.heads.token_classification import TokenClassification

    sizes, failures = [], []
    real = TokenClassification.forward

    def forward(self, model, inputs, lengths):
        size = inputs["input_ids"].numel()
        sizes.append(size)
        if size > DEVICE_LIMIT:
            failures.append(size)
            raise torch.OutOfMemoryError(f"CUDA out of memory: tried {size} padded tokens")
        return real(self, model, inputs, lengths)

    monkeypatch.setattr(TokenClassification, "forward", forward)
    return sizes, failures


def test_out_of_memory_halves_and_the_budget_stays_smaller(tiny_ner_dir, small_device):
    reference, _ = LocalRunner(_spec(tiny_ner_dir, 128)).run(_docs(40))  # always fits: no failure
    sizes, failures = small_device
    sizes.clear()
    assert not failures

    runner = LocalRunner(_spec(tiny_ner_dir, 4096))
    first, _ = runner.run(_docs(40))
    assert failures, "the generous budget should overflow the pretend device"
    _assert_same_rows(first, reference)  # halving loses and reorders nothing
    budget = runner.predict.max_tokens
    assert budget < 4096 and budget <= max(failures) // 2

    failures.clear()
    sizes.clear()
    second, _ = runner.run(_docs(40))
    _assert_same_rows(second, reference)
    assert max(sizes) <= budget  # the next batches are planned within the remembered budget
    assert len(failures) <= 1  # at most one more halving step, never the first overflow again
    assert runner.predict.max_tokens <= budget


def test_a_single_window_that_does_not_fit_is_an_error(tiny_ner_dir, small_device, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "DEVICE_LIMIT", 0)  # not even one window fits
    runner = LocalRunner(_spec(tiny_ner_dir, 4096))
    with pytest.raises(torch.OutOfMemoryError):
        runner.run(_docs(3))
    assert runner.predict.max_tokens >= MIN_TOKEN_BUDGET  # never below the floor
