"""Each stage declares the internal columns it reads and adds (pipeline.columns.StageColumns), and
compose.check_chain checks a list of stages against them once, before any work."""

from __future__ import annotations

import pytest

from pipeline import columns as C
from pipeline.compose import ChainBroken, ModelStages, Stage, check_chain, model_stages, stage_columns
from pipeline.job import ReadShards, WritePartsMetered
from pipeline.spec import spec_from_dict


def _spec(**resources):
    return spec_from_dict({"input": {"path": "in"}, "model": {"path": "m", "head": "token-classification"},
                           "output": {"path": "out"}, "resources": resources})


def _write():
    return Stage("write", WritePartsMetered, 0.25)


@pytest.mark.parametrize("fused", [False, True])
def test_the_jobs_chains_hold(fused):
    stages = model_stages(_spec(cpus_per_actor=1), fused=fused)
    check_chain([Stage("read", ReadShards, 0.25), *stages, _write()])


def test_the_fused_stage_reads_and_adds_what_its_three_do():
    fused = ModelStages.declared()
    assert set(fused.reads) == {C.ERROR, C.ID, C.SHARD, C.ROW}  # the rest its own parts add
    assert fused.replaces and C.DOCUMENTS in fused.adds and C.INPUT_IDS not in fused.adds
    assert stage_columns(Stage("model", ModelStages, 1.0)) == fused


def test_a_broken_chain_names_the_stage_and_the_column():
    tokenize, predict, postprocess = model_stages(_spec(cpus_per_actor=1))
    with pytest.raises(ChainBroken, match="stage 'predict' reads _input_ids, _token_type_ids, which no stage"):
        check_chain([predict, tokenize, postprocess])
    # Postprocess replaces the table: what came before it is gone for the writer, unless it adds it again.
    with pytest.raises(ChainBroken, match="stage 'write' reads .*_documents"):
        check_chain([tokenize, predict, _write()])
    with pytest.raises(ChainBroken, match="stage 'tokenize' reads _error"):
        check_chain([tokenize], start=C.StageColumns())
