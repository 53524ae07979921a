"""The seams a new user falls through, through the real CLI: a rerun with nothing to do starts no Ray
and keeps the last run's summary and report; exit 2 leaves no folder behind; exit 1 still prints a
JSON on stdout; the progress names the phases and, at the end, where the results are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration._util import SMALL_RESOURCES, write_jsonl, write_spec

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parents[2]


def _cli(env: dict, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=REPO_ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=600)


def _spec(tmp_path, src, out, model) -> Path:
    return write_spec(tmp_path / "spec.yaml", {
        "input": {"path": str(src)},
        "model": {"path": str(model), "head": "token-classification", "max_length": 32},
        "output": {"path": str(out)},
        "resources": SMALL_RESOURCES,
    })


def _no_ray_can_start(tmp_path) -> dict:
    """An environment where Ray cannot start (its temp folder is a file) and none runs to join: a
    command that starts Ray here exits 1, one that does not is unaffected."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    return {"RAY_TMPDIR": str(blocker), "RAY_ADDRESS": ""}


def test_a_rerun_with_nothing_to_do_starts_no_ray_and_keeps_the_report(tmp_path, tiny_ner_dir, ray_session):
    src, out = tmp_path / "in", tmp_path / "out"
    for s in range(2):
        write_jsonl(src / f"s{s}.jsonl", [{"id": s * 100 + i, "text": f"Alice met Bob in Paris, day {i}."}
                                          for i in range(8)])
    spec = _spec(tmp_path, src, out, tiny_ner_dir)
    first = _cli({"RAY_ADDRESS": ray_session}, "run", spec)
    assert first.returncode == 0, first.stderr
    # The phases before the first row, and where the results are at the end.
    assert "loading the tokenizer and checking the checkpoint\nstarting Ray\n" in first.stderr
    assert first.stderr.strip().splitlines()[-1] == f"done: results in {out}, report {out}/_REPORT.html"
    kept = {name: ((out / name).stat().st_mtime_ns, (out / name).read_bytes()) for name in ("_SUMMARY.json",
                                                                                             "_REPORT.html")}
    index = out / "_MARKERS.json"  # the markers as this run left them, for the next run
    indexed = (index.stat().st_mtime_ns, index.read_bytes())

    again = _cli(_no_ray_can_start(tmp_path), "run", spec)
    assert again.returncode == 0, again.stderr
    assert "nothing to do: all 2 shard(s) are done" in again.stderr and "Ray" not in again.stderr
    summary = json.loads(again.stdout)
    assert summary == {**json.loads(first.stdout), "shards_resumed": 2, "shards_run": 0,
                       "checked_at": summary["checked_at"]}
    assert {name: ((out / name).stat().st_mtime_ns, (out / name).read_bytes()) for name in kept} == kept
    # The first run indexed its markers; the no-op took them from there and left the index as it was.
    assert set(json.loads(index.read_text())["markers"]) == {"_shards/s0.json", "_shards/s1.json"}
    assert (index.stat().st_mtime_ns, index.read_bytes()) == indexed

    # A marker changed since the index was written is read from its file, not taken from the index.
    marker_path = out / "_shards" / "s0.json"
    marker = json.loads(marker_path.read_text())
    marker_path.write_text(json.dumps({**marker, "fingerprint": "0" * 16,
                                       "spec": {**marker["spec"], "head.aggregation_strategy": "first"}}))
    refused = _cli(_no_ray_can_start(tmp_path), "run", spec)
    assert refused.returncode == 2, refused.stderr
    assert "head.aggregation_strategy ('first' there, 'simple' now)" in refused.stderr
    marker_path.write_text(json.dumps(marker))

    # --fresh says what it removed (the two shards' result files and markers, the summary, report, _SUCCESS).
    fresh = _cli({"RAY_ADDRESS": ray_session}, "run", spec, "--fresh")
    assert fresh.returncode == 0, fresh.stderr
    assert f"--fresh: removed 7 file(s) this job wrote in {out}" in fresh.stderr


def test_exit_2_leaves_no_folder_behind_and_exit_1_prints_json(tmp_path, tiny_ner_dir, ray_session):
    src = tmp_path / "in"
    write_jsonl(src / "a.jsonl", [{"id": 1, "text": "Alice met Bob."}])
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    (not_a_model / "config.json").write_text("{}")
    out = tmp_path / "new" / "deeper" / "out"
    bad = _cli({"RAY_ADDRESS": ray_session}, "run", _spec(tmp_path, src, out, not_a_model))
    assert bad.returncode == 2, bad.stderr
    assert bad.stdout == "" and bad.stderr.strip().splitlines()[-1].startswith("error: model.path")
    assert not (tmp_path / "new").exists()

    (src / "b.parquet").write_bytes(b"PAR1 this is no Parquet file PAR1")
    failed = _cli({"RAY_ADDRESS": ray_session}, "run", _spec(tmp_path, src, out, tiny_ner_dir))
    assert failed.returncode == 1, failed.stderr
    record = json.loads(failed.stdout)
    assert record["status"] == "incomplete" and "b.parquet" in record["reason"]
    assert (record["shards"], record["shards_done"], record["rows_read"]) == (2, 1, 1)


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def _job_actor_processes() -> list[int]:
    """Pids of the job's bookkeeping actors on the tests' Ray (Ray titles an actor's process
    `ray::<Class>`; its parent is the raylet that this process started)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0")[0]
            if title in (b"ray::ReadLedger", b"ray::StageMeter") and _parent(_parent(int(entry.name))) == os.getpid():
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return found


def test_a_run_inside_a_long_lived_process_leaves_no_actor_behind(tmp_path, tiny_ner_dir, ray_session):
    """A notebook or a service calls the job again and again in one process, on one Ray: each run's
    ledger and meter go with it, instead of staying as long as Ray Data keeps the stages."""
    from pipeline.job import run
    from pipeline.spec import load_spec

    src = tmp_path / "in"
    write_jsonl(src / "s0.jsonl", [{"id": i, "text": f"Alice met Bob in Paris, day {i}."} for i in range(8)])
    spec = load_spec(_spec(tmp_path, src, tmp_path / "out", tiny_ner_dir))
    assert run(spec, progress=lambda m: None)["status"] == "complete"
    deadline = time.time() + 20
    while _job_actor_processes() and time.time() < deadline:
        time.sleep(0.5)
    assert _job_actor_processes() == []
