"""Benchmark of the model stage alone, without Ray: for a GPU machine (where Ray is not installed) or a
quick look on a laptop.

    python -m tools.bench_stage [--docs 4000] [--model DIR] [--device cuda] [--max-tokens 16384]

On the same generated long-tailed corpus and the same model it times, in one run:
  - padded: fixed batches of 32 documents in input order, padded to the longest (what a plain loop or
    transformers' pipeline does);
  - sorted: this job's model stage (length-sorted windows, token-budget micro-batches), in float32;
  - sorted + the device's fast dtype (bf16 / fp16 on CUDA, with SDPA attention).
and prints real tokens/s, padding waste and the ratios. Tokenization is done before timing starts.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def _time(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=4000)
    parser.add_argument("--model", default=None, help="token-classification checkpoint (default: the demo model, "
                        "else MiniLM with a random head)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=None, help="token budget (default 16384 on CUDA, 4096 on CPU)")
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    from tools.bench import _default_model, padding_waste
    from tools.corpus import documents
    from pipeline.batching import pad_batch
    from pipeline.local import LocalRunner
    from pipeline.spec import spec_from_dict

    model_dir, random_head = (args.model, False) if args.model else _default_model()
    budget = args.max_tokens or (16384 if args.device == "cuda" else 4096)
    texts = documents(args.docs, seed=1, long_tail=True)
    rows = [{"id": i, "text": t} for i, t in enumerate(texts)]

    def spec(dtype: str):
        return spec_from_dict({
            "input": {"path": "unused"},
            "model": {"path": model_dir, "head": "token-classification", "max_length": args.max_length,
                      "allow_random_head": random_head, "dtype": dtype},
            "output": {"path": "unused"},
            "resources": {"gpus_per_actor": 1 if args.device == "cuda" else 0, "cpus_per_actor": torch.get_num_threads()},
            "batching": {"max_tokens": budget, "rows_per_batch": 1024},
        })

    results = {}
    for name, dtype in (("sorted fp32", "float32"), ("sorted auto dtype", "auto")):
        runner = LocalRunner(spec(dtype), device=args.device)
        batches = [runner.tokenize(runner.prepare(rows[i : i + 1024])) for i in range(0, len(rows), 1024)]
        runner.predict(batches[0].slice(0, 64))  # warm-up: kernels, allocator
        out = []
        seconds = _time(lambda: out.extend(runner.predict(b) for b in batches), args.device)
        tokens = sum(sum(b.column("_n_tokens").to_pylist()) for b in batches)
        pads = sum(sum(b.column("_padded_slots").to_pylist()) for b in out)
        results[name] = (seconds, tokens, pads / tokens, str(runner.predict.dtype))

    # The padded baseline: the same model and windows, batches of 32 windows in input order.
    runner = LocalRunner(spec("float32"), device=args.device)
    model, pad_id = runner.predict.model, runner.predict.pad_id
    windows = [np.asarray(w) for b in batches for doc in b.column("_input_ids").to_pylist() if doc for w in doc]

    def padded():
        with torch.inference_mode():
            for i in range(0, len(windows), 32):
                ids, mask = pad_batch(windows[i : i + 32], pad_id)
                model(input_ids=torch.from_numpy(ids).to(args.device),
                      attention_mask=torch.from_numpy(mask).to(args.device)).logits.argmax(-1)

    seconds = _time(padded, args.device)
    lengths = [len(w) for w in windows]
    results["padded fp32, batch 32"] = (seconds, sum(lengths), padding_waste(lengths, 32), "torch.float32")

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"device: {device_name}; model: {model_dir}; {len(texts)} documents; budget {budget} tokens")
    print(f"{'system':<26}{'dtype':>16}{'seconds':>9}{'tokens/s':>11}{'padding':>9}")
    base = results["padded fp32, batch 32"]
    for name in ("padded fp32, batch 32", "sorted fp32", "sorted auto dtype"):
        s, t, waste, dtype = results[name]
        print(f"{name:<26}{dtype:>16}{s:>9.2f}{t / s:>11,.0f}{waste:>8.0%}  x{(t / s) / (base[1] / base[0]):.2f}")


if __name__ == "__main__":
    main()
