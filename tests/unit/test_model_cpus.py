"""resources.cpus_per_actor's default: every core for a laptop's own local Ray on CPU, else 1."""

from __future__ import annotations

import os

import pytest
import ray

from pipeline.job import _with_model_cpus
from pipeline.spec import spec_from_dict


def _spec(**resources):
    return spec_from_dict({"input": {"path": "in"}, "model": {"path": "m", "head": "embedding"},
                           "output": {"path": "out"}, "resources": resources})


@pytest.fixture
def no_cluster(monkeypatch):
    import ray._private.utils

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray._private.utils, "read_ray_address", lambda *a, **k: None)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)


def test_a_local_cpu_run_gives_the_model_every_core(no_cluster):
    assert _spec().resources.cpus_per_actor is None
    assert _with_model_cpus(_spec()).resources.cpus_per_actor == os.cpu_count()


def test_what_the_spec_says_wins(no_cluster):
    assert _with_model_cpus(_spec(cpus_per_actor=0.5)).resources.cpus_per_actor == 0.5


@pytest.mark.parametrize("case", ["gpu", "address", "attached"])
def test_one_cpu_on_gpus_or_a_cluster(no_cluster, monkeypatch, case):
    spec = _spec(gpus_per_actor=1) if case == "gpu" else _spec()
    if case == "address":
        monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    if case == "attached":  # a Ray someone else started and sized (a test session, a notebook)
        monkeypatch.setattr(ray, "is_initialized", lambda: True)
    assert _with_model_cpus(spec).resources.cpus_per_actor == 1.0


def test_a_laptop_run_fuses_the_stages_unless_the_spec_sizes_them(no_cluster, monkeypatch):
    from pipeline.compose import ModelStages, model_stages
    from pipeline.job import _is_laptop_run

    assert _is_laptop_run(_spec())
    [fused] = model_stages(_with_model_cpus(_spec()), fused=True)
    assert fused.fn is ModelStages and fused.num_cpus == os.cpu_count()
    for sized in ({"tokenize_actors": 2}, {"postprocess_actors": 1}, {"cpus_per_actor": 1}, {"gpus_per_actor": 1}):
        assert not _is_laptop_run(_spec(**sized)), sized
    assert [s.name for s in model_stages(_spec(tokenize_actors=2))] == ["tokenize", "predict", "postprocess"]
    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # a Ray someone else started
    assert not _is_laptop_run(_spec())
