"""The job on a real multi-node Ray cluster (tests/cluster.py): a head that runs only drivers, a CPU node
and two "accelerator" nodes, each a `ray start` of its own with its own custom resources and its own
model cache; the checkpoint, inputs and outputs on moto's S3 server.

- `ray job submit` through the head's job server, with the repository as the working directory, as
  the README says.
- Placement and a node that dies mid-run, in one run: model actors only on accelerator nodes
  (`resources.model_resources`), the read, tokenize, postprocess and write stages only on the CPU node
  (`resources.cpu_stage_resources`), the `s3://` checkpoint copied once per node however many actors
  start there; the killed node's work is redone on the other, and every row is written exactly once.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from tests.cluster import LocalCluster
from tests.integration._util import explain, read_outputs, rows

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 240

# The layout of a GPU cluster: every model actor needs an `accelerator_node` (a node has room for the
# job's three, so either can take over from the other), every CPU stage a sliver of `cpu_node`.
# Logical CPUs are a scheduling budget, not this machine's cores.
CPU_NODE = ("cpu", 2, {"cpu_node": 100})
ACCEL_NODES = [("accel-a", 2, {"accelerator_node": 3}), ("accel-b", 2, {"accelerator_node": 3})]
PLACED = {
    "cpus_per_actor": 0.5, "model_resources": {"accelerator_node": 1}, "cpu_stage_resources": {"cpu_node": 0.01},
    "tokenize_actors": 1, "postprocess_actors": 1,
}
STAGES = ("Tokenize", "Predict", "Postprocess")  # the stage classes Ray Data names its actors after


@pytest.fixture(scope="module")
def model_uri(tmp_path_factory, s3fs_client) -> str:
    """A tiny real BERT token classifier (tests/models.py) in the `models` bucket."""
    from tests.models import build_bert

    local = build_bert(tmp_path_factory.mktemp("cluster-ner"), head="token-classification")
    prefix = f"models/cluster-ner-{uuid.uuid4().hex[:8]}"
    for f in local.iterdir():
        s3fs_client.put_file(str(f), f"{prefix}/{f.name}")
    return f"s3://{prefix}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head (CPUs 0: drivers only), the CPU node and two accelerator nodes. The nodes inherit this
    process's environment (conftest's dummy AWS credentials) with this venv first on PATH, as the
    nodes of a cluster run the project's image."""
    root = tmp_path_factory.mktemp("cluster")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    with LocalCluster(root, env) as c:
        c.start_head(num_cpus=0)
        c.add_nodes([CPU_NODE, *ACCEL_NODES])
        yield c


def _put_shards(fs, prefix: str, shards: int, rows_each: int) -> list[str]:
    """JSONL shards of short sentences; returns every id."""
    ids = []
    for s in range(shards):
        lines = []
        for r in range(rows_each):
            ids.append(f"s{s}-r{r}")
            lines.append(json.dumps({"id": ids[-1], "text": f"Alice {s} met Bob {r} at Acme in Paris on day {r}."}))
        with fs.open(f"{prefix}/part-{s:03d}.jsonl", "wb") as f:
            f.write(("\n".join(lines) + "\n").encode())
    return ids


def _spec_args(tmp_path, name: str, spec: dict) -> list[str]:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return [sys.executable, "-m", "pipeline", "run", str(path)]


def _start_cli(cmd: list[str], cluster: LocalCluster, logs: Path) -> subprocess.Popen:
    """The CLI as a driver attached to the cluster by address; its own model cache is the head's (the
    driver checks the model before any work). Its output goes to files (a pipe nobody reads while the
    test polls could fill up), and it runs in its own session, so a hung run is ended as a whole."""
    env = {**cluster.env, "RAY_ADDRESS": cluster.address, "PIPELINE_MODEL_CACHE": str(cluster.nodes[0].cache)}
    with open(logs / "stdout", "w") as out, open(logs / "stderr", "w") as err:
        return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=err, start_new_session=True)


def _finish(proc: subprocess.Popen, logs: Path) -> tuple[int, str]:
    """The exit code and stderr of a CLI run."""
    try:
        proc.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"the job did not finish in {RUN_TIMEOUT_S}s:\n{explain((logs / 'stderr').read_text())}")
    return proc.returncode, (logs / "stderr").read_text()


def _job_id(cluster: LocalCluster, proc: subprocess.Popen) -> str | None:
    """The Ray job id of the CLI run `proc` (a driver attached by address), once it has connected."""
    from ray.job_submission import JobSubmissionClient

    for job in JobSubmissionClient(cluster.dashboard_url).list_jobs():
        if job.driver_info and str(job.driver_info.pid) == str(proc.pid):
            return job.job_id
    return None


def _job_actors(cluster: LocalCluster, job_id: str) -> list[dict]:
    """The job's stage actors (alive or dead), each with its stage class and node, from the state API."""
    from ray.util.state import list_actors

    found = []
    for a in list_actors(address=cluster.dashboard_url, filters=[("job_id", "=", job_id)], detail=True,
                         limit=10_000, raise_on_missing_output=False):
        stage = next((s for s in STAGES if f"({s})" in (a.repr_name or "")), None)
        if stage:
            found.append({"stage": stage, "node_id": a.node_id, "state": a.state, "restarts": a.num_restarts})
    return found


def _copies(node, model_uri: str) -> int:
    """Copies of the checkpoint this node made: lines of its cache's copy log (pipeline.models)."""
    log = node.cache / "copies.jsonl"
    if not log.exists():
        return 0
    return sum(1 for line in log.read_text().splitlines() if json.loads(line)["path"] == model_uri)


def _tasks_nodes(cluster: LocalCluster, job_id: str) -> set[str]:
    """The nodes the job's (non-actor) read and write tasks ran on."""
    from ray.util.state import list_tasks

    kinds = {n.node_id: n.name for n in cluster.nodes}
    return {kinds.get(t.node_id, t.node_id) for t in list_tasks(
        address=cluster.dashboard_url, filters=[("job_id", "=", job_id), ("type", "=", "NORMAL_TASK")],
        limit=10_000, raise_on_missing_output=False) if "ReadShards" in t.name or "WritePartsMetered" in t.name}


def _predict_tasks(cluster: LocalCluster, job_id: str) -> list:
    """The job's model batches Ray ran or runs (one entry per attempt), with their node and state."""
    from ray.util.state import list_tasks

    return [t for t in list_tasks(address=cluster.dashboard_url,
                                  filters=[("job_id", "=", job_id), ("type", "=", "ACTOR_TASK")], limit=10_000,
                                  raise_on_missing_output=False) if "(Predict)" in t.name]


def _bookkeeping_nodes(cluster: LocalCluster, job_id: str) -> dict[str, str]:
    """Where the job's own actors lived: the read ledger and the stage meter (pipeline/job.py)."""
    from ray.util.state import list_actors

    kinds = {n.node_id: n.name for n in cluster.nodes}
    return {a.class_name: kinds.get(a.node_id)
            for a in list_actors(address=cluster.dashboard_url, filters=[("job_id", "=", job_id)], detail=True,
                                 limit=10_000, raise_on_missing_output=False)
            if a.class_name in ("ReadLedger", "StageMeter")}


def _readme_submit_command(address: str) -> list[str]:
    """The README's `ray job submit` command, as a user copies it, with `address` for its head's."""
    readme = (REPO_ROOT / "README.md").read_text()
    [line] = [line for line in readme.splitlines() if line.startswith("ray job submit ")]
    argv = shlex.split(line)
    argv[argv.index("--address") + 1] = address
    return argv


def test_ray_job_submit_as_the_readme_says(tmp_path, cluster, s3fs_client, s3_endpoint):
    """The README's command, run from the repository root against the head's job server: the repository
    is uploaded as the job's working directory (without the git-ignored virtual environment and models,
    hence the model on S3), the driver runs on the head, and the job writes complete outputs. The
    `--set` options after it only point the job at this machine's S3 and fit its pools to this cluster."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from ray.job_submission import JobStatus, JobSubmissionClient

    from tests.models import build_bert

    run = uuid.uuid4().hex[:8]
    local_model = build_bert(tmp_path / "model", head="token-classification", seed=1)
    for f in local_model.iterdir():
        s3fs_client.put_file(str(f), f"models/submit-{run}/{f.name}")
    ids = []
    for s in range(2):  # Parquet shards under a glob, as jobs/ner_extraction.yaml reads them
        shard_ids = [f"p{s}-{r}" for r in range(20)]
        ids += shard_ids
        with s3fs_client.open(f"data/submit-{run}/shard-{s}.parquet", "wb") as f:
            pq.write_table(pa.table({"id": shard_ids, "text": [f"Carol {i} flew to Rome with Dave." for i in shard_ids]}), f)

    overrides = {
        "input.path": f"s3://data/submit-{run}/*.parquet", "model.path": f"s3://models/submit-{run}",
        "output.path": f"s3://results/submit-{run}/", "storage.endpoint_url": s3_endpoint,
        "model.max_length": "64", "batching.rows_per_batch": "8",
        "resources.gpus_per_actor": "0", "resources.cpus_per_actor": "0.5", "resources.model_actors": "1",
        "resources.tokenize_actors": "1", "resources.postprocess_actors": "1",
        "resources.model_resources": "{accelerator_node: 1}", "resources.cpu_stage_resources": "{cpu_node: 0.01}",
    }
    cmd = _readme_submit_command(cluster.dashboard_url)
    cmd += [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]
    started = time.time()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=cluster.env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    wall = time.time() - started
    print(f"\n{shlex.join(cmd)}\nexited {proc.returncode} after {wall:.1f}s")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]

    [job_id] = set(re.findall(r"raysubmit_[A-Za-z0-9]+", proc.stdout))
    assert JobSubmissionClient(cluster.dashboard_url).get_job_status(job_id) == JobStatus.SUCCEEDED
    out = read_outputs(f"s3://results/submit-{run}/", s3fs_client)
    assert out["summary"]["rows_read"] == out["summary"]["rows_written"] == len(ids)
    assert sorted(r["id"] for r in rows(out["results"])) == sorted(ids)

    # What the upload held, as unpacked for the job: the code and the specs, not the virtual
    # environment, git history or models.
    [package] = [p for p in Path(cluster.temp_dir).glob("session_latest/runtime_resources/working_dir_files/*")
                 if p.is_dir()]  # beside the zip it came in
    assert (package / "pipeline" / "job.py").is_file() and (package / "jobs" / "ner_extraction.yaml").is_file()
    assert not [name for name in (".venv", ".git", "jobs/models", "out") if (package / name).exists()]


def test_stages_run_where_their_resources_are_and_survive_a_node_that_dies(tmp_path, cluster, s3fs_client,
                                                                          s3_endpoint, model_uri):
    """Three model actors over two accelerator nodes (so one runs two), the CPU stages on the CPU node.
    Once model batches have run on an accelerator node, and before any shard is done, that node is
    killed (raylet, workers and all). Ray restarts its actors on the other accelerator node, which has
    room for all three, and retries their batches there: the job ends complete, every row once, every
    stage where its resources are, and the checkpoint copied once per node."""
    run = uuid.uuid4().hex[:8]
    shards = 6
    ids = _put_shards(s3fs_client, f"data/cluster-{run}", shards=shards, rows_each=50)
    out = f"results/cluster-{run}"
    cmd = _spec_args(tmp_path, "placed", {
        "input": {"path": f"s3://data/cluster-{run}/"},
        "model": {"path": model_uri, "head": "token-classification", "max_length": 64},
        "output": {"path": f"s3://{out}/"},
        "storage": {"endpoint_url": s3_endpoint},
        "resources": {**PLACED, "model_actors": 3},
        "batching": {"rows_per_batch": 5},  # many small model batches: some are in flight when the node dies
    })
    kinds = {n.node_id: n.name for n in cluster.nodes}
    started = time.time()
    proc = _start_cli(cmd, cluster, tmp_path)
    victim = job_id = None
    while victim is None and proc.poll() is None and time.time() - started < RUN_TIMEOUT_S:
        time.sleep(0.2)
        job_id = job_id or _job_id(cluster, proc)
        if job_id is None:  # not connected yet
            continue
        ran = Counter(kinds.get(t.node_id) for t in _predict_tasks(cluster, job_id) if t.node_id)
        if ran:
            victim = next(n for n in cluster.nodes if n.name == ran.most_common(1)[0][0])
            cluster.kill(victim)
            shards_done_at_kill = len(s3fs_client.glob(f"{out}/_shards/*.json"))
            killed_at = time.time() - started
    code, err = _finish(proc, tmp_path)
    assert victim is not None, f"the run ended before a node could be killed:\n{explain(err)}"
    wall = time.time() - started
    s3fs_client.invalidate_cache()  # the listings taken while polling predate the outputs

    actors = _job_actors(cluster, job_id)
    placed = Counter((a["stage"], kinds[a["node_id"]]) for a in actors)
    copies = {n.name: _copies(n, model_uri) for n in cluster.nodes}
    bookkeeping, task_nodes = _bookkeeping_nodes(cluster, job_id), _tasks_nodes(cluster, job_id)
    print(f"\n{len(cluster.nodes)} nodes, {len(ids)} rows in {shards} shards, {wall:.1f}s; killed {victim.name} "
          f"at {killed_at:.1f}s ({shards_done_at_kill} shards done); actors per (stage, node): {dict(placed)}; "
          f"bookkeeping: {bookkeeping}; read/write tasks on {task_nodes}; copies: {copies}")
    assert victim.name in ("accel-a", "accel-b") and shards_done_at_kill < shards
    # The job's ledger and meter must outlive any worker node: on the driver's node (the head).
    assert bookkeeping == {"ReadLedger": "head", "StageMeter": "head"}, (
        "pipeline/job.py: schedule ReadLedger and StageMeter on the driver's node")
    assert code == 0, explain(err)

    summary = read_outputs(f"s3://{out}/", s3fs_client)
    assert summary["summary"]["rows_read"] == summary["summary"]["rows_written"] == len(ids)
    assert sorted(r["id"] for r in rows(summary["results"])) == sorted(ids)  # every row exactly once

    # Where each stage ran, the restarted model actors included.
    assert {kinds[a["node_id"]] for a in actors if a["stage"] == "Predict"} <= {"accel-a", "accel-b"}
    assert any(a["restarts"] for a in actors if a["stage"] == "Predict")  # the victim's, elsewhere
    assert {kinds[a["node_id"]] for a in actors if a["stage"] != "Predict"} == {"cpu"}
    assert {"Tokenize", "Postprocess"} <= {a["stage"] for a in actors}
    assert task_nodes == {"cpu"}
    # One copy per node: the survivor ran two or three model actors (its own and the restarted ones),
    # the CPU node the tokenizer's and the postprocessor's, the head the driver's check. The victim may
    # have died before its copy was whole.
    survivor = "accel-b" if victim.name == "accel-a" else "accel-a"
    assert placed[("Predict", survivor)] >= 2
    assert {k: v for k, v in copies.items() if k != victim.name} == {"head": 1, "cpu": 1, survivor: 1}, copies
    assert copies[victim.name] <= 1
