"""The job spec: a YAML file validated into typed, complete pydantic models.

Every field carries a description; it is the spec reference (`python -m pipeline spec-reference`
prints it and docs/spec.md is built from it). Unknown keys are rejected with their dotted path.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from pipeline.errors import SpecError  # defined there, so that a head raises it without importing this module
from pipeline.heads import DEFAULT_MAX_LENGTH, HEADS, head_entry
from pipeline.heads.options import (  # noqa: F401 - importable from here, as before the registry
    EmbeddingHead,
    FillMaskHead,
    QuestionAnsweringHead,
    SequenceClassificationHead,
    TokenClassificationHead,
)


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
    split_mb: float | None = Field(
        256,
        gt=0,
        description="A Parquet shard larger than this many MB is read by several tasks at once, each a run of whole "
        "row groups of about this size (a file written as one row group is read whole); rows keep their place and "
        "stable ids. null reads every shard with one task.",
    )
    verify: Literal["metadata", "checksum"] = Field(
        "metadata",
        description="How a rerun tells that a finished shard's input is unchanged. `metadata`: locally its size, "
        "modification and change times and inode (an edit caught even when the modification time is put back); on "
        "object storage its size and ETag. `checksum`: a SHA-256 of every shard's bytes, read on the driver before "
        "the work (certain, and a copied or restored input is not redone; costs a read of the whole input). "
        "Switching between them redoes every shard once.",
    )


HeadName = Literal[tuple(entry.name for entry in HEADS)]  # model.head: a registered head


def _max_length_description() -> str:
    """model.max_length's description, with each head's default window (pipeline.heads.HEADS)."""
    special = [e.max_length_note or f"{e.max_length} for {e.name}" for e in HEADS
               if e.max_length_note or e.max_length != DEFAULT_MAX_LENGTH]
    return ("Tokens per window, special tokens included (capped by the model's positions). Default: "
            + "".join(f"{note}; " for note in special) + f"{DEFAULT_MAX_LENGTH} for the other heads.")


class ModelSpec(_Strict):
    path: str = Field(
        description="Checkpoint: a local directory, an `s3://` prefix (copied once per node to a local cache), "
        "or a model-hub name where a hub is reachable."
    )
    head: HeadName = Field(description="Which head to run.")
    max_length: int = Field(
        None,  # filled from the head's entry (pipeline.heads.HEADS) by JobSpec
        ge=8,
        le=8192,
        description=_max_length_description(),
    )
    stride: int | None = Field(
        None,
        ge=0,
        description="Tokens shared by consecutive windows of a long document (transformers' meaning of `stride`). "
        "Default: a quarter of max_length.",
    )
    allow_random_head: bool = Field(
        False,
        description="Run even when the checkpoint has no weights for the requested head, or cannot show it has them "
        "(its config.json lists no `architectures`); the predictions are then random and one warning line says so. "
        "Off by default: such a checkpoint is refused before any work starts.",
    )
    trust_remote_code: bool = Field(False, description="Allow custom modelling code shipped with the checkpoint.")
    allow_pickle: bool = Field(
        False, description="Also load `pytorch_model.bin` (pickle) weights; safetensors only when false."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Compute dtype: `auto` is bfloat16 on CUDA (float16 where bf16 is unsupported), float32 on "
        "CPU, where results equal transformers' pipeline. `bfloat16` on a CPU with AMX or AVX-512-BF16 runs the model "
        "about 2.5x faster, with results of bfloat16's precision."
    )

    @property
    def effective_stride(self) -> int:
        return self.stride if self.stride is not None else self.max_length // 4


HeadSpec = Annotated[Union[tuple(entry.options for entry in HEADS)], Field(discriminator="kind")]


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

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, url: str | None) -> str | None:
        # Checked here, so that a malformed URL is refused in the spec's words (its password masked) and
        # never reaches boto, whose errors quote the URL whole.
        if url is None:
            return url
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number in 0-65535
        except ValueError:
            parts = None
        if parts is not None and "@" in parts.netloc:
            raise ValueError(f"storage.endpoint_url: {_show(url)} holds a user name or password; credentials come "
                             "from the AWS environment variables and chain, never from the spec: remove it")
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"storage.endpoint_url: {_show(url)} is not an endpoint URL; give "
                             "http://host:port or https://host")
        return url


class ActorRange(_Strict):
    min: int = Field(ge=1, description="Actors the pool starts with and never goes below.")
    max: int = Field(ge=1, description="Actors the pool may grow to while work queues up.")

    @model_validator(mode="after")
    def _ordered(self) -> "ActorRange":
        if self.min > self.max:
            raise ValueError(f"min ({_show(self.min)}) is larger than max ({_show(self.max)}); give min <= max")
        return self


# A pool's size: a fixed count, or {min, max} for Ray Data's autoscaling actor pool. The tag picks the
# member by the value's shape, so a mistake gets that member's error only (tags start with "_" and are
# dropped from error locations).
ActorCount = Annotated[
    Union[Annotated[int, Field(ge=1), Tag("_count")], Annotated[ActorRange, Tag("_range")]],
    Discriminator(lambda v: "_range" if isinstance(v, (dict, ActorRange)) else "_count"),
]

_POOL = ("A count, or `{min: 1, max: 8}` for an autoscaling pool that grows while work queues up (on a cluster, "
         "the autoscaler adds nodes for it) and shrinks when idle.")


def pool_bounds(count: "int | ActorRange") -> tuple[int, int]:
    """(min, max) actors of a pool size."""
    return (count, count) if isinstance(count, int) else (count.min, count.max)


class ResourcesSpec(_Strict):
    model_actors: ActorCount = Field(1, description=f"Model actors in the pool. {_POOL} Unset on a laptop run (the job "
                                     "starts its own local Ray on CPU and sizes no pool): one per core, as "
                                     "memory and the input's size allow, each with one torch thread.")
    gpus_per_actor: float = Field(0, ge=0, description="GPUs per model actor; 0 runs on CPU.")
    cpus_per_actor: float | None = Field(
        None,
        gt=0,
        description="CPUs per model actor (torch threads on CPU). Default: when the job starts its own local Ray and "
        "runs on CPU, this machine's cores shared out among the model actors (the model is the heavy stage), else 1.",
    )
    model_resources: dict[str, float] = Field(
        {},
        description="Custom Ray resources each model actor needs (e.g. `{accelerator_node: 1}`): the actors go only "
        "to nodes started with them (`ray start --resources`, a KubeRay group's `rayStartParams.resources`).",
    )
    tokenize_actors: ActorCount = Field(1, description=f"CPU actors that tokenize. {_POOL}")
    postprocess_actors: ActorCount = Field(
        1, description=f"CPU actors that turn model outputs into output rows. {_POOL}"
    )
    cpu_stage_resources: dict[str, float] = Field(
        {},
        description="Custom Ray resources each read, tokenize, postprocess and write task or actor needs (e.g. "
        "`{cpu_node: 0.01}`): keeps the CPU stages off the nodes that lack them, such as GPU nodes.",
    )
    ray_address: str | None = Field(
        None, description="Ray cluster address; default: the cluster this process runs in, else a local one."
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "tokenizer_actors" in data:
            raise ValueError("resources.tokenizer_actors: renamed; set resources.tokenize_actors and "
                             "resources.postprocess_actors (each its own pool)")
        return data


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
                # An unknown head gets the common default: its own error (model.head) says it all.
                max_length = head_entry(head_name).max_length if head_name in _HEAD_TAGS else DEFAULT_MAX_LENGTH
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
        entry = head_entry(self.model.head)
        granularity = self.output.granularity
        if granularity not in entry.granularities:
            writers = [e.name for e in HEADS if granularity in e.granularities]
            raise ValueError(f"output.granularity: `{granularity}` is for {_and(writers)}, not {self.model.head}")
        if self.head is not None:
            self.head.check(self)
        if self.input.text_pair_column and not entry.text_pairs:
            pairs = [e.name for e in HEADS if e.text_pairs]
            raise ValueError(f"input.text_pair_column: only the {_and(pairs)} head{'s take' if len(pairs) > 1 else ' takes'} "
                             "text pairs")
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


# The spec file is untrusted input. YAML aliases are refused outright, not expanded and counted: a spec
# is a short hand-written file in which an alias saves a line or two, while nine anchors of nine aliases
# each (a "billion laughs" of under 1 KiB) stand for 9**9 values, which no cap on the file's size or
# depth would see, and which then cost minutes and gigabytes to validate and to quote in the error.
# The caps on size and depth bound what is left: the YAML parse, pydantic, and the error message. Depth
# is counted while the (recursive) YAML composer builds the tree, so 20,000 brackets stop at the cap
# instead of in a RecursionError.
MAX_SPEC_BYTES = 256 << 10  # 256 KiB: a spec is a few KiB; PyYAML reads 256 KiB of `[1,1,...` in 2-3 s
MAX_SPEC_DEPTH = 64  # levels of nested mappings and lists: a spec uses 4


class _Refused(yaml.MarkedYAMLError):
    """Spec YAML refused before it is built: an alias, or nesting deeper than MAX_SPEC_DEPTH."""


class _SpecLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, refusing aliases and nesting deeper than MAX_SPEC_DEPTH as it composes."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(problem=f"YAML aliases ({_clip('*' + str(event.anchor), 40)}) are not supported; "
                           "write the value out", problem_mark=event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_SPEC_DEPTH:
                raise _Refused(problem=f"values nested more than {MAX_SPEC_DEPTH} levels deep; a spec needs a few",
                               problem_mark=self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _load_yaml(text: str) -> Any:
    """One YAML document, as yaml.safe_load reads it, through _SpecLoader. Raises yaml.YAMLError (a
    _Refused for an alias or too deep), or ValueError for a value Python cannot hold (a date
    2026-02-30, an integer of more than 4300 digits)."""
    loader = _SpecLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


_CLOSERS = {"[": ("]", "list"), "{": ("}", "mapping")}


def _yaml_words(e: yaml.YAMLError, text: str) -> tuple[Any, str]:
    """A YAML syntax error as (the mark to point at, or None; what is wrong and what to do, in plain
    words), instead of PyYAML's parser states ("expected <block end>, but found '<block mapping
    start>'"). Anything not recognised keeps PyYAML's problem text."""
    if isinstance(e, yaml.reader.ReaderError):  # a control character, found before any parsing
        before = text[: e.position]
        mark = yaml.Mark("", e.position, before.count("\n"), e.position - (before.rfind("\n") + 1), None, None)
        code = e.character if isinstance(e.character, int) else ord(e.character[:1] or "\0")
        return mark, f"a control character (U+{code:04X}) that YAML does not allow; remove it"
    problem = str(getattr(e, "problem", None) or "")
    context = str(getattr(e, "context", None) or "")
    mark, opened = getattr(e, "problem_mark", None), getattr(e, "context_mark", None)
    lines = text.splitlines()
    line = lines[mark.line] if mark is not None and mark.line < len(lines) else ""
    at = f"line {opened.line + 1}, column {opened.column + 1}" if opened is not None else "above"
    found = re.search(r"(?:found|got|character|tag) '(.*?)'(?: that cannot start any token)?$", problem)
    found = found.group(1) if found else ""
    if "cannot start any token" in problem:
        if found == "\\t":
            return mark, "a tab; YAML indents and separates with spaces only: replace the tab with spaces"
        return mark, f"a value cannot start with {found}; put the value in quotes ('{found}...')"
    if context == "while scanning a quoted scalar" and opened is not None:
        quote = text[opened.index] if opened.index < len(text) else '"'
        return opened, f"this {quote} is never closed; end the value with {quote} on the same line"
    if "escape" in problem and "double-quoted" in context:
        if problem.startswith("found unknown escape character") and mark.column > 0:  # at the backslash
            mark = yaml.Mark(mark.name, mark.index - 1, mark.line, mark.column - 1, None, None)
        return mark, ("a backslash in double quotes starts an escape (\\n, \\t), and this is none; use single "
                      "quotes for text with backslashes ('C:\\dir'), or double the backslash")
    if problem == "mapping values are not allowed here":
        if ": " in line[: mark.column] or line[: mark.column].endswith(":"):
            return mark, ("a second `:` on this line; a value that holds `: ` must be quoted (key: \"a: b\"), "
                          "and a section's keys go on lines of their own, indented under it")
        if mark.column >= 1024:
            return mark, "a key longer than YAML allows (1,024 characters); shorten it"
        return mark, ("this key is indented under a line that already has a value; line it up with the keys "
                      "above it, or, for a section, leave the value off the line above")
    if problem == "could not find expected ':'" and opened is not None:
        return opened, ("this line is neither `key: value` nor part of the value above it; add `: ` after the "
                        "key, or indent it under its key")
    if problem.startswith("expected <block end>"):
        if found == "<block mapping start>":
            spaces = f"{mark.column} space{'' if mark.column == 1 else 's'}"
            return mark, (f"this line is indented {spaces}, which lines up with no key above it; start the keys "
                          "of one section in the same column, with spaces")
        if found == "-":
            return mark, ("a list item (`- `) where a key was expected; put the list under its key (`key:`, then "
                          "the items indented under it)")
        if found == "?" and "collection" in context:
            return mark, "a `key:` among list items (`- `); a section holds either keys or `- ` items, not both"
        if found == "<scalar>":
            return mark, ("text after a complete value; put the whole value in its quotes, or the key on a line "
                          "of its own")
    if context in ("while parsing a flow sequence", "while parsing a flow mapping") and opened is not None:
        bracket = text[opened.index] if opened.index < len(text) else "["
        closer, what = _CLOSERS.get(bracket, ("]", "list"))
        if found == ":":
            return mark, (f"a `: ` inside the {bracket} {what} opened at {at}; quote the value that holds it "
                          f"(\"a: b\"), or close the {what} with {closer} before it")
        if found in ("]", "}"):
            return mark, f"{found} closes the {bracket} {what} opened at {at}; close it with {closer}"
        if found == "<stream end>":
            return opened, f"this {bracket} {what} is never closed; end it with {closer}"
        return mark, f"the {bracket} {what} opened at {at} is never closed; end it with {closer}"
    if problem.startswith("expected the node content"):
        return mark, f"a value was expected here, not {found}; put the value in quotes if it starts with {found}"
    if problem == "but found another document":
        return mark, "a second YAML document (`---`); a spec is one document: remove the line and what follows"
    if problem.startswith("could not determine a constructor for the tag"):
        tag = re.sub(r"^tag:yaml\.org,2002:", "!!", found)
        return mark, (f"the tag {_clip(tag, 60)} is not supported; a spec holds plain values (text, numbers, "
                      "true/false, lists and mappings)")
    if problem == "found unhashable key":
        return mark, "a list or mapping as a key; a key is a plain word (quote it if it starts with [ or {)"
    if "alphabetic or numeric" in problem and context in ("while scanning an anchor", "while scanning an alias"):
        return opened or mark, "& and * start YAML anchors and aliases; quote a value that starts with them"
    if context == "while scanning a block scalar":
        return mark, "only + or - or a digit may follow | or > on its line; put the text on the lines below, indented"
    if problem.startswith("expected '<document start>'") or "YAML directive" in problem:
        return mark, "a line starting with % (this one or one above) is a YAML directive, which a spec does not take; remove it"
    if "for merging" in problem:
        return mark, "`<<:` (a YAML merge key) takes a mapping; write the keys out instead"
    return mark, problem or type(e).__name__


# userinfo in a URL: scheme://user:password@host (or //user@host): the part before the host's `@`.
_USERINFO = re.compile(r"((?:\b[A-Za-z][A-Za-z0-9+.-]*:)?//)([^/?#@\s'\"]*)@")


def _redact(text: str) -> str:
    """`text` with the password of every URL in it masked: http://user:***@host (a user alone, which may
    be a token, is masked whole: http://***@host)."""
    def mask(m: re.Match) -> str:
        user, colon, _ = m.group(2).partition(":")
        return f"{m.group(1)}{_clip(user, 40) + ':***' if colon else '***'}@"

    return _USERINFO.sub(mask, text) if "@" in text else text


def _clip(text: str, limit: int) -> str:
    """`text`, or its start, an ellipsis and its length when longer than `limit`."""
    return text if len(text) <= limit else f"{text[:limit - 3]}... ({len(text):,} characters)"


_LONG_WORD = re.compile(r"\S{201,}")


def _guard(message: str) -> str:
    """The last word on a message that quotes input: URL passwords masked, and any run of more than 200
    characters without a space (a value quoted whole somewhere) cut to its start and its length."""
    return _LONG_WORD.sub(lambda m: _clip(m.group(0), 80), _redact(message))


def _dotted(loc: tuple) -> str:
    """A pydantic error location as the spec's dotted key: head.top_k, output.columns[0]. The
    discriminator tag pydantic inserts for the head union (head.token-classification.x) is dropped."""
    loc = tuple(loc)
    if len(loc) > 1 and loc[0] == "head" and loc[1] in _HEAD_TAGS:
        loc = loc[:1] + loc[2:]
    loc = tuple(p for p in loc if not (isinstance(p, str) and p in _UNION_TAGS))
    out = ""
    for part in loc:
        # A key is input too: a long one is cut, a URL's password masked.
        out += f"[{part}]" if isinstance(part, int) else f"{'.' if out else ''}{_clip(_redact(str(part)), 60)}"
    return out or "(spec)"


_UNION_TAGS = {"_count", "_range"}  # ActorCount's members
_HEAD_TAGS = {entry.name for entry in HEADS}  # the head union's tags: model.head's names


def _head_classes() -> dict[str, type[BaseModel]]:
    """model.head's names (in the spec's order) -> the class of their `head.*` options."""
    return {entry.name: entry.options for entry in HEADS}


def _and(names: list[str]) -> str:
    """a, b and c."""
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else "".join(names)


def _options(cls: type[BaseModel]) -> list[str]:
    return [name for name in cls.model_fields if name != "kind"]


def _show(value: Any) -> str:
    """A value as the spec's YAML would spell it, briefly."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    # Never repr() the whole value: it is the user's, of any size (a list of a million items), and may
    # hold a URL with a password. _brief looks at a few items of a few levels, each string masked and cut.
    text = _brief(value, 2)
    if not isinstance(value, (list, tuple, dict, set, frozenset)):
        return text  # a string or a number: cut by _brief, with its length
    if len(text) > 60:
        text = text[:57] + "..."
    return text + (f" ({len(value):,} items)" if len(value) > 3 or text.endswith("...") else "")


def _brief(value: Any, depth: int) -> str:
    """A short repr of `value`: strings masked (_redact) and cut past 40 characters, with their length;
    at most 3 items of a list or mapping, `depth` levels down."""
    if isinstance(value, str):
        text = _redact(value)
        if len(text) <= 48:
            return repr(text)
        quoted = repr(text[:40])
        return f"{quoted[:-1]}...{quoted[-1]} ({len(value):,} characters)"
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        brackets = "{}" if isinstance(value, (dict, set, frozenset)) else "()" if isinstance(value, tuple) else "[]"
        if not value:
            return repr(value)
        if depth <= 0:
            return f"{brackets[0]}...{brackets[1]}"
        items = []
        for n, item in enumerate(value.items() if isinstance(value, dict) else value):
            if n == 3:
                items.append("...")
                break
            items.append(f"{_brief(item[0], depth - 1)}: {_brief(item[1], depth - 1)}" if isinstance(value, dict)
                         else _brief(item, depth - 1))
        return brackets[0] + ", ".join(items) + brackets[1]
    text = repr(value)  # a number, a date, bytes (!!binary): bounded by the spec's size
    return text if len(text) <= 48 else f"{text[:40]}... ({len(text):,} characters)"


def _close(word: Any, choices: list[str]) -> str | None:
    """The choice `word` most likely misspells: difflib's closest, else the one choice containing it
    (or contained in it)."""
    import difflib

    if not isinstance(word, str) or not word:
        return None
    found = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if found:
        return found[0]
    low = word.lower().replace("-", "_")
    within = [c for c in choices if len(low) >= 3 and (low in c.lower().replace("-", "_") or c.lower() in low)]
    return within[0] if len(within) == 1 else None


# transformers' pipeline task names (and common words) for the heads they are.
_HEAD_ALIASES = {alias: entry.name for entry in HEADS for alias in entry.aliases}


def _alias_head(word: str) -> str | None:
    """The head whose alias `word` is one word of (sentiment: sentiment-analysis), or a close misspelling
    of; None when no one head fits."""
    import difflib

    key = word.lower().replace("_", "-").replace(" ", "-")
    heads = {head for alias, head in _HEAD_ALIASES.items() if key in alias.split("-")}
    if len(heads) == 1:
        return heads.pop()
    found = difflib.get_close_matches(key, list(_HEAD_ALIASES), n=1, cutoff=0.8)
    return _HEAD_ALIASES[found[0]] if found else None


def _section_model(loc: tuple) -> type[BaseModel] | None:
    """The model of the section at `loc` (as pydantic gives it; () is the whole spec), or None when
    `loc` is not a section."""
    cls: type[BaseModel] = JobSpec
    loc = tuple(loc)
    if len(loc) >= 2 and loc[0] == "head" and loc[1] in _HEAD_TAGS:
        cls, loc = _head_classes()[loc[1]], loc[2:]
    for part in loc:
        field = cls.model_fields.get(part) if isinstance(part, str) else None
        ann = field.annotation if field is not None else None
        if ann is not None and ann == ResourcesSpec.model_fields["model_actors"].annotation:
            ann = ActorRange  # a pool size, given as {min, max}
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        cls = ann
    return cls


def _section_fields(loc: tuple) -> list[str] | None:
    cls = _section_model(loc)
    return _options(cls) if cls is not None else None


def _elsewhere(key: str, section: str) -> list[str]:
    """The dotted keys named `key` in other sections (head options with their head)."""
    places = []
    for name, field in JobSpec.model_fields.items():
        ann = field.annotation
        if name != section and isinstance(ann, type) and issubclass(ann, BaseModel) and key in ann.model_fields:
            places.append(f"{name}.{key}")
    if section != "head":
        heads = [head for head, cls in _head_classes().items() if key in _options(cls)]
        if heads:
            places.append(f"head.{key} (an option of {', '.join(heads)})")
    return places


def _unknown_key(loc: tuple, dotted: str) -> str:
    key = loc[-1]
    if len(loc) == 3 and loc[0] == "head" and loc[1] in _HEAD_TAGS:
        head, heads = loc[1], _head_classes()
        takes = f"{head} takes {', '.join(_options(heads[head])) or 'no options'}"
        owners = [name for name, cls in heads.items() if name != head and key in _options(cls)]
        if owners:
            whose = f"the {owners[0]} head" if len(owners) == 1 else f"the {', '.join(owners[:-1])} and {owners[-1]} heads"
            return f"{dotted}: an option of {whose}, not of {head} ({takes}); remove it or change model.head"
        match = _close(key, _options(heads[head]))
        return f"{dotted}: unknown key; " + (f"did you mean head.{match}? ({takes})" if match else f"{takes}")
    fields = _section_fields(loc[:-1]) or []
    section = ".".join(str(p) for p in loc[:-1])
    match = _close(key, fields)
    if match:
        return f"{dotted}: unknown key; did you mean {section + '.' if section else ''}{match}?"
    other = _elsewhere(str(key), section) if section else []
    if other:
        return f"{dotted}: unknown key here; did you mean {' or '.join(other)}?"
    where = f"{section} takes" if section else "the spec's sections are"
    return f"{dotted}: unknown key; {where} {', '.join(fields)} (see docs/spec.md, the spec reference)"


def _missing(loc: tuple, dotted: str) -> str:
    cls = _section_model(loc)
    if cls is not None:  # a whole section
        required = [n for n, f in cls.model_fields.items() if f.is_required()]
        keys = f" with {', '.join(f'{dotted}.{n}' for n in required)}" if required else ""
        return f"{dotted}: required key is missing; add the {dotted} section{keys}"
    parent = _section_model(loc[:-1])
    field = parent.model_fields.get(loc[-1]) if parent is not None else None
    what = (field.description or "").split(". ")[0].rstrip(".") if field is not None else ""
    if loc == ("model", "head"):
        what = "one of " + ", ".join(_head_classes())
    return f"{dotted}: required key is missing; add it" + (f" ({what})" if what else "")


def _not_a_choice(loc: tuple, dotted: str, value: Any, expected: str) -> str:
    import re

    choices = re.findall(r"'([^']*)'", expected)
    noun = "a head" if loc == ("model", "head") else "a choice"
    if value is None:
        return f"{dotted}: has no value; choose one of {', '.join(choices)}"
    match = _close(value, choices)
    if loc == ("model", "head") and isinstance(value, str):
        match = _HEAD_ALIASES.get(value.lower().replace("_", "-"), _HEAD_ALIASES.get(value.lower(), match))
        if match is None:  # a word of, or a typo of, a name people try (sentiment: sentiment-analysis)
            match = _alias_head(value)
    hint = f" (did you mean {match}?)" if match else ""
    return f"{dotted}: {_show(value)} is not {noun}; choose one of {', '.join(choices)}{hint}"


_BOUNDS = {
    "greater_than_equal": ("ge", "too small", "use at least"),
    "greater_than": ("gt", "too small", "use more than"),
    "less_than_equal": ("le", "too large", "use at most"),
    "less_than": ("lt", "too large", "use less than"),
}

_KINDS = {  # pydantic error type -> (what the value is not, what to give)
    "int_parsing": ("a whole number", "give an integer"),
    "int_type": ("a whole number", "give an integer"),
    "int_from_float": ("a whole number", "give an integer"),
    "float_parsing": ("a number", "give a number"),
    "float_type": ("a number", "give a number"),
    "bool_parsing": ("true or false", "give true or false"),
    "bool_type": ("true or false", "give true or false"),
    "list_type": ("a list", "give a list, e.g. [a, b]"),
}


def _one_error(e: dict, head_name_bad: bool) -> str | None:
    kind, value = e["type"], e.get("input")
    loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p in _UNION_TAGS))
    dotted, ctx, msg = _dotted(loc), e.get("ctx") or {}, e["msg"]
    if msg.startswith("Value error, "):
        return msg[len("Value error, ") :]  # our validators' messages start with the field path
    if loc == ("head",) and kind in ("union_tag_invalid", "union_tag_not_found"):
        # The head's options are checked against model.head, whose own error says it all.
        return None if head_name_bad else "head: options given but no model.head; set model.head"
    if kind == "extra_forbidden":
        return _unknown_key(loc, dotted)
    if kind == "missing":
        return _missing(loc, dotted)
    if kind == "literal_error":
        return _not_a_choice(loc, dotted, value, ctx.get("expected", ""))
    if kind in _BOUNDS:
        name, wrong, do = _BOUNDS[kind]
        return f"{dotted}: {_show(value)} is {wrong}; {do} {ctx.get(name)}"
    if kind in _KINDS:
        wrong, do = _KINDS[kind]
        return f"{dotted}: {_show(value)} is not {wrong}; {do}"
    if kind == "string_type":
        if value is None:
            return _missing(loc, dotted).replace("required key is missing", "has no value", 1)
        if isinstance(value, (int, float, bool)):
            return f"{dotted}: {_show(value)} is not text; quote it in the YAML ('{_show(value)}')"
        return f"{dotted}: {_show(value)} is not text; give a string"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        fields = _section_fields(loc)
        keys = f" ({', '.join(fields)})" if fields else " (the options of model.head's head: see the spec reference)"
        return f"{dotted}: {_show(value)} is not a section; write its keys{keys} indented under {dotted}:"
    text = msg[len("Input should be ") :] if msg.startswith("Input should be ") else msg[:1].lower() + msg[1:]
    return f"{dotted}: {_show(value)} is not valid; it must be {text}" if msg.startswith("Input should be ") \
        else f"{dotted}: {text}"


def format_validation_error(err: ValidationError) -> str:
    """pydantic's errors as sentences `field: what is wrong; what to do`, the spec's own words (dotted
    keys, YAML values), one per problem."""
    errors = err.errors(include_url=False)
    head_name_bad = any(tuple(e["loc"]) == ("model", "head") for e in errors)
    messages: list[str] = []
    seen = 0
    for e in errors:
        if len(messages) == _MAX_PROBLEMS:
            break  # a list of a million wrong items is a million errors: say the first few
        seen += 1
        msg = _one_error(e, head_name_bad)
        msg = _guard(msg) if msg else msg
        if msg and msg not in messages:
            messages.append(msg)
    out = ""
    for msg in messages:
        out += ("" if not out else " " if out.endswith(("?", ".", ":")) else ". ") + msg
    if seen < len(errors):
        out += f" (and up to {len(errors) - seen:,} more problems)"
    return out


_MAX_PROBLEMS = 10  # problems told in one message


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise SpecError(f"--set {_show(item)}: expected key.path=value")
    key, value = item.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise SpecError(f"--set {_show(item)}: empty key")
    # Values parse as YAML scalars: 8 is an int, true a bool, null None, [a, b] a list. The spec file's
    # loader: no aliases, no deeper than MAX_SPEC_DEPTH.
    try:
        parsed = _load_yaml(value) if value != "" else ""
    except (yaml.YAMLError, ValueError):
        parsed = value  # not YAML (a glob starting with *, an alias, a date 2026-02-30): keep the text
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
                raise SpecError(f"--set {_show(item)}: {_clip(_redact(k), 60)} is not a section")
            node = nxt
        node[keys[-1]] = value
    return data


def load_spec(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)  # no more: the spec is untrusted (see MAX_SPEC_BYTES)
    except OSError as e:
        raise SpecError(f"{path}: cannot read the spec ({e.strerror or e})") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: larger than {MAX_SPEC_BYTES >> 10} KiB; a spec is a short YAML file (is it "
                        "the right file?)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"{path}: not UTF-8 text (byte {e.start + 1} cannot be read); save the spec as UTF-8") from None
    try:
        data = _load_yaml(text) or {}
    except _Refused as e:
        mark = e.problem_mark
        raise SpecError(f"{path} line {mark.line + 1}, column {mark.column + 1}: {e.problem}") from None
    except yaml.YAMLError as e:
        # One line, "spec.yaml line L, column C: what is wrong; what to do", in plain words.
        mark, words = _yaml_words(e, text)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise SpecError(_guard(f"{path}{where}: {words} (not valid YAML)")) from None
    except RecursionError:  # not expected past _SpecLoader's depth cap: one sentence all the same
        raise SpecError(f"{path}: values nested too deeply to read; a spec needs a few levels") from None
    except ValueError as e:  # a value YAML reads but Python cannot hold
        reason = str(e).split(";")[0] or type(e).__name__
        raise SpecError(_guard(f"{path}: a value cannot be read ({reason}); quote it to keep it as text")) from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: the spec must be a mapping with input, model, output sections")
    data = apply_overrides(data, overrides or [])
    return spec_from_dict(data, source=str(path))


def spec_from_dict(data: dict, source: str = "spec") -> JobSpec:
    try:
        return JobSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(f"{source}: {format_validation_error(e)}") from None
    except RecursionError:  # a dict nested thousands deep, given to apply() (load_spec caps the depth)
        raise SpecError(f"{source}: values nested too deeply; a spec needs a few levels") from None


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
    for entry in HEADS:
        rows.append(f"| **{entry.name}** | | options under `head.` |")
        walk(entry.options, "head.")
    return "\n".join(rows)
