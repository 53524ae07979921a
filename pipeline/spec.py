"""The job spec: a YAML file validated into typed, complete pydantic models.

Every field carries a description; it is the spec reference (`python -m pipeline spec-reference`
prints it and the README copies it). Unknown keys are rejected with their dotted path.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    path: str = Field(description="Input shards: a file, a directory, or a glob; local or `s3://`.")
    format: Literal["parquet", "jsonl"] | None = Field(
        None,
        description="`parquet` or `jsonl`; inferred from the extension when omitted (.parquet, .pq; .jsonl, .json, "
        ".ndjson, each optionally .gz, .gzip, .bz2, .zst, .zstd). A file in an input directory whose format cannot be "
        "inferred is an error before any work unless this is set; files starting with `_` or `.` are skipped.",
    )
    id_column: str = Field(
        "id",
        description="Column with the document id, carried to every output row with its input type. When the input has "
        "no such column, a stable id `<shard file name>:<row index>` is made.",
    )
    text_column: str = Field("text", description="Column with the text to run the model on.")
    text_pair_column: str | None = Field(
        None, description="Optional second segment (token_type_ids 1), for sequence-pair classification."
    )
    question_column: str = Field("question", description="Question column (question-answering head).")
    context_column: str = Field("context", description="Context column (question-answering head).")


class ModelSpec(_Strict):
    path: str = Field(
        description="Checkpoint: a local directory, an `s3://` prefix (copied once per actor to a local cache), "
        "or a model-hub name where a hub is reachable."
    )
    head: Literal["token-classification", "embedding", "sequence-classification", "fill-mask", "question-answering"] = (
        Field(description="Which head to run.")
    )
    max_length: int = Field(
        None,  # filled from the head by JobSpec: DEFAULT_MAX_LENGTH
        ge=8,
        le=8192,
        description="Tokens per window, special tokens included (capped by the model's positions). Default: 384 for "
        "question-answering (the window transformers' QA pipeline uses, its `max_seq_len`); for embedding, a "
        "sentence-transformers checkpoint's `max_seq_length` (its `sentence_bert_config.json`), else 512; 512 for the "
        "other heads.",
    )
    stride: int | None = Field(
        None,
        ge=0,
        description="Tokens shared by consecutive windows of a long document (transformers' meaning of `stride`). "
        "Default: a quarter of max_length.",
    )
    allow_random_head: bool = Field(
        False,
        description="Run even when the checkpoint has no weights for the requested head (they would be random). "
        "Off by default: such a checkpoint is refused before any work starts.",
    )
    trust_remote_code: bool = Field(False, description="Allow custom modelling code shipped with the checkpoint.")
    allow_pickle: bool = Field(
        False, description="Also load `pytorch_model.bin` (pickle) weights; safetensors only when false."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Compute dtype: `auto` is bfloat16 on CUDA (float16 where bf16 is unsupported), float32 on CPU."
    )

    @property
    def effective_stride(self) -> int:
        return self.stride if self.stride is not None else self.max_length // 4


# model.max_length when the spec leaves it out: what transformers' pipeline for the head uses.
DEFAULT_MAX_LENGTH = {"question-answering": 384}
DEFAULT_MAX_LENGTH_OTHER_HEADS = 512


class TokenClassificationHead(_Strict):
    kind: Literal["token-classification"] = "token-classification"
    aggregation_strategy: Literal["none", "simple", "first", "average", "max"] = Field(
        "simple", description="How tokens become entities; transformers' `TokenClassificationPipeline` semantics."
    )
    ignore_labels: list[str] = Field(["O"], description="Labels never reported as entities.")


class EmbeddingHead(_Strict):
    kind: Literal["embedding"] = "embedding"
    pooling: Literal["mean", "cls", "pooler"] | None = Field(
        None,
        description="`mean`: attention-masked mean of the token vectors (sentence-transformers); `cls`: the [CLS] "
        "vector; `pooler`: the model's pooler_output, tanh(dense([CLS])). Default: a sentence-transformers "
        "checkpoint's own pooling (its `1_Pooling/config.json`), else `mean`. Ignored at token granularity.",
    )
    normalize: bool | None = Field(
        None,
        description="L2-normalise each embedding. Default: true when a sentence-transformers checkpoint ends in a "
        "`Normalize` module (its `modules.json`), else false.",
    )
    layer: int | None = Field(
        None, description="Hidden layer to pool (negative counts from the end; default the last)."
    )
    long_document: Literal["truncate", "mean"] = Field(
        "truncate",
        description="Documents longer than max_length: `truncate` to the first window (counted in the summary) or "
        "`mean`, the token-weighted mean of the windows' embeddings.",
    )


class SequenceClassificationHead(_Strict):
    kind: Literal["sequence-classification"] = "sequence-classification"
    function_to_apply: Literal["auto", "softmax", "sigmoid", "none"] = Field(
        "auto",
        description="`auto`: sigmoid when the config's problem_type is multi_label_classification or there is one "
        "label, softmax otherwise (transformers' semantics).",
    )
    top_k: int | None = Field(1, ge=1, description="Labels kept in `scores`, best first; null keeps all.")
    threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="Multi-label: labels whose sigmoid score is at least this go to `labels`."
    )
    long_document: Literal["truncate", "mean", "max"] = Field(
        "truncate",
        description="Documents longer than max_length: `truncate` to the first window, or `mean` / `max` of the "
        "windows' logits.",
    )


class FillMaskHead(_Strict):
    kind: Literal["fill-mask"] = "fill-mask"
    top_k: int = Field(5, ge=1, description="Candidates per mask token.")
    targets: list[str] | None = Field(None, description="Restrict candidates to these words.")


class QuestionAnsweringHead(_Strict):
    kind: Literal["question-answering"] = "question-answering"
    doc_stride: int = Field(128, ge=0, description="Tokens shared by consecutive context windows.")
    max_answer_len: int = Field(15, ge=1, description="Longest answer, in tokens.")
    max_question_len: int = Field(
        64,
        ge=1,
        description="Longest question expected, in tokens; only checks doc_stride (doc_stride < max_length - "
        "max_question_len - 3). Questions are not truncated (as transformers' pipeline with a fast tokenizer); a "
        "question that leaves no room for the context is an error row.",
    )
    top_k: int = Field(1, ge=1, description="Answers per question; `answers` is written when above 1.")
    handle_impossible_answer: bool = Field(False, description="Allow the empty answer (the null score) to win.")


HeadSpec = Annotated[
    Union[
        TokenClassificationHead, EmbeddingHead, SequenceClassificationHead, FillMaskHead, QuestionAnsweringHead
    ],
    Field(discriminator="kind"),
]


class OutputSpec(_Strict):
    path: str = Field(
        description="Output prefix, local or `s3://`; results, `_errors/`, the per-shard markers and `_SUMMARY.json` "
        "go here. Must not be, contain or lie inside the input path."
    )
    granularity: Literal["document", "token"] = Field(
        "document", description="`document`: one row per input row; `token`: one row per non-special token."
    )
    rows_per_file: int = Field(
        100_000, ge=1, description="Rows at most in one output Parquet file; a shard's results are split into "
        "`<shard>-00000.parquet`, `<shard>-00001.parquet`, ... of at most this many rows."
    )
    columns: list[str] = Field(
        [],
        description="Input columns carried to every output row unchanged, after the id (e.g. `[url, date]`); per-token "
        "rows repeat their document's values. Each must exist in the input and not clash with an output column.",
    )
    compression: Literal["zstd", "snappy", "gzip", "lz4", "none"] = Field(
        "zstd", description="Parquet compression of the result and error files (zstd: small and fast; DuckDB, Spark, "
        "pandas and Polars read it)."
    )
    max_error_fraction: float = Field(
        0.1, ge=0.0, le=1.0, description="A run in which more than this share of the rows read became error rows "
        "exits 1 (with the count and the top reasons) and writes no `_SUMMARY.json`; 1.0 never fails on errors."
    )


class StorageSpec(_Strict):
    endpoint_url: str | None = Field(
        None,
        description="S3-compatible endpoint (MinIO, moto, ...). Credentials come from the standard AWS environment "
        "variables and chain, never from the spec.",
    )
    region: str | None = Field(None, description="S3 region, when the store needs one.")


class ResourcesSpec(_Strict):
    model_actors: int = Field(1, ge=1, description="Model actors in the pool.")
    gpus_per_actor: float = Field(0, ge=0, description="GPUs per model actor; 0 runs on CPU.")
    cpus_per_actor: float = Field(1, gt=0, description="CPUs per model actor (torch threads on CPU).")
    tokenizer_actors: int = Field(1, ge=1, description="CPU actors that tokenize (and postprocess).")
    ray_address: str | None = Field(
        None, description="Ray cluster address; default: the cluster this process runs in, else a local one."
    )


class BatchingSpec(_Strict):
    max_tokens: int = Field(
        4096,
        ge=64,
        description="Token budget per forward pass: windows sorted by length are packed so that "
        "windows x longest window stays within it.",
    )
    rows_per_batch: int = Field(256, ge=1, description="Documents per Ray batch handed to each stage.")


class JobSpec(_Strict):
    input: InputSpec
    model: ModelSpec
    head: HeadSpec | None = Field(None, description="Options of the requested head (`head.*`).")
    output: OutputSpec
    storage: StorageSpec = StorageSpec()
    resources: ResourcesSpec = ResourcesSpec()
    batching: BatchingSpec = BatchingSpec()

    @model_validator(mode="wrap")
    @classmethod
    def _head_kind_from_model(cls, data: Any, handler) -> "JobSpec":
        # `head.kind` is implied by `model.head`; users never write it.
        filled = False
        if isinstance(data, dict):
            model = data.get("model")
            head_name = model.get("head") if isinstance(model, dict) else None
            head = data.get("head")
            if head is None:
                head = {}
            if isinstance(head, dict) and head_name is not None:
                if "kind" in head:
                    raise ValueError("head.kind: not a spec key; the head is chosen by model.head")
                data = {**data, "head": {**head, "kind": head_name}}
            if isinstance(model, dict) and model.get("max_length") is None and isinstance(head_name, str):
                max_length = DEFAULT_MAX_LENGTH.get(head_name, DEFAULT_MAX_LENGTH_OTHER_HEADS)
                data = {**data, "model": {**model, "max_length": max_length}}
                filled = True
        spec = handler(data)
        if filled:
            # A filled-in default is not a value the spec set: `"max_length" in spec.model.model_fields_set`
            # says whether the user chose the window (the embedding head otherwise takes a
            # sentence-transformers checkpoint's max_seq_length).
            spec.model.__pydantic_fields_set__.discard("max_length")
        return spec

    @model_validator(mode="after")
    def _check_combinations(self) -> "JobSpec":
        if self.model.effective_stride >= self.model.max_length - 4:
            raise ValueError(
                f"model.stride: {self.model.effective_stride} must be smaller than model.max_length "
                f"({self.model.max_length}) minus the special tokens"
            )
        if self.output.granularity == "token" and self.model.head not in ("token-classification", "embedding"):
            raise ValueError(
                f"output.granularity: `token` is for token-classification and embedding, not {self.model.head}"
            )
        if isinstance(self.head, QuestionAnsweringHead):
            if self.head.doc_stride >= self.model.max_length - self.head.max_question_len - 3:
                raise ValueError(
                    "head.doc_stride: must leave room for new context in each window "
                    "(doc_stride < max_length - max_question_len - 3)"
                )
        if self.input.text_pair_column and self.model.head != "sequence-classification":
            raise ValueError("input.text_pair_column: only the sequence-classification head takes text pairs")
        return self

    def result_fields(self) -> dict[str, Any]:
        """The spec keys that change what a shard's results are (dotted key -> value), for the shard
        markers' fingerprint. Paths of the input and output, resources, batching and file sizes are
        left out: they change where and how fast, not what."""
        fields = {f"input.{k}": v for k, v in self.input.model_dump().items() if k.endswith("_column")}
        model = self.model.model_dump(exclude={"allow_random_head", "trust_remote_code", "allow_pickle"})
        model["stride"] = self.model.effective_stride
        fields |= {f"model.{k}": v for k, v in model.items()}
        fields |= {f"head.{k}": v for k, v in (self.head.model_dump(exclude={"kind"}) if self.head else {}).items()}
        fields["output.granularity"] = self.output.granularity
        fields["output.columns"] = list(self.output.columns)
        return fields


class SpecError(ValueError):
    """A spec that cannot run; the message names the field and what to do."""


def _dotted(loc: tuple) -> str:
    # Drop the discriminator tag pydantic inserts for tagged unions (e.g. head.token-classification.x).
    parts = [str(p) for p in loc if p not in _HEAD_TAGS]
    return ".".join(parts) or "(spec)"


_HEAD_TAGS = {"token-classification", "embedding", "sequence-classification", "fill-mask", "question-answering"}


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = _dotted(tuple(e["loc"]))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the spec reference in README.md)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
            # Messages from our validators already start with the field path.
            lines.append(msg)
            continue
        lines.append(f"{loc}: {msg}")
    return "; ".join(lines)


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise SpecError(f"--set {item!r}: expected key.path=value")
    key, value = item.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise SpecError(f"--set {item!r}: empty key")
    # Values parse as YAML scalars: 8 is an int, true a bool, null None, [a, b] a list.
    try:
        parsed = yaml.safe_load(value) if value != "" else ""
    except yaml.YAMLError:
        parsed = value  # not YAML (a glob starting with *): keep the text
    if isinstance(parsed, (dt.date, dt.datetime)):
        parsed = value  # a bare date is a path component here, not a timestamp
    return keys, parsed


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            nxt = node.get(k)
            if nxt is None:
                nxt = node[k] = {}
            if not isinstance(nxt, dict):
                raise SpecError(f"--set {item!r}: {k} is not a section")
            node = nxt
        node[keys[-1]] = value
    return data


def load_spec(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SpecError(f"{path}: cannot read the spec ({e.strerror or e})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"{path}: not valid YAML{where} ({getattr(e, 'problem', None) or type(e).__name__})") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: the spec must be a mapping with input, model, output sections")
    data = apply_overrides(data, overrides or [])
    return spec_from_dict(data, source=str(path))


def spec_from_dict(data: dict, source: str = "spec") -> JobSpec:
    try:
        return JobSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(f"{source}: {format_validation_error(e)}") from None


def spec_reference() -> str:
    """Markdown table of every spec key, from the field descriptions."""
    rows = ["| key | default | meaning |", "|---|---|---|"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            if name == "kind":
                continue
            ann = field.annotation
            sub = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
            if sub is not None:
                walk(sub, f"{prefix}{name}.")
                continue
            default = "required" if field.is_required() else repr(field.default)
            rows.append(f"| `{prefix}{name}` | {default} | {field.description or ''} |")

    for section, model in JobSpec.model_fields.items():
        if section == "head":
            continue
        ann = model.annotation
        walk(ann, f"{section}.")
    for head in (TokenClassificationHead, EmbeddingHead, SequenceClassificationHead, FillMaskHead, QuestionAnsweringHead):
        rows.append(f"| **{head.model_fields['kind'].default}** | | options under `head.` |")
        walk(head, "head.")
    return "\n".join(rows)
