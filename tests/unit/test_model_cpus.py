"""resources.cpus_per_actor's default (and a laptop run's model_actors): the cores shared out among the
model actors when the job starts its own local Ray on CPU, a single-threaded actor per core on a laptop
run, else 1."""

from __future__ import annotations

import os

import pytest
import ray

from pipeline.job import ACTOR_BASE_BYTES, INPUT_BYTES_PER_ACTOR, _with_model_cpus, laptop_model_actors
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


def test_a_laptop_run_gives_each_core_a_single_threaded_model_actor(no_cluster, monkeypatch):
    import pipeline.job

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(pipeline.job, "_physical_memory", lambda: 64 << 30)
    assert _spec().resources.cpus_per_actor is None
    res = _with_model_cpus(_spec(), model_bytes=400 << 20).resources
    assert (res.model_actors, res.cpus_per_actor) == (4, 1.0)
    # Memory for two actors only (half of it, at 1 GiB + twice the weights each): the threads make up.
    monkeypatch.setattr(pipeline.job, "_physical_memory", lambda: 2 * 2 * (ACTOR_BASE_BYTES + 2 * (400 << 20)))
    res = _with_model_cpus(_spec(), model_bytes=400 << 20).resources
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
    res = _with_model_cpus(_spec(model_actors=2)).resources
    assert (res.model_actors, res.cpus_per_actor) == (2, 4.0)
    res = _with_model_cpus(_spec(model_actors={"min": 1, "max": 16})).resources
    assert res.cpus_per_actor == 1.0  # never less than one thread
    # Pools for the CPU stages: not a fused laptop run, so the model keeps its one actor and every core.
    res = _with_model_cpus(_spec(tokenize_actors=1)).resources
    assert (res.model_actors, res.cpus_per_actor) == (1, 8.0)


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
    assert _is_laptop_run(_spec(model_actors=1))  # sizing the model pool alone keeps the run fused
    [fused] = model_stages(_with_model_cpus(_spec(model_actors=1)), fused=True)
    assert fused.fn is ModelStages and fused.num_cpus == os.cpu_count() and fused.actors == 1
    for sized in ({"tokenize_actors": 2}, {"postprocess_actors": 1}, {"cpus_per_actor": 1}, {"gpus_per_actor": 1}):
        assert not _is_laptop_run(_spec(**sized)), sized
    assert [s.name for s in model_stages(_spec(tokenize_actors=2))] == ["tokenize", "predict", "postprocess"]
    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # a Ray someone else started
    assert not _is_laptop_run(_spec())


def test_a_laptop_run_starts_ray_while_the_model_is_checked(no_cluster, monkeypatch):
    """The model check (a thread) waits until Ray is starting (the main thread): run one after the
    other, this would time out. A wrong column is told before Ray starts."""
    import threading

    import pipeline.job as job

    ray_starting = threading.Event()
    started_with = []
    monkeypatch.setattr(job, "_check_input", lambda spec: ["shard"])
    monkeypatch.setattr(job, "_check_writable", lambda output: None)
    monkeypatch.setattr(job, "_check_head", lambda spec: {"checked_while_ray_started": ray_starting.wait(10)})
    monkeypatch.setattr(job, "_init_ray", lambda spec, cpus, verbose: (started_with.append(cpus), ray_starting.set()))
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    facts = job._checked_while_ray_starts(_spec(), verbose=False)
    assert facts == {"shards": ["shard"], "laptop": True, "checked_while_ray_started": True}
    assert started_with == [job.READ_CPUS + 4]  # room for one single-threaded model actor per core
    assert job._laptop_cpus_needed(_spec(model_actors=2)) == job.READ_CPUS + 2 * 2.0

    started_with.clear()
    monkeypatch.setattr(job, "_check_head", lambda spec: {})
    job._checked_while_ray_starts(_spec(tokenize_actors=1), verbose=False)  # not a laptop run
    assert started_with == []

    def wrong_column(spec):
        raise job.InputError("input.text_column: column 'body' not in docs.jsonl")

    monkeypatch.setattr(job, "_check_input", wrong_column)
    with pytest.raises(job.InputError, match="body"):
        job._checked_while_ray_starts(_spec(), verbose=False)
    assert started_with == []


def test_the_laptop_sizing_holds_once_the_job_has_started_its_ray(no_cluster, monkeypatch):
    # Decided before Ray started (job._checked_while_ray_starts); a Ray that is up is then the job's own.
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    res = _with_model_cpus(_spec(), model_bytes=0, laptop=True).resources
    assert (res.model_actors, res.cpus_per_actor) == (2, 1.0)
    assert _with_model_cpus(_spec()).resources.cpus_per_actor == 1.0  # undecided: someone else's Ray


def test_a_small_input_gets_one_model_actor_with_every_core(no_cluster, monkeypatch, tmp_path):
    import pipeline.job as job
    from pipeline.sources import list_shards

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(job, "_physical_memory", lambda: 64 << 30)
    small = tmp_path / "small.jsonl"
    small.write_text('{"id": 1, "text": "Alice met Bob."}\n' * 100)
    shards = list_shards(_spec().input.model_copy(update={"path": str(small)}), None)
    res = _with_model_cpus(_spec(), 0, laptop=True, input_bytes=job._input_bytes(shards)).resources
    assert (res.model_actors, res.cpus_per_actor) == (1, 4.0)


def test_the_lease_is_taken_while_ray_starts_and_given_back_when_the_checks_fail(no_cluster, monkeypatch, tmp_path):
    """run takes the output's lease in a thread while Ray starts (the main thread waits here until the
    lease file exists: one after the other, it would time out); a failed model check gives it back;
    another run's lease is refused and left as it is."""
    import json
    import socket
    import time

    import pipeline.job as job
    from pipeline.lease import RunActive
    from pipeline.models import ModelError
    from pipeline.output import LEASE

    out = tmp_path / "out"
    spec = spec_from_dict({"input": {"path": "in"}, "model": {"path": "m", "head": "embedding"},
                           "output": {"path": str(out)}})
    seen_while_starting = []

    def init_ray(spec, cpus, verbose):
        deadline = time.monotonic() + 10
        while not (out / LEASE).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        seen_while_starting.append((out / LEASE).exists())

    monkeypatch.setattr(job, "_check_input", lambda spec: ["shard"])
    monkeypatch.setattr(job, "_check_head", lambda spec: {"model": "checked"})
    monkeypatch.setattr(job, "_init_ray", init_ray)
    facts = job._checked_while_ray_starts(spec, verbose=False, take_lease=True)
    assert seen_while_starting == [True]
    assert facts["model"] == "checked" and facts["laptop"] is True
    assert json.loads((out / LEASE).read_text())["run_id"] == facts["lease"].run_id
    facts["lease"].release()
    assert not (out / LEASE).exists()

    def bad_checkpoint(spec):
        raise ModelError("model.path: m has no weights")

    monkeypatch.setattr(job, "_check_head", bad_checkpoint)
    with pytest.raises(ModelError, match="no weights"):
        job._checked_while_ray_starts(spec, verbose=False, take_lease=True)
    assert not (out / LEASE).exists()  # taken meanwhile, and given back

    monkeypatch.setattr(job, "_check_head", lambda spec: {})
    other = {"run_id": "other-run", "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time(),
             "timeout_seconds": 60}
    (out / LEASE).write_text(json.dumps(other))
    with pytest.raises(RunActive, match="other-run"):
        job._checked_while_ray_starts(spec, verbose=False, take_lease=True)
    assert json.loads((out / LEASE).read_text())["run_id"] == "other-run"
