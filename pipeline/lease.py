"""One run at a time on an output path: a lease file with the run's id and a heartbeat.

A run takes `_LEASE.json` when there is none, when its heartbeat is further than its timeout from
this host's clock (older, or as far in the future: a clock skewed by hours does not lock the output
for hours), or when it was left by a process of this host that no longer exists (a driver killed with
SIGKILL). The timeout read from the file is capped at MAX_LEASE_TIMEOUT. A thread renews the
heartbeat; if it finds another run's id there (two runs that started at the same instant both wrote
one), the later writer keeps it and this run stops before writing any more results.

The file is untrusted: one that is empty, not JSON or not shaped like our record is refused with one
sentence (InputError: exit 2) and left in place, as it may be another tool's.
"""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
import uuid

from pipeline.errors import JobError
from pipeline.output import LEASE, OutputDir, StorageFailed
from pipeline.sources import InputError

HEARTBEAT_SECONDS = 10.0
LEASE_TIMEOUT = 60.0
MAX_LEASE_TIMEOUT = 600.0  # a lease file's own timeout_seconds is trusted up to this
SETTLE_SECONDS = 0.5  # time for a concurrent writer's lease to become visible before we check


class RunActive(JobError):
    """Another run holds the output path."""


class Lease:
    def __init__(self, output: OutputDir):
        self.output = output
        self.records = output.impatient()  # heartbeats and release must not stall when storage is down
        self.run_id = uuid.uuid4().hex[:12]
        self.lost: str | None = None  # why this run no longer holds the lease
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.taken_over: dict | None = None  # the stale lease this run replaced, if any

    def _record(self) -> dict:
        return {"run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time(),
                "timeout_seconds": LEASE_TIMEOUT}

    def acquire(self) -> "Lease":
        held = read_lease(self.output)
        refuse_if_held(self.output, held)
        self.taken_over = held
        self.output.write_json(LEASE, self._record())
        time.sleep(SETTLE_SECONDS)
        self._check(self.output)
        if self.lost:
            raise RunActive(f"output.path: {self.lost}")
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _check(self, output: OutputDir) -> None:
        try:
            held = read_lease(output)
        except InputError:  # overwritten by something that is not a run of this job
            held = {"run_id": "unknown, the lease file was overwritten"}
        if held is None or held.get("run_id") != self.run_id:
            other = (held or {}).get("run_id", "nobody")
            self.lost = f"another run ({other}) took over {self.output.path}; this run stopped"

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self._check(self.records)
                if self.lost:
                    return
                self.records.write_json(LEASE, self._record())
            except Exception:  # noqa: BLE001 - a storage hiccup; the next beat tries again
                continue

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.lost:
            return  # the lease is someone else's now
        try:
            held = self.records.read_json(LEASE)
            if held is not None and held.get("run_id") == self.run_id:
                self.records.remove([LEASE])
        except Exception:  # noqa: BLE001 - a lease left behind expires by itself
            pass


def read_lease(output: OutputDir) -> dict | None:
    """The lease record under output.path, live or not; None when there is none. InputError (one
    sentence saying what to do) for a file that is no lease this job wrote: ours are written whole
    (atomically), so an empty, non-JSON or oddly shaped one is not a run's, and is left alone.
    StorageFailed when storage fails."""
    try:
        held = output.read_json(LEASE)
    except StorageFailed as e:
        cause = e.__cause__
        if isinstance(cause, json.JSONDecodeError):
            _not_a_lease(output, "empty" if not cause.doc.strip() else "not JSON")
        if isinstance(cause, UnicodeDecodeError):
            _not_a_lease(output, "not JSON")
        raise
    if held is None:
        return None
    heartbeat = held.get("heartbeat") if isinstance(held, dict) else None
    if (not isinstance(held, dict) or not isinstance(held.get("run_id"), str) or isinstance(heartbeat, bool)
            or not isinstance(heartbeat, (int, float)) or not math.isfinite(heartbeat)):
        _not_a_lease(output, "no run id and heartbeat")
    return held


def _not_a_lease(output: OutputDir, what: str) -> None:
    where = f"{output.path}/{LEASE}"
    raise InputError(
        f"output.path: {where} is not a lease this job wrote ({what}); if no run is writing to {output.path}, "
        f"delete {where} and rerun"
    )


def refuse_if_held(output: OutputDir, held: dict | None = None) -> None:
    """RunActive when another run holds output.path (`held`: the record already read, if any); what
    `run` would stop with, for `validate` too."""
    if held is None:
        held = read_lease(output)
    if held is None or not _alive(held):
        return
    age = time.time() - float(held["heartbeat"])
    when = f"heartbeat {age:.0f} s ago" if age >= 0 else f"heartbeat {-age:.0f} s ahead of this host's clock"
    raise RunActive(
        f"output.path: another run ({held.get('run_id')} on {held.get('host')}, pid {held.get('pid')}) is "
        f"writing {output.path} ({when}); wait for it to finish - a lease left by a dead run is taken over "
        f"after {_timeout(held):.0f} s"
    )


def _timeout(held: dict) -> float:
    """The lease's own timeout, within (0, MAX_LEASE_TIMEOUT]: the file is not trusted to lock the output
    for a day."""
    try:
        seconds = float(held.get("timeout_seconds", LEASE_TIMEOUT))
    except (TypeError, ValueError, OverflowError):
        return LEASE_TIMEOUT
    if not math.isfinite(seconds) or seconds <= 0:
        return LEASE_TIMEOUT
    return min(seconds, MAX_LEASE_TIMEOUT)


def _alive(held: dict) -> bool:
    # A heartbeat further in the future than the timeout is a skewed clock (or a forged file), not a
    # lease to honour until this host's clock catches up.
    if abs(time.time() - float(held["heartbeat"])) > _timeout(held):
        return False
    if held.get("host") == socket.gethostname():
        try:
            pid = int(held.get("pid", -1))
            if pid > 0:
                os.kill(pid, 0)
        except ProcessLookupError:
            return False  # its process is gone: a driver killed without cleaning up
        except (PermissionError, TypeError, ValueError, OverflowError):
            pass
    return True
