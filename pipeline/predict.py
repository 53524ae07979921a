"""The model stage: one model load per actor, then every batch's windows flattened, sorted into
token-budget micro-batches, run, and put back in document order. The only stage that touches the
device; Ray-free, so a GPU benchmark calls it directly."""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pyarrow as pa
import torch

from pipeline import columns as C
from pipeline.batching import pad_batch, padded_slots, plan_micro_batches
from pipeline.models import load_model
from pipeline.stages import load_head

log = logging.getLogger(__name__)

# The token budget never shrinks below this after out-of-memory errors (one long window still runs alone).
MIN_TOKEN_BUDGET = 64


def pick_device(spec) -> str:
    return "cuda" if torch.cuda.is_available() and spec.resources.gpus_per_actor > 0 else "cpu"


def pick_dtype(spec, device: str) -> torch.dtype:
    choice = spec.model.dtype
    if choice == "auto":
        if device != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, choice)


class Predict:
    """Callable over a `pyarrow.Table` batch of tokenized documents; adds one `_out_<name>` column per
    head output (per window, a flat list) and `_padded_slots`."""

    def __init__(self, spec, head=None, model=None, device: str | None = None):
        self.spec = spec
        self.head = head or load_head(spec)
        self.device = device or pick_device(spec)
        self.dtype = pick_dtype(spec, self.device)
        if self.device == "cpu":
            # Ray gives an actor one torch thread by default; use the CPUs the actor was granted.
            # In-process (no cpus_per_actor): every core.
            torch.set_num_threads(max(1, int(spec.resources.cpus_per_actor or os.cpu_count() or 1)))
        model_dir = self.head.ctx.extra.get("model_dir", spec.model.path)
        self.model = model or load_model(model_dir, self.head, spec.model, device=self.device, dtype=self.dtype)
        self.max_tokens = spec.batching.max_tokens
        self.pad_id = self.head.tokenizer.pad_token_id if self.head.tokenizer.pad_token_id is not None else 0
        self.uses_token_types = "token_type_ids" in getattr(self.head.tokenizer, "model_input_names", [])
        self.busy_seconds = 0.0

    def __call__(self, batch: pa.Table) -> pa.Table:
        windows_col = batch.column(C.INPUT_IDS).combine_chunks()
        n_docs = batch.num_rows
        valid = windows_col.is_valid().to_numpy(zero_copy_only=False)
        # Flatten every window of every good document (error rows hold no windows) with NumPy views.
        windows = _split(windows_col.flatten())
        per_doc_windows = np.diff(windows_col.offsets.to_numpy())
        owner = np.repeat(np.arange(n_docs), per_doc_windows).tolist()
        types_col = batch.column(C.TOKEN_TYPE_IDS).combine_chunks()
        types: list[np.ndarray | None] = [None] * len(windows)
        if types_col.null_count < n_docs and len(types_col.flatten()):
            per_doc_types = np.diff(types_col.offsets.to_numpy())
            flat_types = _split(types_col.flatten())
            first_type = np.concatenate([[0], np.cumsum(per_doc_types)])
            first_window = np.concatenate([[0], np.cumsum(per_doc_windows)])
            for d in np.nonzero(per_doc_types)[0]:
                for w in range(per_doc_windows[d]):
                    types[first_window[d] + w] = flat_types[first_type[d] + w]
        lengths = np.array([len(w) for w in windows], dtype=np.int64)
        results: dict[str, list] = {name: [None] * len(windows) for name in self.head.forward_outputs}
        groups = plan_micro_batches(lengths, self.max_tokens) if len(windows) else []
        started = time.perf_counter()
        for group in groups:
            self._run_group(group, windows, types, lengths, results)
        self.busy_seconds += time.perf_counter() - started
        pads = padded_slots(groups, lengths) if len(windows) else np.zeros(0, dtype=np.int64)

        # Regroup per document, in the original window order.
        per_doc_pad = np.zeros(n_docs, dtype=np.int64)
        np.add.at(per_doc_pad, np.asarray(owner, dtype=np.int64), pads)
        for name, value_type in self.head.forward_outputs.items():
            per_doc: list[list | None] = [None] * n_docs
            for d in np.nonzero(valid)[0]:
                per_doc[d] = []
            for i, d in enumerate(owner):
                per_doc[d].append(results[name][i])
            batch = batch.append_column(
                pa.field(C.out(name), pa.list_(pa.list_(value_type))), _nested(per_doc, value_type)
            )
        return batch.append_column(pa.field(C.PADDED_SLOTS, pa.int64()), pa.array(per_doc_pad, type=pa.int64()))

    def _run_group(self, group, windows, types, lengths, results) -> None:
        ids, mask = pad_batch([windows[i] for i in group], self.pad_id)
        inputs = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
        if self.uses_token_types:
            tt = np.zeros_like(ids)
            for row, i in enumerate(group):
                if types[i] is not None:
                    tt[row, : len(types[i])] = types[i]
            inputs["token_type_ids"] = torch.from_numpy(tt)
        inputs = {k: v.to(self.device, non_blocking=True) for k, v in inputs.items()}
        try:
            with torch.inference_mode(), _autocast(self.device, self.dtype):
                out = self.head.forward(self.model, inputs, lengths[group])
        except torch.OutOfMemoryError:
            if len(group) == 1:
                raise
            # Halve and retry (crossfit does the same): the budget was too generous for this device,
            # so it stays below this micro-batch's padded size for the rest of the run.
            torch.cuda.empty_cache()
            padded = len(group) * int(lengths[group].max())
            self.max_tokens = min(self.max_tokens, max(MIN_TOKEN_BUDGET, padded // 2))
            half = len(group) // 2
            log.warning("out of memory on %d windows (%d padded tokens); retrying in halves, token budget now %d",
                        len(group), padded, self.max_tokens)
            self._run_group(group[:half], windows, types, lengths, results)
            self._run_group(group[half:], windows, types, lengths, results)
            return
        for name, arrays in out.items():
            for row, i in enumerate(group):
                results[name][i] = arrays[row]


def _split(lists: pa.ListArray) -> list[np.ndarray]:
    """A list<int> array as NumPy views, one per list."""
    offsets = lists.offsets.to_numpy()
    values = lists.values.to_numpy(zero_copy_only=False)
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(lists))]


def _autocast(device: str, dtype: torch.dtype):
    if device == "cuda" and dtype in (torch.float16, torch.bfloat16):
        return torch.autocast("cuda", dtype=dtype)
    return _null()


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _nested(per_doc: list, value_type: pa.DataType) -> pa.Array:
    """list<list<value>> from per-document lists of flat NumPy arrays, built from offsets (no per-value Python)."""
    doc_offsets = [0]
    win_offsets = [0]
    chunks = []
    valid = []
    for doc in per_doc:
        if doc is None:
            doc_offsets.append(doc_offsets[-1])
            valid.append(False)
            continue
        valid.append(True)
        for arr in doc:
            flat = np.asarray(arr).ravel()
            chunks.append(flat)
            win_offsets.append(win_offsets[-1] + len(flat))
        doc_offsets.append(doc_offsets[-1] + len(doc))
    np_type = value_type.to_pandas_dtype()
    values = np.concatenate(chunks).astype(np_type, copy=False) if chunks else np.zeros(0, dtype=np_type)
    inner = pa.ListArray.from_arrays(pa.array(win_offsets, type=pa.int32()), pa.array(values, type=value_type))
    mask = pa.array([not v for v in valid], type=pa.bool_())
    return pa.ListArray.from_arrays(pa.array(doc_offsets, type=pa.int32()), inner, mask=mask)
