"""The CLI's last word: after a failed run, the one-sentence `error:` line is the last line on stderr
(Ray is stopped, and its output drained, before it is printed: a `(raylet) WARNING` must not follow it);
and Ray that cannot start, or whose cluster cannot be reached, exits 1 with one sentence saying so and
what to try, not "unexpected Exception". The CLI runs in a subprocess, as users run it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.output import LEASE, SUCCESS
from tests.integration._util import SMALL_RESOURCES, write_jsonl, write_spec

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parents[2]


def _cli(env_changes: dict, *args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | env_changes
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def _lines(stderr: str) -> list[str]:
    """stderr's lines after the progress messages (the phases the run went through before it stopped)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    return [line for line in lines if line not in ("loading the tokenizer and checking the checkpoint", "starting Ray")]


def _corrupt_input(tmp_path: Path) -> Path:
    """Two .parquet shards that are not Parquet: every shard fails, the run exits 1."""
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.parquet").write_bytes(b"PAR1 this is not a Parquet file PAR1")
    (src / "b.parquet").write_bytes(b"PAR1xx")
    return src


def _good_input(tmp_path: Path) -> Path:
    src = tmp_path / "in"
    write_jsonl(src / "a.jsonl", [{"id": i, "text": f"Alice met Bob in Paris, day {i}."} for i in range(3)])
    return src


def _spec(tmp_path: Path, src: Path, model_dir: str, laptop: bool) -> Path:
    spec = {
        "input": {"path": str(src)},
        "model": {"path": model_dir, "head": "token-classification", "max_length": 32},
        "output": {"path": str(tmp_path / "out")},
    }
    if not laptop:
        spec["resources"] = SMALL_RESOURCES
    return write_spec(tmp_path / "spec.yaml", spec)


def _assert_failed_shards_last(proc: subprocess.CompletedProcess, out: Path) -> None:
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["status"] in ("failed", "incomplete"), proc.stdout  # exit 1: still a JSON
    lines = _lines(proc.stderr)
    assert lines[-1].startswith("error: 2 of 2 shard(s) did not finish (a.parquet: not a readable Parquet file"), \
        proc.stderr
    assert sum(line.startswith("error:") for line in lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / SUCCESS).exists() and not (out / LEASE).exists()


def test_a_failed_run_joined_to_a_cluster_ends_stderr_with_its_error(tmp_path, tiny_ner_dir, ray_session):
    spec = _spec(tmp_path, _corrupt_input(tmp_path), tiny_ner_dir, laptop=False)
    proc = _cli({"RAY_ADDRESS": ray_session}, "run", str(spec))
    _assert_failed_shards_last(proc, tmp_path / "out")


def test_a_failed_laptop_run_ends_stderr_with_its_error_after_its_ray_stopped(tmp_path, tiny_ner_dir):
    # The CLI starts its own Ray and stops it on the way out: Ray's shutdown output comes before the error.
    spec = _spec(tmp_path, _corrupt_input(tmp_path), tiny_ner_dir, laptop=True)
    proc = _cli({}, "run", str(spec))
    _assert_failed_shards_last(proc, tmp_path / "out")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on return: nothing listens there


def test_a_cluster_address_where_nothing_listens_exits_1_at_once(tmp_path, tiny_ner_dir):
    # Ray itself would retry such an address for many minutes.
    address = f"127.0.0.1:{_free_port()}"
    spec = _spec(tmp_path, _good_input(tmp_path), tiny_ner_dir, laptop=True)
    proc = _cli({"RAY_ADDRESS": address}, "run", str(spec))
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["status"] in ("failed", "incomplete"), proc.stdout
    [line] = _lines(proc.stderr)
    assert line.startswith(f"error: Ray did not start: nothing answers at the Ray cluster address {address} "
                           "(from RAY_ADDRESS: Connection refused); "), line
    assert "unset resources.ray_address / RAY_ADDRESS" in line and "ray stop --force" in line
    assert "unexpected" not in line and "Traceback" not in proc.stderr
    out = tmp_path / "out"
    assert not (out / LEASE).exists() and not (out / SUCCESS).exists()
    assert json.loads((out / "_PROGRESS.json").read_text())["status"] != "complete"


def test_ray_that_cannot_start_here_exits_1_with_what_to_try(tmp_path, tiny_ner_dir):
    # RAY_TMPDIR naming a file: Ray cannot make its session folder, as on a full or read-only /tmp.
    not_a_folder = tmp_path / "not-a-folder"
    not_a_folder.write_text("")
    spec = _spec(tmp_path, _good_input(tmp_path), tiny_ner_dir, laptop=True)
    proc = _cli({"RAY_TMPDIR": str(not_a_folder)}, "run", str(spec))
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["status"] in ("failed", "incomplete"), proc.stdout
    [line] = _lines(proc.stderr)
    assert line.startswith(f"error: Ray did not start on this machine (Not a directory: {not_a_folder}/"), line
    assert line.endswith("; run `ray stop --force` to end Ray processes an earlier run left behind, check that "
                         "/tmp/ray (or RAY_TMPDIR) has free disk space, or set RAY_ADDRESS to a running Ray "
                         f"cluster, then rerun (see {tmp_path / 'out'}/_PROGRESS.json)"), line
    assert "unexpected" not in line and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / LEASE).exists()


def test_ray_stops_before_the_error_line_is_printed(tmp_path, monkeypatch, capfd):
    """Deterministically, in-process: whatever stopping Ray writes (a `(raylet) WARNING` on fd 2, a line
    on sys.stderr) comes before the error line."""
    import pipeline.__main__ as cli
    import pipeline.job as job
    from pipeline import raycompat
    from pipeline.errors import JobFailed

    def failing_run(spec, **kwargs):
        raise JobFailed("the job stopped: boom; finished shards are kept, rerun the same command to resume")

    ray_started = iter([False])  # not up when the command starts; up (started by it) afterwards

    def stop_ray():
        os.write(2, b"(raylet) WARNING: a late notice from Ray's shutdown\n")
        sys.stderr.write("2026-12-01 10:01:50,111 INFO worker.py: shutting down\n")  # one write: no interleaving
        sys.stderr.flush()

    monkeypatch.setattr(job, "run", failing_run)
    monkeypatch.setattr(cli, "_ray_up", lambda: next(ray_started, True))
    monkeypatch.setattr(raycompat, "shutdown", stop_ray)
    spec = write_spec(tmp_path / "spec.yaml", {"input": {"path": str(tmp_path / "in")},
                                               "model": {"path": "m", "head": "embedding"},
                                               "output": {"path": str(tmp_path / "out")}})
    assert cli.main(["run", str(spec)]) == 1
    captured = capfd.readouterr()
    lines = _lines(captured.err)
    assert len(lines) == 3, captured.err
    assert any(line.startswith("(raylet) WARNING") for line in lines[:2])  # through the pump (fd 2)
    assert any("shutting down" in line for line in lines[:2])  # sys.stderr
    assert lines[-1] == ("error: the job stopped: boom; finished shards are kept, rerun the same command to "
                         "resume"), captured.err
    assert json.loads(captured.out) == {"status": "failed", "error": lines[-1].removeprefix("error: ")}
