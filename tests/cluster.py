"""A real multi-node Ray cluster on this machine, for tests: a head and worker nodes, each its own
`ray start --block` process in its own session, with its own custom resources and its own model cache.

Several Ray nodes on one machine behave as on many: each node has its raylet, object store and
workers; a custom resource (`accelerator_node`, `cpu_node`) stands in for a GPU node or a CPU node.
Other Ray instances run on the same machine (other test sessions), so nothing here uses a fixed port
or `ray stop` (which stops every Ray on the machine): every port is a free one, every node has its
own temporary folder, and a node is ended by ending its own process group.

    with LocalCluster(tmp_path, env) as cluster:
        cluster.start_head(num_cpus=0)
        cpu, a = cluster.add_nodes([("cpu", 2, {"cpu_node": 100}), ("accel-a", 2, {"accelerator_node": 2})])
        ...  # jobs attach with RAY_ADDRESS=cluster.address
        cluster.kill(a)  # the node dies as a machine would: raylet, workers and agents at once
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))  # the venv's `ray`, so the nodes run this Ray

# The GCS declares a node dead after this many missed health checks of this period (Ray's defaults,
# 3 s x 5 plus a 5 s grace, would spend most of a short test waiting for a killed node to be noticed).
FAST_FAILURE_DETECTION = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}
STARTUP_TIMEOUT_S = 120
START_ATTEMPTS = 3
OBJECT_STORE_BYTES = 200_000_000  # per node; the tests move kilobytes, and the machine is shared


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NodeStartFailed(RuntimeError):
    pass


@dataclass
class Node:
    name: str
    cache: Path  # PIPELINE_MODEL_CACHE of this node's workers: its own disk, as on a real machine
    process: subprocess.Popen
    log: Path
    node_id: str | None = None


class LocalCluster:
    """`root`: a folder for the nodes' model caches and logs. `env`: the environment every node (and
    so every worker) starts with; a node's workers inherit it, as on a machine set up for the job."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root = Path(root)
        self.env = {**env, **FAST_FAILURE_DETECTION, "RAY_USAGE_STATS_ENABLED": "0"}
        # Ray's session folders hold Unix sockets, whose paths must stay under ~107 bytes.
        self.temp_dir = tempfile.mkdtemp(prefix="rc-", dir="/tmp")
        self.nodes: list[Node] = []
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard_port = free_port()
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def start_head(self, num_cpus: int = 0) -> Node:
        """The head: the GCS, the dashboard with the job server and state API, and (with `num_cpus=0`)
        no work of the job's stages, only drivers (a job submitted with `ray job submit` runs its driver
        here)."""
        return self._join("head", num_cpus, {}, [
            "--head", f"--port={self.port}", f"--ray-client-server-port={free_port()}",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
        ])

    def add_nodes(self, specs: list[tuple[str, int, dict[str, float]]]) -> list[Node]:
        """Worker nodes, (name, CPUs, custom resources) each, joined to the head one after the other."""
        return [self._join(name, cpus, resources, [f"--address={self.address}"]) for name, cpus, resources in specs]

    def _join(self, name: str, num_cpus: int, resources: dict, args: list[str]) -> Node:
        """Start a node and wait until the GCS lists it. `ray start` gives its raylet a fixed 30 s to
        register (ray/_private/node.py) and exits when it does not, which a busy shared machine can
        cause: such a start is ended and made again."""
        for attempt in range(1, START_ATTEMPTS + 1):
            node = self._start(name, num_cpus, resources, args)
            try:
                self._wait_registered(node)
                return node
            except NodeStartFailed:
                _kill_group(node.process)
                self.nodes.remove(node)
                if attempt == START_ATTEMPTS:
                    raise

    def _start(self, name: str, num_cpus: int, resources: dict, args: list[str]) -> Node:
        cache = self.root / f"model-cache-{name}"
        cache.mkdir(parents=True, exist_ok=True)
        log = self.root / f"node-{name}.log"
        # A resource of the node's own, so that Ray's node list says which node is which.
        resources = {**resources, f"node_{name}": 1}
        cmd = [RAY, "start", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
               f"--temp-dir={self.temp_dir}", f"--num-cpus={num_cpus}", f"--resources={json.dumps(resources)}",
               f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
               f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
               f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
               f"--object-store-memory={OBJECT_STORE_BYTES}", *args]
        env = {**self.env, "PIPELINE_MODEL_CACHE": str(cache)}
        with open(log, "wb") as out:
            # Its own session: the node's processes form one group that `kill` can end, and a signal
            # to the test process does not reach them half-way.
            process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        node = Node(name, cache, process, log)
        self.nodes.append(node)
        return node

    def _wait_registered(self, node: Node) -> None:
        """The node's id, once the GCS lists it alive (read from the head's state API; before the
        dashboard answers, `ray start` of the head has not finished)."""
        from ray.util.state import list_nodes

        deadline = time.time() + STARTUP_TIMEOUT_S
        while time.time() < deadline:
            if node.process.poll() is not None:
                raise NodeStartFailed(f"ray start for node {node.name} exited {node.process.returncode}:\n"
                                      f"{node.log.read_text()[-3000:]}")
            try:
                listed = list_nodes(address=self.dashboard_url, detail=True, raise_on_missing_output=False)
            except Exception:  # noqa: BLE001 - the head's dashboard is not answering yet
                listed = []
            found = [n.node_id for n in listed if n.state == "ALIVE" and f"node_{node.name}" in n.resources_total]
            if found:
                node.node_id = found[0]
                return
            time.sleep(0.5)
        raise NodeStartFailed(f"node {node.name} did not join within {STARTUP_TIMEOUT_S}s:\n"
                              f"{node.log.read_text()[-3000:]}")

    def kill(self, node: Node) -> None:
        """End the node at once, as a machine that loses power: SIGKILL to its process group (the
        raylet, its object store, its workers and agents)."""
        _kill_group(node.process)

    def shutdown(self) -> None:
        for node in reversed(self.nodes):  # workers before the head, which they report to
            _kill_group(node.process)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
