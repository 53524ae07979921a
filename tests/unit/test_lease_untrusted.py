"""`_LEASE.json` is untrusted input: an empty or unreadable one gets one sentence saying what to do (and is
left in place), a heartbeat in the future or a huge `timeout_seconds` does not lock the output for a
day, and `validate` says when another run holds the lease. A real OutputDir on tmp_path."""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline import lease as lease_module
from pipeline.lease import MAX_LEASE_TIMEOUT, Lease, RunActive, read_lease, refuse_if_held
from pipeline.output import LEASE, OutputDir
from pipeline.sources import InputError

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture(autouse=True)
def _no_settle(monkeypatch):
    monkeypatch.setattr(lease_module, "SETTLE_SECONDS", 0.0)


@pytest.fixture
def out(tmp_path) -> Path:
    path = tmp_path / "out"
    path.mkdir()
    return path


def _write_lease(out: Path, **fields) -> dict:
    record = {"run_id": "other", "host": "another-host", "pid": 1, "heartbeat": time.time(),
              "timeout_seconds": 60.0} | fields
    (out / LEASE).write_text(json.dumps(record))
    return record


def _acquire(out: Path) -> Lease:
    held = Lease(OutputDir(str(out))).acquire()
    held.release()
    return held


# -- a file that is not a lease ----------------------------------------------------------------------


@pytest.mark.parametrize(("content", "what"), [
    (b"", "empty"),
    (b"  \n", "empty"),
    (b"{\"run_id\": \"x\", \"heart", "not JSON"),
    (b"\xff\xfe\x00garbage", "not JSON"),
    (b"[1, 2]", "no run id and heartbeat"),
    (b"{}", "no run id and heartbeat"),
    (b'{"run_id": "x", "heartbeat": "yesterday"}', "no run id and heartbeat"),
    (b'{"run_id": "x", "heartbeat": NaN}', "no run id and heartbeat"),
    (b'{"run_id": 7, "heartbeat": 1.0}', "no run id and heartbeat"),
])
def test_a_file_that_is_no_lease_gets_one_sentence_and_stays(out, content, what):
    (out / LEASE).write_bytes(content)
    with pytest.raises(InputError) as e:
        _acquire(out)
    where = f"{out}/{LEASE}"
    assert str(e.value) == (
        f"output.path: {where} is not a lease this job wrote ({what}); if no run is writing to {out}, "
        f"delete {where} and rerun"
    )
    assert "Expecting value" not in str(e.value)
    assert (out / LEASE).read_bytes() == content  # not ours: left alone


def test_after_deleting_it_the_run_takes_the_lease(out):
    (out / LEASE).write_bytes(b"")
    with pytest.raises(InputError):
        _acquire(out)
    (out / LEASE).unlink()
    held = _acquire(out)
    assert held.taken_over is None and not (out / LEASE).exists()  # taken, then released


def test_no_lease_reads_as_none(out):
    assert read_lease(OutputDir(str(out))) is None
    refuse_if_held(OutputDir(str(out)))  # nothing to refuse


# -- clocks and timeouts -----------------------------------------------------------------------------


def test_a_heartbeat_a_day_in_the_future_is_stale(out):
    record = _write_lease(out, heartbeat=time.time() + 86_400)
    held = _acquire(out)
    assert held.taken_over == record


def test_a_heartbeat_a_little_in_the_future_is_live(out):
    _write_lease(out, heartbeat=time.time() + 30)
    with pytest.raises(RunActive) as e:
        _acquire(out)
    assert "s ahead of this host's clock" in str(e.value) and "another run (other on another-host" in str(e.value)
    assert json.loads((out / LEASE).read_text())["run_id"] == "other"


def test_a_live_lease_says_how_old_its_heartbeat_is(out):
    _write_lease(out, heartbeat=time.time() - 5)
    with pytest.raises(RunActive, match=r"\(heartbeat \d s ago\); wait for it to finish .* after 60 s$"):
        _acquire(out)


def test_a_huge_timeout_in_the_file_is_capped(out):
    # A day-long timeout would keep a dead run's lease for a day; it counts as MAX_LEASE_TIMEOUT.
    record = _write_lease(out, heartbeat=time.time() - MAX_LEASE_TIMEOUT - 5, timeout_seconds=1e12)
    assert _acquire(out).taken_over == record

    _write_lease(out, heartbeat=time.time() - 120, timeout_seconds=1e12)  # still within the cap
    with pytest.raises(RunActive, match=f"taken over after {MAX_LEASE_TIMEOUT:.0f} s$"):
        _acquire(out)


@pytest.mark.parametrize("timeout", ["soon", -5, 0, float("inf"), None])
def test_a_nonsense_timeout_counts_as_the_default(out, timeout):
    record = _write_lease(out, heartbeat=time.time() - 90, timeout_seconds=timeout)
    assert _acquire(out).taken_over == record  # 90 s > the default 60 s
    _write_lease(out, heartbeat=time.time() - 10, timeout_seconds=timeout)
    with pytest.raises(RunActive, match="after 60 s$"):
        _acquire(out)


def test_a_dead_process_of_this_host_is_stale_whatever_its_heartbeat(out):
    record = _write_lease(out, host=socket.gethostname(), pid=2**22 + 12345)
    assert _acquire(out).taken_over == record


# -- validate ------------------------------------------------------------------------------------------


def _spec(tmp_path: Path, out: Path, minilm_dir: str) -> Path:
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": i, "text": f"Document {i}."}) + "\n" for i in range(3)))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "input": {"path": str(docs)},
        "model": {"path": minilm_dir, "head": "embedding", "max_length": 64},
        "output": {"path": str(out)},
    }))
    return spec


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[0]


def test_validate_says_another_run_holds_the_output(tmp_path, out, minilm_dir, capsys):
    from pipeline.__main__ import main

    spec = _spec(tmp_path, out, minilm_dir)
    _write_lease(out, host="another-host", pid=1)
    assert main(["validate", str(spec)]) == 1
    captured = capsys.readouterr()
    line = _one_line(captured.err)
    assert line.startswith(f"error: output.path: another run (other on another-host, pid 1) is writing {out} ")
    assert json.loads(captured.out) == {"status": "failed", "error": line.removeprefix("error: ")}  # exit 1: a JSON
    assert json.loads((out / LEASE).read_text())["run_id"] == "other"  # validate takes nothing

    _write_lease(out, heartbeat=time.time() - 3600)  # a dead run's lease: run would take it over
    assert main(["validate", str(spec)]) == 0
    assert capsys.readouterr().out.startswith("ok: embedding on ")


def test_validate_names_a_lease_file_that_is_no_lease(tmp_path, out, minilm_dir, capsys):
    from pipeline.__main__ import main

    spec = _spec(tmp_path, out, minilm_dir)
    (out / LEASE).write_bytes(b"")
    assert main(["validate", str(spec)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line == (f"error: output.path: {out}/{LEASE} is not a lease this job wrote (empty); if no run is "
                    f"writing to {out}, delete {out}/{LEASE} and rerun")
    assert (out / LEASE).exists()
