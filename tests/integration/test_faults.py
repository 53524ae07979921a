"""Faults done to the real job on local Ray: a model actor killed with SIGKILL mid-run, the driver
killed mid-run and the same command run again, and a second run started on an output that a live
run is writing. Each ends with the output compared, id by id, with an uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.integration._util import explain, write_jsonl, write_spec

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARDS, DOCS = 10, 3000  # ~10 s of work after ~20 s of start-up: room to kill in the middle
RESOURCES = {"model_actors": 1, "cpus_per_actor": 0.5, "tokenize_actors": 1, "postprocess_actors": 1}


def _texts(shard: int) -> list[dict]:
    words = "Alice Bob Carol met Dave in Paris Berlin Rome and Tokyo with Acme staff on Monday".split()
    return [{"id": f"s{shard}-{i}", "text": " ".join(words[(i + k * shard) % len(words)] for k in range(8 + i % 17))}
            for i in range(DOCS)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_ner_dir, ray_session):
    """Ten JSONL shards and the output of one uninterrupted run over them (id -> entities)."""
    from pipeline.job import run

    base = tmp_path_factory.mktemp("faults")
    for s in range(SHARDS):
        write_jsonl(base / "in" / f"part-{s:02d}.jsonl", _texts(s))
    spec_dict = {
        "input": {"path": str(base / "in")},
        "model": {"path": tiny_ner_dir, "head": "token-classification", "max_length": 32},
        "output": {"path": str(base / "reference")},
        "resources": RESOURCES,
        "batching": {"rows_per_batch": 64},
    }
    from pipeline.spec import spec_from_dict

    started = time.time()
    summary = run(spec_from_dict(spec_dict), progress=lambda m: None)
    return {"base": base, "spec": spec_dict, "reference": _results(base / "reference"),
            "full_seconds": time.time() - started, "summary": summary}


def _results(out: Path) -> dict[str, list]:
    """id -> entities over every result file; fails on a duplicated id."""
    table = pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("part-*.parquet"))])
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "an id was written twice"
    return dict(zip(ids, table.column("entities").to_pylist()))


def _markers(out: Path) -> list[Path]:
    return sorted(p for p in (out / "_shards").glob("*.json") if not p.name.endswith(".pending.json")) \
        if (out / "_shards").exists() else []


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _pids_of(title: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            except OSError:
                continue
            if cmd.startswith(f"ray::{title}"):
                found.append(int(pid))
    return found


def test_a_model_actor_killed_mid_run_is_restarted_and_every_id_appears_once(corpus, tmp_path):
    from pipeline.job import run
    from pipeline.spec import spec_from_dict

    out = tmp_path / "out"
    spec = spec_from_dict({**corpus["spec"], "output": {"path": str(out)}})
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(run(spec, progress=lambda m: None)))
    worker.start()
    # Kill the model actor once results have started to arrive (the first parts are written).
    _wait_for(lambda: any((out / "_staging").rglob("r*.parquet")) if (out / "_staging").exists() else False,
              120, "the first parts")
    victims = _pids_of("MapWorker(MapBatches(Predict))")
    assert victims, "no model actor process found"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    worker.join(timeout=300)
    assert result.get("status") == "complete", result
    assert len(_markers(out)) == SHARDS
    got = _results(out)
    assert got == corpus["reference"]
    assert result["rows_read"] == result["rows_written"] == SHARDS * DOCS


def _cli(spec_path: Path, env: dict, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(spec_path), *extra], cwd=REPO_ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def test_driver_killed_mid_run_then_the_same_command_resumes(corpus, tmp_path, ray_session):
    out = tmp_path / "out"
    spec_path = write_spec(tmp_path / "job.yaml", {**corpus["spec"], "output": {"path": str(out)}})
    env = {**os.environ, "RAY_ADDRESS": ray_session}

    first = _cli(spec_path, env)
    # A second run on the same output while the first is alive: refused with one sentence, exit 1.
    _wait_for(lambda: (out / "_LEASE.json").exists(), 120, "the first run's lease")
    second = subprocess.run([sys.executable, "-m", "pipeline", "run", str(spec_path)], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 1, second.stderr
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: output.path: another run (") and "is writing" in lines[-1], second.stderr

    # Kill the driver (and its process group) at about half-way: at 3 markers, since the shards being
    # finalised at that moment run as Ray tasks of the shared cluster and may still land.
    _wait_for(lambda: len(_markers(out)) >= 3 or first.poll() is not None, 300, "the first shards")
    assert first.poll() is None, "the run finished before it could be killed; make the corpus larger"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    done = {p.name: p.stat().st_mtime_ns for p in _markers(out)}
    files_done = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")
                  if f"{p.name.rsplit('-', 1)[0]}.json" in done}
    assert 0 < len(done) < SHARDS and not (out / "_SUMMARY.json").exists()

    started = time.time()
    rerun = subprocess.run([sys.executable, "-m", "pipeline", "run", str(spec_path)], cwd=REPO_ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    resumed_seconds = time.time() - started
    assert rerun.returncode == 0, explain(rerun.stderr)
    summary = json.loads(rerun.stdout)
    assert summary["shards_resumed"] >= len(done) and summary["shards_resumed"] + summary["shards_run"] == SHARDS
    # Shards finished before the kill were not recomputed: their marker and files are untouched.
    assert {n: (out / "_shards" / n).stat().st_mtime_ns for n in done} == done
    assert {n: (out / n).stat().st_mtime_ns for n in files_done} == files_done
    got = _results(out)
    assert got == corpus["reference"]
    assert summary["rows_read"] == summary["rows_written"] == SHARDS * DOCS
    print(f"\nkilled after {len(done)}/{SHARDS} shards; full run {corpus['full_seconds']:.1f} s, "
          f"resumed run {resumed_seconds:.1f} s; rows in {SHARDS * DOCS}, rows out {len(got)}, "
          f"duplicated 0, lost {SHARDS * DOCS - len(got)}")


def test_many_small_shards_killed_mid_run_resume_to_the_uninterrupted_runs_bytes(tmp_path, tiny_ner_dir, ray_session):
    """Small shards share read tasks and are finished by the writer (pipeline.sources.group_pieces,
    sinks.WriteParts). Killed once some are done, the same command finishes the rest: each id once,
    and every result equal, bit for bit, to an uninterrupted run's, although the rerun's read groups
    and batches hold other neighbours (micro-batches never mix shards)."""
    from pipeline.job import run
    from pipeline.spec import spec_from_dict

    shards, docs = 60, 40
    for s in range(shards):
        write_jsonl(tmp_path / "in" / f"part-{s:02d}.jsonl", _texts(s)[:docs])
    spec = {"input": {"path": str(tmp_path / "in")},
            "model": {"path": tiny_ner_dir, "head": "token-classification", "max_length": 32},
            "output": {"path": str(tmp_path / "reference")}, "resources": RESOURCES,
            "batching": {"rows_per_batch": 16}}  # groups of ~16 KiB: a few shards each
    run(spec_from_dict(spec), progress=lambda m: None)
    reference = _results(tmp_path / "reference")

    out = tmp_path / "out"
    spec_path = write_spec(tmp_path / "job.yaml", {**spec, "output": {"path": str(out)}})
    env = {**os.environ, "RAY_ADDRESS": ray_session}
    first = _cli(spec_path, env)
    _wait_for(lambda: len(_markers(out)) >= 1 or first.poll() is not None, 300, "the first shards")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    done = len(_markers(out))
    assert 0 < done < shards, f"{done} of {shards} shards done when killed"

    rerun = subprocess.run([sys.executable, "-m", "pipeline", "run", str(spec_path)], cwd=REPO_ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, explain(rerun.stderr)
    summary = json.loads(rerun.stdout)
    assert summary["shards_resumed"] >= done and summary["shards_resumed"] + summary["shards_run"] == shards
    assert summary["rows_read"] == summary["rows_written"] == shards * docs
    assert _results(out) == reference  # scores included: bit for bit
    assert not (out / "_staging").exists() and not list((out / "_shards").glob("*.pending.json"))
