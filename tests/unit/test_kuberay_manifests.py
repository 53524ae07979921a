"""deploy/kuberay/: the RayJob and the RayCronJob are valid for KubeRay (its own CRD schemas, vendored in
tests/kuberay_crds/, with unknown fields refused as `kubectl apply --validate=strict` refuses them), run
this project's CLI on a spec that is in the repository, in the image the Dockerfile builds, with the
model actors on GPU workers and the AWS credentials from a Secret."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

jsonschema = pytest.importorskip("jsonschema")

DEPLOY = REPO_ROOT / "deploy" / "kuberay"
CRDS = REPO_ROOT / "tests" / "kuberay_crds"
MANIFESTS = {
    "rayjob": DEPLOY / "rayjob-ner-extraction.yaml",
    "raycronjob": DEPLOY / "raycronjob-nightly-tagging.yaml",
}
SCHEMA_FILES = {"RayJob": CRDS / "rayjob.v1.schema.json", "RayCronJob": CRDS / "raycronjob.v1.schema.json"}
# KubeRay's JobSubmissionMode values (ray-operator/apis/ray/v1/rayjob_types.go); the CRD does not enumerate them.
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
WORKDIR = "/home/ray/pipeline"

_SCHEMA_CACHE: dict[str, dict] = {}
# Stands for a property that KubeRay's schema has and the vendored copy cut: nothing validates under it.
PRUNED = {"not": {}, "x-pruned": True}


def vendored(kind: str) -> dict:
    if kind not in _SCHEMA_CACHE:
        _SCHEMA_CACHE[kind] = json.loads(SCHEMA_FILES[kind].read_text())
    return _SCHEMA_CACHE[kind]


def strict(node):
    """A Kubernetes structural schema (OpenAPI v3) as a JSON Schema that refuses what the API server
    would refuse or silently drop: unknown fields (the CRD schemas do not forbid them; the server prunes
    them, and `kubectl --validate=strict` reports them), properties cut from the vendored copy (PRUNED,
    reported as such), int32 out of range; x-kubernetes-int-or-string and nullable as
    the API server reads them."""
    if isinstance(node, list):
        return [strict(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict(v) for k, v in node.items() if k not in ("properties", "x-pruned-properties")}
    if "properties" in node:
        props = {k: strict(v) for k, v in node["properties"].items()}
        props.update({name: PRUNED for name in node.get("x-pruned-properties", [])})
        out["properties"] = props
        if "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if node.get("x-kubernetes-int-or-string") and "type" not in node and "anyOf" not in node:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in node:
        out["type"] = [node["type"], "null"]
    if node.get("format") == "int32":
        out.setdefault("minimum", -(2**31))
        out.setdefault("maximum", 2**31 - 1)
    return out


def validation_errors(manifest: dict) -> list[str]:
    schema = strict(vendored(manifest["kind"])["openAPIV3Schema"])
    errors = []
    for e in sorted(jsonschema.Draft7Validator(schema).iter_errors(manifest), key=lambda e: list(map(str, e.path))):
        where = ".".join(map(str, e.absolute_path)) or "<root>"
        if isinstance(e.schema, dict) and e.schema.get("x-pruned"):
            errors.append(f"{where}: in KubeRay's schema but not in the vendored copy (tests/kuberay_crds/README.md)")
        else:
            errors.append(f"{where}: {e.message}")
    return errors


def load(name: str) -> dict:
    return yaml.safe_load(MANIFESTS[name].read_text())


def job_spec(manifest: dict) -> dict:
    """The RayJobSpec: a RayJob's spec, a RayCronJob's spec.jobTemplate."""
    return manifest["spec"]["jobTemplate"] if manifest["kind"] == "RayCronJob" else manifest["spec"]


def cluster(manifest: dict) -> dict:
    return job_spec(manifest)["rayClusterSpec"]


def containers(manifest: dict):
    c = cluster(manifest)
    yield "head", c["headGroupSpec"]["template"]["spec"]["containers"]
    for g in c["workerGroupSpecs"]:
        yield g["groupName"], g["template"]["spec"]["containers"]


def gpu_limit(container: dict) -> float:
    return float(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


def cpu_quantity(q) -> float:
    q = str(q)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


@pytest.fixture(params=sorted(MANIFESTS))
def name(request) -> str:
    return request.param


# --- the CRD schemas -----------------------------------------------------------------------------------

def test_manifest_is_valid_against_kuberays_crd(name):
    manifest = load(name)
    doc = vendored(manifest["kind"])
    assert manifest["apiVersion"] == f"{doc['group']}/{doc['version']}" == "ray.io/v1"
    assert validation_errors(manifest) == []
    meta = manifest["metadata"]
    assert set(meta) <= {"name", "namespace", "labels", "annotations"}
    # A DNS-1123 label, short: KubeRay derives the RayJob's, RayCluster's and pods' names from it.
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", meta["name"]) and len(meta["name"]) <= 30


def rename(d: dict, old: str, new: str) -> None:
    d[new] = d.pop(old)


def head_pod(m):
    return cluster(m)["headGroupSpec"]["template"]["spec"]


def gpu_group(m):
    return next(g for g in cluster(m)["workerGroupSpecs"] if gpu_limit(g["template"]["spec"]["containers"][0]))


BROKEN = {
    # misspelled or misplaced fields: refused as unknown
    "workerGroupSpec": lambda m: rename(cluster(m), "workerGroupSpecs", "workerGroupSpec"),
    "minReplica": lambda m: rename(gpu_group(m), "minReplicas", "minReplica"),
    "maxReplica": lambda m: rename(gpu_group(m), "maxReplicas", "maxReplica"),
    "shutdownAfterJobFinish": lambda m: rename(job_spec(m), "shutdownAfterJobFinishes", "shutdownAfterJobFinish"),
    "entryPoint": lambda m: rename(job_spec(m), "entrypoint", "entryPoint"),
    "enableInTreeAutoScaling": lambda m: rename(cluster(m), "enableInTreeAutoscaling", "enableInTreeAutoScaling"),
    "rayStartParam": lambda m: rename(cluster(m)["headGroupSpec"], "rayStartParams", "rayStartParam"),
    "container-resource": lambda m: rename(head_pod(m)["containers"][0], "resources", "resource"),
    "toleration": lambda m: rename(gpu_group(m)["template"]["spec"], "tolerations", "toleration"),
    "secretKeyRefs": lambda m: rename(head_pod(m)["containers"][0]["env"][0]["valueFrom"], "secretKeyRef",
                                      "secretKeyRefs"),
    "replicas-in-pod-spec": lambda m: gpu_group(m)["template"]["spec"].update(replicas=2),
    # wrong types and values
    "maxReplicas-string": lambda m: gpu_group(m).update(maxReplicas="8"),
    "maxReplicas-over-int32": lambda m: gpu_group(m).update(maxReplicas=2**31),
    "rayStartParams-int": lambda m: cluster(m)["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),
    "gpu-limit-not-a-quantity": lambda m: gpu_group(m)["template"]["spec"]["containers"][0]["resources"][
        "limits"].update({"nvidia.com/gpu": "one"}),
    "tolerations-not-a-list": lambda m: gpu_group(m)["template"]["spec"].update(tolerations={"key": "x"}),
    "upscalingMode-unknown": lambda m: cluster(m)["autoscalerOptions"].update(upscalingMode="Fast"),
    # required fields
    "no-groupName": lambda m: gpu_group(m).pop("groupName"),
    "no-worker-template": lambda m: gpu_group(m).pop("template"),
    "no-containers": lambda m: head_pod(m).pop("containers"),
    "no-headGroupSpec": lambda m: cluster(m).pop("headGroupSpec"),
    "secretKeyRef-no-key": lambda m: head_pod(m)["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"].pop("key"),
}

BROKEN_CRON = {
    "jobTemplates": lambda m: rename(m["spec"], "jobTemplate", "jobTemplates"),
    # the field name of an early RayCronJob design, never released
    "rayJobTemplate": lambda m: rename(m["spec"], "jobTemplate", "rayJobTemplate"),
    "schedules": lambda m: rename(m["spec"], "schedule", "schedules"),
    "no-schedule": lambda m: m["spec"].pop("schedule"),
    # not in KubeRay 1.6's RayCronJob
    "concurrencyPolicy": lambda m: m["spec"].update(concurrencyPolicy="Forbid"),
    "timeZone": lambda m: m["spec"].update(timeZone="Etc/UTC"),
}


@pytest.mark.parametrize("mutation", sorted(BROKEN))
def test_schema_rejects_broken_copies(name, mutation):
    broken = load(name)
    BROKEN[mutation](broken)
    assert validation_errors(broken), f"{mutation}: accepted"


@pytest.mark.parametrize("mutation", sorted(BROKEN_CRON))
def test_schema_rejects_broken_cron_copies(mutation):
    broken = load("raycronjob")
    BROKEN_CRON[mutation](broken)
    assert validation_errors(broken), f"{mutation}: accepted"


def test_bare_crd_schema_lets_unknown_fields_through():
    # Why `strict`: a structural schema does not forbid unknown fields (the API server drops them
    # silently), so a misspelling passes the CRD's schema as it stands.
    broken = load("rayjob")
    rename(cluster(broken), "workerGroupSpecs", "workerGroupSpec")
    assert jsonschema.Draft7Validator(vendored("RayJob")["openAPIV3Schema"]).is_valid(broken)
    assert any("'workerGroupSpec' was unexpected" in e for e in validation_errors(broken))


def test_field_cut_from_the_vendored_copy_is_named_as_such():
    manifest = load("rayjob")
    head_pod(manifest)["affinity"] = {}
    (error,) = validation_errors(manifest)
    assert error.startswith("spec.rayClusterSpec.headGroupSpec.template.spec.affinity: in KubeRay's schema")


def test_vendored_schemas_name_their_source():
    readme = (CRDS / "README.md").read_text()
    sources = [vendored(kind)["source"] for kind in SCHEMA_FILES]
    assert {s["commit"] for s in sources} == {sources[0]["commit"]}
    for kind, s in zip(SCHEMA_FILES, sources):
        doc = vendored(kind)
        assert doc["kind"] == kind and doc["group"] == "ray.io" and doc["version"] == "v1"
        assert s["repository"] == "ray-project/kuberay" and re.fullmatch(r"[0-9a-f]{40}", s["commit"])
        assert s["path"].startswith("ray-operator/config/crd/bases/ray.io_")
        assert s["commit"] in readme and s["release"] in readme
        assert "spec" in doc["openAPIV3Schema"]["properties"]


# --- what the job runs ---------------------------------------------------------------------------------

def run_as_kuberay_would(entrypoint: str, cwd: Path) -> list[str]:
    """The entrypoint through KubeRay's K8sJobMode submitter and Ray's job supervisor, with `python`
    replaced by a recorder: the submitter's bash command line holds the entrypoint as written, `ray job
    submit -- ...` sends shlex.join of its arguments, and the head runs that string in a shell. Returns
    the arguments `python` got."""
    bindir = cwd / "bin"
    bindir.mkdir()
    (bindir / "ray").write_text(f"#!{sys.executable}\n" + textwrap.dedent("""\
        import shlex, subprocess, sys
        args = sys.argv[1:]
        assert args[:2] == ["job", "submit"], args
        entrypoint = shlex.join(args[args.index("--") + 1:])
        sys.exit(subprocess.run(entrypoint, shell=True).returncode)
        """))
    (bindir / "python").write_text(
        f"#!{sys.executable}\nimport json, os, sys\njson.dump(sys.argv[1:], open(os.environ['ARGV_FILE'], 'w'))\n")
    for tool in ("ray", "python"):
        (bindir / tool).chmod(0o755)
    argv_file = cwd / "argv.json"
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "ARGV_FILE": str(argv_file)}
    submitter = f"ray job submit --address http://head:8265 --no-wait -- {entrypoint.strip()} ;"
    subprocess.run(["bash", "-c", submitter], cwd=cwd, env=env, check=True, timeout=60)
    return json.loads(argv_file.read_text())


def parse_cli(argv: list[str]) -> tuple[str, list[str]]:
    assert argv[:3] == ["-m", "pipeline", "run"], argv
    spec, rest = argv[3], argv[4:]
    assert re.fullmatch(r"jobs/[\w-]+\.yaml", spec), spec
    assert len(rest) % 2 == 0 and rest[::2] == ["--set"] * (len(rest) // 2), rest
    return spec, rest[1::2]


def yesterday_utc() -> str:
    return (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)).date().isoformat()


def run_entrypoint(name: str, tmp_path: Path):
    """(manifest, spec path, overrides, the JobSpec they make, the days `date` could have given)."""
    from pipeline.spec import load_spec

    manifest = load(name)
    days = {yesterday_utc()}
    # A file that an unquoted `--set input.path=s3://.../*.jsonl.gz` would expand to in the shell's
    # working directory, so a missing quote shows.
    for day in days:
        (tmp_path / "input.path=s3:" / "my-corpus" / "daily" / day).mkdir(parents=True)
        (tmp_path / "input.path=s3:" / "my-corpus" / "daily" / day / "a.jsonl.gz").touch()
    argv = run_as_kuberay_would(job_spec(manifest)["entrypoint"], tmp_path)
    days.add(yesterday_utc())
    spec_path, overrides = parse_cli(argv)
    assert (REPO_ROOT / spec_path).is_file()
    return manifest, spec_path, overrides, load_spec(REPO_ROOT / spec_path, overrides), days


@pytest.fixture
def run(name, tmp_path):
    return run_entrypoint(name, tmp_path)


def test_entrypoint_runs_the_pipeline_on_a_spec_in_the_repo(run):
    manifest, spec_path, overrides, spec, _ = run
    expected = {"rayjob": "jobs/ner_extraction.yaml", "raycronjob": "jobs/nightly_tagging.yaml"}
    assert spec_path == expected[manifest["kind"].lower()]
    keys = [o.split("=", 1)[0] for o in overrides]
    assert "resources.gpus_per_actor" in keys and "resources.model_actors" in keys
    assert spec.resources.gpus_per_actor == 1
    assert spec.resources.ray_address == "auto"        # the driver joins the cluster it runs on
    for path in (spec.input.path, spec.model.path, spec.output.path):
        assert path.startswith("s3://") and "YYYY-MM-DD" not in path


def test_nightly_prefixes_carry_yesterdays_date(tmp_path):
    _, _, _, spec, days = run_entrypoint("raycronjob", tmp_path)
    (day,) = [d for d in days if d in spec.output.path]
    assert spec.input.path == f"s3://my-corpus/daily/{day}/*.jsonl.gz"     # the glob reached the spec as is
    assert spec.output.path == f"s3://my-results/tags/daily/{day}/"


def test_gpu_worker_groups_fit_the_model_actors(run):
    from pipeline.spec import pool_bounds

    manifest, _, _, spec, _ = run
    res = spec.resources
    c = cluster(manifest)
    assert c["enableInTreeAutoscaling"] is True
    head = c["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"    # the driver only; no task or actor on the head
    assert all(gpu_limit(ct) == 0 for ct in head["template"]["spec"]["containers"])

    gpu_groups = []
    for g in c["workerGroupSpecs"]:
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
        (ct,) = g["template"]["spec"]["containers"]
        if gpu_limit(ct):
            gpu_groups.append(g)
            assert gpu_limit(ct) == 1
            tolerations = g["template"]["spec"]["tolerations"]
            assert any(t["key"] == "nvidia.com/gpu" and t["operator"] == "Exists" and t.get("effect") in
                       (None, "NoSchedule") for t in tolerations)
            # One model actor per GPU pod: its CPUs fit next to it.
            assert res.gpus_per_actor == gpu_limit(ct)
            assert res.cpus_per_actor <= cpu_quantity(ct["resources"]["limits"]["cpu"])
    assert gpu_groups, "a worker group with nvidia.com/gpu limits"
    low, high = pool_bounds(res.model_actors)
    assert high <= sum(g["maxReplicas"] for g in gpu_groups)
    # The pool starts without waiting for the autoscaler.
    assert low <= sum(g["replicas"] for g in gpu_groups)


def test_credentials_come_from_a_secret(name):
    manifest = load(name)
    for group, cts in containers(manifest):
        for ct in cts:
            env = {e["name"]: e for e in ct.get("env", [])}
            for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                assert var in env, f"{group}: {var}"
                assert "value" not in env[var] and env[var]["valueFrom"]["secretKeyRef"]["key"] == var
                assert env[var]["valueFrom"]["secretKeyRef"]["name"]
            for var, e in env.items():
                assert "value" not in e or not re.search("KEY|SECRET|TOKEN|PASSWORD", var), var
    text = MANIFESTS[name].read_text()
    assert not re.search(r"\bA[KS]IA[0-9A-Z]{16}\b", text)


def test_job_lifecycle(name):
    ray = pytest.importorskip("ray")
    spec = job_spec(load(name))
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["submissionMode"] in SUBMISSION_MODES
    assert spec["backoffLimit"] >= 1                    # a rerun resumes the job's shards
    # The cluster runs the Ray of the image, which is the Ray the tests (and cluster.yaml) run.
    assert spec["rayClusterSpec"]["rayVersion"] == ray.__version__


# --- the schedule --------------------------------------------------------------------------------------

CRON_FIELDS = [("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}),
               ("month", 1, 12, {m: i + 1 for i, m in enumerate(
                   "jan feb mar apr may jun jul aug sep oct nov dec".split())}),
               ("day of week", 0, 7, {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())})]


def cron_error(expr: str) -> str | None:
    """None when `expr` is a standard 5-field cron expression (what KubeRay's RayCronJob parses with
    robfig/cron's ParseStandard, less its @-descriptors), else what is wrong."""
    fields = expr.split()
    if len(fields) != 5:
        return f"{len(fields)} fields, not 5"
    for text, (what, lo, hi, names) in zip(fields, CRON_FIELDS):
        for part in text.split(","):
            rng, _, step = part.partition("/")
            if step and not (step.isdigit() and int(step) > 0):
                return f"{what}: bad step {step!r}"
            if rng in ("*", "?"):
                continue
            ends = rng.split("-")
            if len(ends) > 2:
                return f"{what}: bad range {rng!r}"
            values = []
            for end in ends:
                value = names.get(end.lower(), int(end) if end.isdigit() else None)
                if value is None or not lo <= value <= hi:
                    return f"{what}: {end!r} not in {lo}-{hi}"
                values.append(value)
            if values != sorted(values):
                return f"{what}: range {rng!r} runs backwards"
    return None


@pytest.mark.parametrize("expr", ["0 2 * * *", "*/15 * * * *", "30 1 1,15 * mon-fri", "0 0 * jan-mar 0"])
def test_cron_check_accepts(expr):
    assert cron_error(expr) is None


@pytest.mark.parametrize("expr", ["0 2 * *", "0 2 * * * *", "60 2 * * *", "0 24 * * *", "0 2 0 * *",
                                  "0 2 * 13 *", "0 2 * * 8", "*/0 * * * *", "5-1 * * * *", "@daily", "0 2 * * x"])
def test_cron_check_rejects(expr):
    assert cron_error(expr) is not None


def test_nightly_schedule_is_a_valid_cron():
    manifest = load("raycronjob")
    assert cron_error(manifest["spec"]["schedule"]) is None
    assert manifest["spec"].get("suspend", False) is False


# --- the image -----------------------------------------------------------------------------------------

def dockerfile() -> str:
    return (REPO_ROOT / "Dockerfile").read_text()


def intended_image() -> str:
    (image,) = re.findall(r"^# image: (\S+)$", dockerfile(), re.M)
    return image


def test_manifests_run_the_dockerfiles_image(name):
    image = intended_image()
    for group, cts in containers(load(name)):
        for ct in cts:
            assert ct["image"] == image, group
    config = yaml.safe_load((REPO_ROOT / "cluster.yaml").read_text())
    assert config["docker"]["image"] == image


def test_dockerfile_builds_the_tagged_image():
    ray = pytest.importorskip("ray")
    text = dockerfile()
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    (version,) = re.findall(r'^version = "([^"]+)"$', pyproject, re.M)
    (torch_req,) = re.findall(r'^\s*"(torch[^"]*)",', pyproject, re.M)
    m = re.fullmatch(r"[\w.-]+(?::\d+)?/(?:[\w.-]+/)*bert-batch-pipeline:(?P<version>[\w.]+)-ray(?P<ray>[\d.]+)"
                     r"-py(?P<py>\d+)-cu(?P<cu>\d+)", intended_image())
    assert m, intended_image()
    assert m["version"] == version
    assert m["ray"] == ray.__version__
    (base,) = re.findall(r"^FROM\s+(\S+)\s*$", text, re.M)
    assert base == f"rayproject/ray:{m['ray']}-py{m['py']}-cu{m['cu']}"
    assert (int(m["py"][0]), int(m["py"][1:])) >= (3, 10)         # pyproject: requires-python >= 3.10
    # torch: the project's range, the CUDA build of the base image's CUDA.
    assert f'"{torch_req}" --index-url https://download.pytorch.org/whl/cu{m["cu"]}' in text
    runs = re.findall(r"^RUN (.*)$", text, re.M)
    installs = [i for r in runs for i in re.findall(r"pip install [^&;]*", r)]
    assert any(re.search(r"pip install (--no-cache-dir )?\.(\s|$)", i) for i in installs), installs
    assert not any("[" in i for i in installs), "no extras ([test], [demo]) in the image"
    assert re.search(rf"^WORKDIR {WORKDIR}$", text, re.M) and re.search(r"^COPY (--chown=\S+ )?\. \.$", text, re.M)


def test_dockerignore_keeps_the_job_specs_and_drops_the_rest():
    import fnmatch

    patterns = [p.strip() for p in (REPO_ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]

    def ignored(path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        return any(fnmatch.fnmatch(p, pat.rstrip("/")) for pat in patterns for p in prefixes)

    for path in (".git/HEAD", ".venv/bin/python", "out/x/part.parquet", "jobs/models/ner/model.safetensors"):
        assert ignored(path), path
    for path in ("jobs/ner_extraction.yaml", "jobs/nightly_tagging.yaml", "pipeline/__main__.py", "pyproject.toml",
                 "README.md"):
        assert not ignored(path), path

