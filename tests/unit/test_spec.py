"""The job spec: every shipped spec validates; mistakes are refused with the dotted path of the key and
what is wrong; `--set` overrides parse as YAML scalars and create sections."""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from pipeline.spec import (  # noqa: E402
    EmbeddingHead,
    JobSpec,
    QuestionAnsweringHead,
    SpecError,
    TokenClassificationHead,
    apply_overrides,
    load_spec,
    parse_override,
    pool_bounds,
    spec_from_dict,
    spec_reference,
)

JOB_SPECS = sorted((REPO_ROOT / "jobs").glob("*.yaml"))

BASE = {
    "input": {"path": "data/*.jsonl"},
    "model": {"path": "models/ner", "head": "token-classification", "max_length": 128},
    "output": {"path": "out/x"},
}


def spec_with(**sections) -> dict:
    """BASE with sections merged in: spec_with(model={"stride": 3}, head={...})."""
    data = copy.deepcopy(BASE)
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(data.get(name), dict):
            data[name].update(values)
        else:
            data[name] = values
    return data


def error_of(data: dict) -> str:
    with pytest.raises(SpecError) as info:
        spec_from_dict(data)
    return str(info.value)


# -- the shipped specs ----------------------------------------------------------------------------


def test_jobs_directory_has_the_documented_specs():
    names = {p.name for p in JOB_SPECS}
    assert {"laptop.yaml", "embeddings.yaml", "ner_extraction.yaml", "nightly_tagging.yaml", "sentiment.yaml",
            "fill_mask.yaml", "qa.yaml"} <= names


@pytest.mark.parametrize("path", JOB_SPECS, ids=lambda p: p.name)
def test_every_job_spec_validates(path):
    spec = load_spec(path)  # the spec only: input and model paths are checked by `validate`
    assert isinstance(spec, JobSpec)
    assert spec.head is not None and spec.head.kind == spec.model.head


def test_laptop_spec_is_the_demo_ner_job():
    spec = load_spec(REPO_ROOT / "jobs" / "laptop.yaml")
    assert spec.model.head == "token-classification"
    assert spec.model.path == "jobs/models/demo-ner"
    assert spec.input.path == "jobs/data/sample.jsonl"
    assert spec.output.path == "out/laptop"
    assert isinstance(spec.head, TokenClassificationHead) and spec.head.aggregation_strategy == "simple"
    # No pool sizes and no model CPUs: a laptop run fuses the stages into the model actors
    # (placement.is_laptop), a single-threaded actor per core as memory allows (placement.size_pools).
    assert spec.resources.gpus_per_actor == 0
    assert not {"model_actors", "cpus_per_actor", "tokenize_actors", "postprocess_actors"} & spec.resources.model_fields_set
    assert spec.model.max_length == 128


def test_embeddings_spec_is_a_laptop_run_without_a_cluster(monkeypatch):
    # Issue 21: jobs/embeddings.yaml sized its pools (cpus_per_actor: 2), which switched the faster
    # laptop mode off. With no Ray running and no cluster to attach to, it is a laptop run.
    import ray

    from pipeline import placement, raycompat

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(raycompat, "recorded_address", lambda: None)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    spec = load_spec(REPO_ROOT / "jobs" / "embeddings.yaml")
    assert not placement.spec_sizes_pools(spec)
    assert placement.is_laptop(spec)
    assert spec.model.head == "embedding" and spec.output.path == "out/embeddings"


def test_ner_extraction_spec_runs_on_gpus_from_s3():
    spec = load_spec(REPO_ROOT / "jobs" / "ner_extraction.yaml")
    assert spec.input.path.startswith("s3://") and spec.output.path.startswith("s3://")
    assert spec.model.path.startswith("s3://")
    assert spec.resources.gpus_per_actor == 1 and pool_bounds(spec.resources.model_actors) == (1, 4)
    assert spec.batching.max_tokens == 16384


def test_nightly_spec_takes_dated_paths_from_set():
    path = REPO_ROOT / "jobs" / "nightly_tagging.yaml"
    placeholder = load_spec(path)
    assert "YYYY-MM-DD" in placeholder.input.path and "YYYY-MM-DD" in placeholder.output.path
    spec = load_spec(path, ["input.path=s3://my-corpus/daily/2026-11-21/*.jsonl.gz",
                            "output.path=s3://my-results/tags/2026-11-21/"])
    assert spec.input.path == "s3://my-corpus/daily/2026-11-21/*.jsonl.gz"
    assert spec.output.path == "s3://my-results/tags/2026-11-21/"


def test_qa_spec_reads_question_and_context_columns():
    spec = load_spec(REPO_ROOT / "jobs" / "qa.yaml")
    assert isinstance(spec.head, QuestionAnsweringHead)
    assert (spec.input.question_column, spec.input.context_column) == ("question", "context")


# -- defaults ---------------------------------------------------------------------------------------


def test_minimal_spec_gets_complete_defaults():
    spec = spec_from_dict(BASE)
    assert isinstance(spec.head, TokenClassificationHead)
    assert spec.head.aggregation_strategy == "simple" and spec.head.ignore_labels == ["O"]
    assert spec.model.effective_stride == 32  # a quarter of max_length
    assert spec.output.granularity == "document"
    assert spec.resources.model_actors == 1 and spec.resources.gpus_per_actor == 0
    assert spec.storage.endpoint_url is None
    assert spec.input.id_column == "id" and spec.input.text_column == "text"


def test_head_options_follow_model_head():
    spec = spec_from_dict(spec_with(model={"head": "embedding"}, head={"pooling": "cls", "normalize": True}))
    assert isinstance(spec.head, EmbeddingHead) and spec.head.pooling == "cls" and spec.head.normalize


def test_head_null_means_defaults():
    spec = spec_from_dict(spec_with(head=None))
    assert isinstance(spec.head, TokenClassificationHead)


# -- mistakes name the key --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, dotted",
    [
        (spec_with(model={"hed": "embedding"}), "model.hed"),
        (spec_with(head={"aggregation": "simple"}), "head.aggregation"),
        (spec_with(input={"txt_column": "body"}), "input.txt_column"),
        (spec_with(output={"granularty": "token"}), "output.granularty"),
        (spec_with(resources={"gpus": 1}), "resources.gpus"),
        (spec_with(storage={"endpoint": "http://x"}), "storage.endpoint"),
        (spec_with(batching={"max_token": 10}), "batching.max_token"),
        (spec_with(outputs={"path": "x"}), "outputs"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_unknown_keys_are_rejected_with_their_dotted_path(data, dotted):
    msg = error_of(data)
    assert f"{dotted}: unknown key" in msg, msg
    assert "token-classification." not in msg  # pydantic's union tag is not part of the path


@pytest.mark.parametrize(
    "head, option",
    [
        ("token-classification", {"pooling": "mean"}),
        ("token-classification", {"top_k": 3}),
        ("embedding", {"aggregation_strategy": "first"}),
        ("sequence-classification", {"doc_stride": 64}),
        ("fill-mask", {"threshold": 0.5}),
        ("question-answering", {"normalize": True}),
    ],
)
def test_an_option_of_another_head_is_rejected(head, option):
    (key,) = option
    msg = error_of(spec_with(model={"head": head}, head=option))
    # Which head takes the option, and what this head takes instead.
    assert f"head.{key}: an option of the " in msg and f"not of {head} ({head} takes " in msg, msg
    assert msg.endswith("; remove it or change model.head"), msg


def test_head_kind_is_not_a_spec_key():
    msg = error_of(spec_with(head={"kind": "embedding"}))
    assert "head.kind" in msg and "model.head" in msg


@pytest.mark.parametrize(
    "data, dotted",
    [
        ({k: v for k, v in BASE.items() if k != "input"}, "input"),
        (spec_with(model={"path": None}), "model.path"),
        ({**BASE, "model": {"path": "m"}}, "model.head"),
        ({**BASE, "output": {}}, "output.path"),
    ],
    ids=["input", "model.path", "model.head", "output.path"],
)
def test_missing_required_keys_are_named(data, dotted):
    msg = error_of(data)
    assert dotted in msg, msg


@pytest.mark.parametrize(
    "data, dotted",
    [
        (spec_with(model={"head": "ner"}), "model.head"),
        (spec_with(model={"max_length": 4}), "model.max_length"),
        (spec_with(model={"dtype": "float64"}), "model.dtype"),
        (spec_with(head={"aggregation_strategy": "longest"}), "head.aggregation_strategy"),
        (spec_with(resources={"model_actors": 0}), "resources.model_actors"),
        (spec_with(resources={"cpus_per_actor": 0}), "resources.cpus_per_actor"),
        (spec_with(batching={"max_tokens": 8}), "batching.max_tokens"),
        (spec_with(input={"format": "csv"}), "input.format"),
        (spec_with(output={"rows_per_file": 0}), "output.rows_per_file"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_values_are_rejected_with_their_dotted_path(data, dotted):
    msg = error_of(data)
    assert msg.split(": ", 1)[1].startswith(dotted), msg  # "<source>: <dotted.key>: ..."


@pytest.mark.parametrize("stride", [128, 200, 124])
def test_stride_must_leave_room_in_the_window(stride):
    msg = error_of(spec_with(model={"max_length": 128, "stride": stride}))
    assert "model.stride" in msg and "max_length" in msg


def test_largest_stride_that_fits_is_accepted():
    assert spec_from_dict(spec_with(model={"max_length": 128, "stride": 123})).model.effective_stride == 123
    assert spec_from_dict(spec_with(model={"max_length": 128, "stride": 0})).model.effective_stride == 0


@pytest.mark.parametrize("head", ["sequence-classification", "fill-mask", "question-answering"])
def test_token_granularity_only_for_token_level_heads(head):
    msg = error_of(spec_with(model={"head": head}, output={"granularity": "token"}))
    assert "output.granularity" in msg and head in msg


@pytest.mark.parametrize("head", ["token-classification", "embedding"])
def test_token_granularity_for_token_level_heads(head):
    assert spec_from_dict(spec_with(model={"head": head}, output={"granularity": "token"})).output.granularity == "token"


def test_text_pairs_only_for_sequence_classification():
    msg = error_of(spec_with(input={"text_pair_column": "b"}))
    assert "input.text_pair_column" in msg
    ok = spec_from_dict(spec_with(model={"head": "sequence-classification"}, input={"text_pair_column": "b"}))
    assert ok.input.text_pair_column == "b"


def test_qa_doc_stride_must_leave_room_for_context():
    msg = error_of(spec_with(model={"head": "question-answering", "max_length": 128},
                             head={"doc_stride": 64, "max_question_len": 64}))
    assert "head.doc_stride" in msg


def test_all_errors_are_reported_at_once():
    msg = error_of(spec_with(model={"hed": 1}, output={"granularty": "token"}))
    assert "model.hed" in msg and "output.granularty" in msg


# -- loading files -----------------------------------------------------------------------------------


def test_load_spec_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(spec_with(model={"hed": 1})))
    with pytest.raises(SpecError, match=r"bad\.yaml: .*model\.hed"):
        load_spec(bad)


@pytest.mark.parametrize(
    "text, expected",
    [("input: [unclosed\n", "not valid YAML"), ("- a\n- b\n", "must be a mapping"), ("", "input: required key")],
    ids=["invalid-yaml", "a-list", "empty"],
)
def test_load_spec_rejects_files_that_are_not_specs(tmp_path, text, expected):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=expected):
        load_spec(path)


def test_load_spec_missing_file(tmp_path):
    with pytest.raises(SpecError, match="cannot read the spec"):
        load_spec(tmp_path / "nope.yaml")


# -- --set -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "item, keys, value",
    [
        ("resources.model_actors=8", ["resources", "model_actors"], 8),
        ("resources.gpus_per_actor=0.5", ["resources", "gpus_per_actor"], 0.5),
        ("model.allow_random_head=true", ["model", "allow_random_head"], True),
        ("head.normalize=false", ["head", "normalize"], False),
        ("model.stride=null", ["model", "stride"], None),
        ("head.ignore_labels=[O, MISC]", ["head", "ignore_labels"], ["O", "MISC"]),
        ("head.targets=[]", ["head", "targets"], []),
        ("output.path=s3://bucket/out/2026-11-21/", ["output", "path"], "s3://bucket/out/2026-11-21/"),
        ("input.path=data/part-*.jsonl.gz", ["input", "path"], "data/part-*.jsonl.gz"),
        ("storage.endpoint_url=http://127.0.0.1:9000", ["storage", "endpoint_url"], "http://127.0.0.1:9000"),
        ("input.text_column=", ["input", "text_column"], ""),
        ("input.text_column=a=b", ["input", "text_column"], "a=b"),
        (" model.path = x", ["model", "path"], "x"),
    ],
)
def test_parse_override(item, keys, value):
    assert parse_override(item) == (keys, value)


@pytest.mark.parametrize("item", ["model.path", "=x", "...=x"])
def test_parse_override_rejects_malformed_items(item):
    with pytest.raises(SpecError, match="--set"):
        parse_override(item)


def test_apply_overrides_creates_nested_sections():
    data = apply_overrides({"model": {"path": "m"}}, ["head.pooling=cls", "a.b.c=1", "model.max_length=64"])
    assert data == {"model": {"path": "m", "max_length": 64}, "head": {"pooling": "cls"}, "a": {"b": {"c": 1}}}


def test_apply_overrides_replaces_a_null_section():
    assert apply_overrides({"head": None}, ["head.top_k=3"]) == {"head": {"top_k": 3}}


def test_apply_overrides_refuses_to_descend_into_a_value():
    with pytest.raises(SpecError, match="path is not a section"):
        apply_overrides({"model": {"path": "m"}}, ["model.path.x=1"])


def test_overrides_are_validated_like_the_file(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(BASE))
    spec = load_spec(path, ["model.head=embedding", "head.pooling=cls", "resources.model_actors=3",
                            "output.granularity=token"])
    assert spec.model.head == "embedding" and spec.head.pooling == "cls"
    assert spec.resources.model_actors == 3 and spec.output.granularity == "token"
    with pytest.raises(SpecError, match=r"model\.hed: unknown key"):
        load_spec(path, ["model.hed=embedding"])
    with pytest.raises(SpecError, match=r"head\.pooling: an option of the embedding head, not of token-classification"):
        load_spec(path, ["head.pooling=cls"])  # token-classification has no pooling


def test_a_glob_starting_with_a_star_is_a_string():
    # YAML reads a leading `*` as an alias; `--set input.path=*.jsonl` must still mean that glob.
    assert parse_override("input.path=*.jsonl") == (["input", "path"], "*.jsonl")
    assert parse_override("output.path=2026-11-21") == (["output", "path"], "2026-11-21")


# -- reference -----------------------------------------------------------------------------------


def test_spec_reference_lists_every_key():
    ref = spec_reference()
    for key in ("input.path", "model.max_length", "model.stride", "output.granularity", "storage.endpoint_url",
                "resources.gpus_per_actor", "batching.max_tokens", "head.aggregation_strategy", "head.pooling",
                "head.doc_stride", "head.targets", "head.function_to_apply"):
        assert f"`{key}`" in ref, key
    assert "`head.kind`" not in ref


def test_pool_sizes_are_a_count_or_a_range():
    spec = spec_from_dict(spec_with(resources={"model_actors": {"min": 1, "max": 3}, "tokenize_actors": 2}))
    assert pool_bounds(spec.resources.model_actors) == (1, 3)
    assert pool_bounds(spec.resources.tokenize_actors) == (2, 2)
    assert pool_bounds(spec.resources.postprocess_actors) == (1, 1)  # its own pool, not the tokenizers'


@pytest.mark.parametrize(
    "resources, message",
    [
        ({"model_actors": {"min": 3, "max": 2}}, "min (3) is larger than max (2)"),
        ({"tokenize_actors": {"min": 0, "max": 2}}, "resources.tokenize_actors.min: 0 is too small"),
        ({"tokenizer_actors": 2}, "resources.tokenizer_actors: renamed; set resources.tokenize_actors and "
                                  "resources.postprocess_actors"),
        ({"model_resources": {"accelerator_node": "one"}}, "resources.model_resources.accelerator_node"),
    ],
)
def test_pool_and_placement_mistakes_name_the_key(resources, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        spec_from_dict(spec_with(resources=resources))
