"""The model stage: one model load per actor, then every batch's windows flattened, sorted into
token-budget micro-batches, run, and put back in document order. The only stage that touches the
device; Ray-free, so a GPU benchmark calls it directly."""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import torch

from pipeline import columns as C
from pipeline.batching import pad_batch, padded_slots, plan_by_segment
from pipeline.models import load_model
from pipeline.stages import Postprocess, Tokenize, load_head

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

    columns = C.StageColumns(reads=(C.SHARD, C.INPUT_IDS, C.TOKEN_TYPE_IDS), adds=(C.PADDED_SLOTS,))

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
        self.feeder = MicroBatchFeeder(self.device, self.pad_id, self.uses_token_types, capacity=self.max_tokens)
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
        # A micro-batch never mixes shards: a batch may hold several small ones (pipeline.job's read groups).
        shard_of_window = batch.column(C.SHARD).to_numpy()[np.asarray(owner, dtype=np.int64)]
        groups = plan_by_segment(lengths, shard_of_window, self.max_tokens) if len(windows) else []
        started = time.perf_counter()
        for group, inputs in self.feeder.feed(groups, windows, types):
            self._run_group(group, inputs, windows, types, lengths, results)
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

    def _run_group(self, group, inputs, windows, types, lengths, results) -> None:
        try:
            with torch.inference_mode():
                out = self.head.forward(self.model, inputs, lengths[group])
        except torch.OutOfMemoryError:
            if len(group) == 1:
                raise
            out = None
        if out is None:
            # Halve and retry (crossfit does the same): the budget was too generous for this device,
            # so it stays below this micro-batch's padded size for the rest of the run. The halves are
            # staged outside the feeder, whose buffers hold the micro-batch prefetched next.
            del inputs
            torch.cuda.empty_cache()
            padded = len(group) * int(lengths[group].max())
            self.max_tokens = min(self.max_tokens, max(MIN_TOKEN_BUDGET, padded // 2))
            half = len(group) // 2
            log.warning("out of memory on %d windows (%d padded tokens); retrying in halves, token budget now %d",
                        len(group), padded, self.max_tokens)
            for part in (group[:half], group[half:]):
                self._run_group(part, self.feeder.inputs_now(part, windows, types), windows, types, lengths, results)
            return
        for name, arrays in out.items():
            for row, i in enumerate(group):
                results[name][i] = arrays[row]


def pins_host_memory(device) -> bool:
    """Whether micro-batches are staged in page-locked host memory and copied on a side stream by a
    background thread. Only CUDA gains from it: a non-blocking copy from pageable memory is a
    synchronous one, and page-locked memory needs a CUDA driver. On CPU the model reads the host
    buffers themselves, so there is nothing to copy or overlap."""
    return torch.device(device).type == "cuda"


class _HostBuffers:
    """One set of reusable flat int64 host buffers (ids, mask, token types), grown when a micro-batch
    needs more: allocating page-locked memory costs far more than padding into it."""

    def __init__(self, pinned: bool, capacity: int):
        self.pinned = pinned
        self.capacity = capacity
        self.tensors: dict[str, torch.Tensor] = {}
        self.copied = None  # CUDA event: the last copy out of these buffers has finished reading them

    def take(self, size: int) -> dict[str, torch.Tensor]:
        if not self.tensors or self.tensors["input_ids"].numel() < size:
            # Sized for the token budget, so only a window longer than the budget grows them.
            self.capacity = max(self.capacity, size)
            self.tensors = {k: torch.empty(self.capacity, dtype=torch.int64, pin_memory=self.pinned)
                            for k in ("input_ids", "attention_mask", "token_type_ids")}
        return self.tensors


class MicroBatchFeeder:
    """Pads each micro-batch into reused host buffers and hands it over on the device, the next one
    prepared while the current one runs.

    On CUDA (see `pins_host_memory`) a background thread pads the next micro-batch into page-locked
    buffers and copies it with a non-blocking copy on its own stream while the model thread waits on
    the device for the current one; two buffer sets alternate, so a set is rewritten only after its
    copy has finished. On CPU the same steps run in the calling thread, in the same order."""

    def __init__(self, device, pad_id: int, uses_token_types: bool, capacity: int = 0, background: bool | None = None):
        self.device = torch.device(device)
        pinned = pins_host_memory(self.device)
        if self.device.type == "cuda" and self.device.index is None:
            # The background thread has its own current device; name the one this stage runs on.
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.pad_id = pad_id
        self.uses_token_types = uses_token_types
        self.buffers = [_HostBuffers(pinned, capacity), _HostBuffers(pinned, capacity)]
        self.stream = torch.cuda.Stream(self.device) if pinned else None
        # `background` defaults to the pinned path; tests force it on CPU to check the threaded order.
        background = pinned if background is None else background
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="prefetch") if background else None
        self._turn = 0

    def feed(self, groups, windows, types):
        """(group, inputs on the device) for each group in order; group k + 1 is staged before group k
        is handed over, so on CUDA it is padded and copied while group k runs."""
        if not groups:
            return
        pending = self._submit(groups[0], windows, types)
        try:
            for k, group in enumerate(groups):
                staged = pending.result()
                pending = self._submit(groups[k + 1], windows, types) if k + 1 < len(groups) else None
                yield group, self._on_compute_stream(*staged)
        finally:
            if pending is not None:  # the consumer stopped early: let the staging finish before reuse
                pending.result()

    def inputs_now(self, group, windows, types) -> dict[str, torch.Tensor]:
        """One micro-batch in fresh host memory, copied synchronously: the out-of-memory retry path."""
        host = self._pad(group, windows, types, None)
        return {k: v.to(self.device) for k, v in host.items()}

    def _submit(self, group, windows, types) -> Future:
        buffers = self.buffers[self._turn]
        self._turn ^= 1
        if self.pool is not None:
            return self.pool.submit(self._stage, group, windows, types, buffers)
        done = Future()
        done.set_result(self._stage(group, windows, types, buffers))
        return done

    def _stage(self, group, windows, types, buffers: _HostBuffers):
        if buffers.copied is not None:
            buffers.copied.synchronize()  # the copy two micro-batches ago may still be reading them
        host = self._pad(group, windows, types, buffers)
        if self.stream is None:
            return {k: v.to(self.device) for k, v in host.items()}, None
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            inputs = {k: v.to(self.device, non_blocking=True) for k, v in host.items()}
            buffers.copied = torch.cuda.Event()
            buffers.copied.record(self.stream)
        return inputs, buffers.copied

    def _on_compute_stream(self, inputs, copied) -> dict[str, torch.Tensor]:
        if copied is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(copied)
            for t in inputs.values():
                # Allocated on the copy stream, used on the compute stream: keep the allocator from
                # handing the memory out again before the compute stream is done with it.
                t.record_stream(compute)
        return inputs

    def _pad(self, group, windows, types, buffers: _HostBuffers | None) -> dict[str, torch.Tensor]:
        """The micro-batch as [b, L] tensors: views of `buffers` (fresh memory when None)."""
        seqs = [windows[i] for i in group]
        shape = (len(group), max(len(s) for s in seqs))
        size = shape[0] * shape[1]
        names = ("input_ids", "attention_mask") + (("token_type_ids",) if self.uses_token_types else ())
        flat = buffers.take(size) if buffers is not None else {k: torch.empty(size, dtype=torch.int64) for k in names}
        pad_batch(seqs, self.pad_id, flat["input_ids"].numpy(), flat["attention_mask"].numpy())
        inputs = {k: flat[k][:size].view(shape) for k in names}
        if self.uses_token_types:
            tt = inputs["token_type_ids"].numpy()
            tt.fill(0)
            for row, i in enumerate(group):
                if types[i] is not None:
                    tt[row, : len(types[i])] = types[i]
        return inputs


def _split(lists: pa.ListArray) -> list[np.ndarray]:
    """A list<int> array as NumPy views, one per list."""
    offsets = lists.offsets.to_numpy()
    values = lists.values.to_numpy(zero_copy_only=False)
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(lists))]


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


def head_stages(spec, device: str | None = None) -> dict:
    """tokenize -> predict -> postprocess over one loaded head, in order: the one place the chain is
    built (the fused model actor, compose.ModelStages, and LocalRunner run it; on a cluster each pool's
    actor builds its own stage from compose.model_stages' descriptions)."""
    head = load_head(spec)
    return {"tokenize": Tokenize(spec, head), "predict": Predict(spec, head, device=device),
            "postprocess": Postprocess(spec, head)}
