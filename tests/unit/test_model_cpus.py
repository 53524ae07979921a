"""Placement (pipeline/placement.py): resources.cpus_per_actor's default (and a laptop run's model_actors):
the cores shared out among the model actors when the job starts its own local Ray on CPU, a
single-threaded actor per core on a laptop run, else 1; the head checked while Ray starts; pools that
cannot fit a Ray someone else started."""

from __future__ import annotations

import os

import pytest
import ray

from pipeline import placement
from pipeline.compose import READ_CPUS
from pipeline.placement import ACTOR_BASE_BYTES, INPUT_BYTES_PER_ACTOR, is_laptop, laptop_model_actors, size_pools
from pipeline.spec import SpecError, spec_from_dict


def _spec(**resources):
    return spec_from_dict({"input": {"path": "in"}, "model": {"path": "m", "head": "embedding"},
                           "output": {"path": "out"}, "resources": resources})


@pytest.fixture
def no_cluster(monkeypatch):
    from pipeline import raycompat

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(raycompat, "recorded_address", lambda: None)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)


def test_a_laptop_run_gives_each_core_a_single_threaded_model_actor(no_cluster, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(placement, "_physical_memory", lambda: 64 << 30)
    assert _spec().resources.cpus_per_actor is None
    res = size_pools(_spec(), True, True, model_bytes=400 << 20).resources
    assert (res.model_actors, res.cpus_per_actor) == (4, 1.0)
    # Memory for two actors only (half of it, at 1 GiB + twice the weights each): the threads make up.
    monkeypatch.setattr(placement, "_physical_memory", lambda: 2 * 2 * (ACTOR_BASE_BYTES + 2 * (400 << 20)))
    res = size_pools(_spec(), True, True, model_bytes=400 << 20).resources
    assert (res.model_actors, res.cpus_per_actor) == (2, 2.0)


def test_laptop_model_actors_fit_cores_memory_and_input():
    gib = 1 << 30
    assert laptop_model_actors(8, 0, 64 * gib) == 8
    assert laptop_model_actors(8, gib, 16 * gib) == 2  # 8 GiB for actors of 3 GiB each
    assert laptop_model_actors(8, 8 * gib, 16 * gib) == 1  # never none
    assert laptop_model_actors(8, gib, None) == 8  # memory unknown: one per core
    assert laptop_model_actors(1, 0, 64 * gib) == 1
    # Each actor needs its share of input to pay back its start; a small sample gets one.
    per = INPUT_BYTES_PER_ACTOR
    assert laptop_model_actors(8, 0, 64 * gib, input_bytes=3 * per) == 3
    assert laptop_model_actors(8, 0, 64 * gib, input_bytes=per // 4) == 1
    assert laptop_model_actors(8, 0, 64 * gib, input_bytes=100 * per) == 8


def test_a_pool_the_spec_sizes_shares_the_cores(no_cluster, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    res = size_pools(_spec(model_actors=2), False, True).resources
    assert (res.model_actors, res.cpus_per_actor) == (2, 4.0)
    res = size_pools(_spec(model_actors={"min": 1, "max": 16}), False, True).resources
    assert res.cpus_per_actor == 1.0  # never less than one thread
    # Pools for the CPU stages: not a fused laptop run, so the model keeps its one actor and every core.
    res = size_pools(_spec(tokenize_actors=1), False, True).resources
    assert (res.model_actors, res.cpus_per_actor) == (1, 8.0)


def test_what_the_spec_says_wins():
    assert size_pools(_spec(cpus_per_actor=0.5), True, True).resources.cpus_per_actor == 0.5


@pytest.mark.parametrize("case", ["gpu", "elsewhere"])
def test_one_cpu_on_gpus_or_a_ray_the_job_did_not_start(case):
    spec = _spec(gpus_per_actor=1) if case == "gpu" else _spec()
    assert size_pools(spec, False, starts_local=case == "gpu").resources.cpus_per_actor == 1.0


def test_a_laptop_run_fuses_the_stages_unless_the_spec_sizes_them(no_cluster, monkeypatch):
    from pipeline.compose import ModelStages, model_stages

    assert is_laptop(_spec())
    assert is_laptop(_spec(model_actors=1))  # sizing the model pool alone keeps the run fused
    [fused] = model_stages(size_pools(_spec(model_actors=1), True, True), fused=True)
    assert fused.fn is ModelStages and fused.num_cpus == os.cpu_count() and fused.actors == 1
    for sized in ({"tokenize_actors": 2}, {"postprocess_actors": 1}, {"cpus_per_actor": 1}, {"gpus_per_actor": 1}):
        assert not is_laptop(_spec(**sized)), sized
    assert [s.name for s in model_stages(_spec(tokenize_actors=2))] == ["tokenize", "predict", "postprocess"]
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert not is_laptop(_spec())
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # a Ray someone else started
    assert not is_laptop(_spec())


def test_start_gives_a_laptop_ray_a_cpu_per_core_and_a_sized_one_its_pools(no_cluster, monkeypatch):
    started_with = []
    monkeypatch.setattr(placement, "_init_ray", lambda spec, cpus, verbose, address: started_with.append(cpus) or True)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert placement.start(_spec()) == placement.Cluster(laptop=True, local=True, started=True)
    assert placement.start(_spec(model_actors=2)).laptop
    cluster = placement.start(_spec(tokenize_actors=1, postprocess_actors=1))
    assert not cluster.laptop and cluster.started
    # Room for one single-threaded model actor per core; two of two threads; the three pools at their largest.
    assert started_with == [READ_CPUS + 4, READ_CPUS + 2 * 2.0, READ_CPUS + 0.5 + 4.0 + 0.5]


def test_the_laptop_sizing_holds_once_the_job_has_started_its_ray(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(placement, "_ask_for_gpus", lambda res, local: pytest.fail("no GPUs asked for"))
    placed = placement.place(_spec(), placement.Cluster(laptop=True, local=True, started=True))
    assert (placed.spec.resources.model_actors, placed.spec.resources.cpus_per_actor) == (2, 1.0)
    assert [s.name for s in placed.stages] == ["model"] and placed.model_pool["fused"]
    assert placed.pool_line == "model: 2 actor(s), 1 CPU each; each tokenizes and postprocesses its own batches"
    joined = placement.place(_spec(), placement.Cluster(laptop=False, local=True, started=False))
    assert joined.spec.resources.cpus_per_actor == 1.0  # someone else's Ray
    assert [s.name for s in joined.stages] == ["tokenize", "predict", "postprocess"]


def test_a_laptop_run_cuts_smaller_batches_unless_the_spec_sets_them(monkeypatch):
    """The laptop sample's 200 documents go through in several batches, so its progress moves."""
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    laptop = placement.Cluster(laptop=True, local=True, started=True)
    assert _spec().batching.rows_per_batch == 256
    assert placement.place(_spec(), laptop).spec.batching.rows_per_batch == placement.LAPTOP_ROWS_PER_BATCH == 64
    assert placement.place(_spec(), placement.Cluster(laptop=False, local=True, started=False)
                           ).spec.batching.rows_per_batch == 256
    chosen = spec_from_dict({"input": {"path": "in"}, "model": {"path": "m", "head": "embedding"},
                             "output": {"path": "out"}, "batching": {"rows_per_batch": 256}})
    assert placement.place(chosen, laptop).spec.batching.rows_per_batch == 256  # the spec's word wins


def test_a_small_input_gets_one_model_actor_with_every_core(no_cluster, monkeypatch, tmp_path):
    from pipeline.sources import list_shards

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(placement, "_physical_memory", lambda: 64 << 30)
    small = tmp_path / "small.jsonl"
    small.write_text('{"id": 1, "text": "Alice met Bob."}\n' * 100)
    (shard,) = list_shards(_spec().input.model_copy(update={"path": str(small)}), None)
    res = size_pools(_spec(), True, True, 0, input_bytes=shard.identity["size"]).resources
    assert (res.model_actors, res.cpus_per_actor) == (1, 4.0)


def test_pools_that_cannot_fit_someone_elses_ray_are_fused_or_refused():
    # The README's example on ray.init(num_cpus=2): three pools of 2 CPUs and a task do not fit; the
    # spec sizes no pool, so the stages run fused in one model actor of one CPU, a CPU left for the read.
    placed = placement.fit(_spec(model_actors={"min": 1, "max": 4}), cpus=2)
    assert [s.name for s in placed.stages] == ["model"] and placed.stages[0].num_cpus == 1.0
    assert placed.stages[0].actors == 1
    assert [s.name for s in placement.fit(_spec(), cpus=8).stages] == ["tokenize", "predict", "postprocess"]
    with pytest.raises(SpecError, match=r"resources: the pools ask for 3.5 CPUs \(tokenize 1 x 0.5, predict 1 x 2, "
                                        r"postprocess 1 x 0.5, and 0.5 for a task\) but this Ray has 2"):
        placement.fit(_spec(cpus_per_actor=2), cpus=2)
