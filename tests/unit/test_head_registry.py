"""A head is one registration: an entry in pipeline.heads.HEADS. A toy head registered here, with its
options model and head class defined in this file, is known to the spec (model.head's choices, its
options, the checks, the error hints, the reference) without any edit to pipeline/spec.py."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field

import pipeline.heads as heads
import pipeline.spec  # noqa: F401 - the real spec, built before toy_spec patches HEADS (nothing above imports it)
from pipeline.heads import HEADS, HeadEntry, head_class
from pipeline.heads.base import Head
from pipeline.heads.options import HeadOptions

REPO_ROOT = Path(__file__).resolve().parents[2]


class ToyOptions(HeadOptions):
    kind: Literal["toy"] = "toy"
    shout: bool = Field(False, description="Upper-case every label.")


class ToyHead(Head):
    auto_class = "AutoModel"


TOY = HeadEntry("toy", f"{__name__}:ToyHead", ToyOptions, max_length=256, granularities=("document", "token"),
                text_pairs=True, aliases=("toy-task",))

BASE = {"input": {"path": "data/*.jsonl"}, "model": {"path": "models/x", "head": "toy"}, "output": {"path": "out/x"}}


@pytest.fixture
def toy_spec(monkeypatch):
    """pipeline/spec.py, executed afresh (as a module of its own, so the real pipeline.spec and its
    classes stay as they are for the other tests) with the toy head added to the registry."""
    monkeypatch.setattr(heads, "HEADS", (*HEADS, TOY))
    module_spec = importlib.util.spec_from_file_location("pipeline._spec_with_toy", REPO_ROOT / "pipeline" / "spec.py")
    module = importlib.util.module_from_spec(module_spec)
    # pydantic resolves the (postponed) annotations in the module's namespace, found through sys.modules.
    monkeypatch.setitem(sys.modules, module_spec.name, module)
    module_spec.loader.exec_module(module)
    return module


def error_of(spec_module, data: dict) -> str:
    with pytest.raises(spec_module.SpecError) as info:
        spec_module.spec_from_dict(data)
    return str(info.value)


def with_(**sections) -> dict:
    return {name: {**BASE.get(name, {}), **sections.get(name, {})} for name in {*BASE, *sections}}


def test_the_spec_takes_a_registered_head_with_its_options(toy_spec):
    spec = toy_spec.spec_from_dict(with_(head={"shout": True}))
    assert spec.model.head == "toy"
    assert isinstance(spec.head, ToyOptions) and spec.head.shout is True
    assert spec.model.max_length == 256  # the entry's default window
    assert "max_length" not in spec.model.model_fields_set  # a default, not the user's choice
    assert spec.result_fields()["head.shout"] is True  # its options change the shard fingerprint
    # The entry allows token granularity and text pairs; the spec's checks follow it.
    assert toy_spec.spec_from_dict(with_(output={"granularity": "token"}, input={"text_pair_column": "b"}))
    assert head_class("toy") is ToyHead  # what the stages build


def test_a_registered_head_refuses_other_heads_options_and_lends_its_own_to_none(toy_spec):
    assert error_of(toy_spec, with_(head={"aggregation_strategy": "first"})) == (
        "spec: head.aggregation_strategy: an option of the token-classification head, not of toy (toy takes shout); "
        "remove it or change model.head")
    assert error_of(toy_spec, with_(model={"head": "embedding"}, head={"shout": True})) == (
        "spec: head.shout: an option of the toy head, not of embedding (embedding takes pooling, normalize, layer, "
        "long_document); remove it or change model.head")
    assert error_of(toy_spec, with_(head={"shuot": True})) == (
        "spec: head.shuot: unknown key; did you mean head.shout? (toy takes shout)")


def test_a_registered_head_is_a_choice_with_its_aliases_in_the_hints(toy_spec):
    choices = "token-classification, embedding, sequence-classification, fill-mask, question-answering, toy"
    assert error_of(toy_spec, with_(model={"head": "toy-task"})) == (
        f"spec: model.head: 'toy-task' is not a head; choose one of {choices} (did you mean toy?)")
    assert f"model.head: required key is missing; add it (one of {choices})" in error_of(
        toy_spec, {"input": BASE["input"], "model": {"path": "m"}, "output": BASE["output"]})


def test_the_checks_name_every_head_that_allows_a_combination(toy_spec):
    fill_mask = {"head": "fill-mask"}
    assert error_of(toy_spec, with_(model=fill_mask, output={"granularity": "token"})) == (
        "spec: output.granularity: `token` is for token-classification, embedding and toy, not fill-mask")
    assert error_of(toy_spec, with_(model=fill_mask, input={"text_pair_column": "b"})) == (
        "spec: input.text_pair_column: only the sequence-classification and toy heads take text pairs")


def test_the_reference_lists_a_registered_head(toy_spec):
    lines = toy_spec.spec_reference().splitlines()
    assert lines[-2:] == ["| **toy** | | options under `head.` |",
                          "| `head.shout` | False | Upper-case every label. |"]
    window = next(line for line in lines if line.startswith("| `model.max_length` |"))
    assert "384 for question-answering" in window and "256 for toy; 512 for the other heads." in window


def test_the_real_spec_is_left_without_the_toy(toy_spec):
    # The fixture's registration reached only its own copy of the spec.
    from pipeline.spec import SpecError, spec_from_dict

    with pytest.raises(SpecError, match="'toy' is not a head"):
        spec_from_dict(BASE)


def test_an_options_model_must_carry_its_heads_name_as_kind():
    # The spec picks the options model by `kind`, filled in from model.head: a mismatch would pick none.
    with pytest.raises(ValueError, match=r"ToyOptions must have `kind: Literal\['other'\] = 'other'`"):
        HeadEntry("other", f"{__name__}:ToyHead", ToyOptions)


@pytest.mark.parametrize("entry", HEADS, ids=lambda e: e.name)
def test_a_heads_name_and_granularities_are_written_in_its_entry_only(entry):
    # The entry speaks for the head everywhere (the spec, without torch; the stages' granularity check):
    # the class has neither, and a head built for a spec takes its entry's (pipeline.heads.base.Head).
    cls = head_class(entry.name)
    assert not any(hasattr(cls, attr) for attr in ("name", "granularities"))


def test_the_spec_imports_no_torch_or_transformers():
    # Options models live in pipeline/heads/options.py so that reading a spec stays cheap (the CLI's
    # `plan`, `spec-reference`, a scheduler validating specs).
    code = "import sys, pipeline.spec; print(sorted(m for m in ('torch', 'transformers', 'ray') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
