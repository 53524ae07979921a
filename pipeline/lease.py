"""One run at a time on an output path: a lease file with the run's id and a heartbeat.

A run takes `_LEASE.json` when there is none, when its heartbeat is older than LEASE_TIMEOUT, or when
it was left by a process of this host that no longer exists (a driver killed with SIGKILL). A thread
renews the heartbeat; if it finds another run's id there (two runs that started at the same instant
both wrote one), the later writer keeps it and this run stops before writing any more results.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid

from pipeline.output import LEASE, OutputDir

HEARTBEAT_SECONDS = 10.0
LEASE_TIMEOUT = 60.0
SETTLE_SECONDS = 0.5  # time for a concurrent writer's lease to become visible before we check


class RunActive(RuntimeError):
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
        held = self.output.read_json(LEASE)
        if held is not None and _alive(held):
            age = time.time() - float(held.get("heartbeat", 0))
            raise RunActive(
                f"output.path: another run ({held.get('run_id')} on {held.get('host')}, pid {held.get('pid')}) is "
                f"writing {self.output.path} (heartbeat {age:.0f} s ago); wait for it to finish - a lease left by a "
                f"dead run is taken over after {LEASE_TIMEOUT:.0f} s"
            )
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
        held = output.read_json(LEASE)
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


def _alive(held: dict) -> bool:
    if time.time() - float(held.get("heartbeat", 0)) > float(held.get("timeout_seconds", LEASE_TIMEOUT)):
        return False
    if held.get("host") == socket.gethostname():
        try:
            os.kill(int(held.get("pid", -1)), 0)
        except ProcessLookupError:
            return False  # its process is gone: a driver killed without cleaning up
        except (PermissionError, ValueError, OverflowError):
            pass
    return True
