"""The deploy files agree: the Dockerfile, cluster.yaml (Ray's cluster launcher) and the KubeRay manifests
in deploy/kuberay/ run one image, the reference written in deploy/IMAGE; cluster.yaml's nodes run that
image as it is (nothing installed at start); in all three the head schedules nothing (0 CPUs) and the
node types / worker groups start with the custom resources that the specs they run ask for
(`resources.model_resources` for the model actors, on GPU nodes only; `resources.cpu_stage_resources`
for read, tokenize, postprocess and write, on CPU nodes only). Each file is also valid for its tool:
cluster.yaml for `ray up` (Ray's own schema and config checks), the manifests for KubeRay (its CRD
schemas, vendored in tests/kuberay_crds/, with unknown fields refused as `kubectl apply
--validate=strict` refuses them); the manifests run this project's CLI on a spec in the repository, on a
valid schedule, with the AWS credentials from a Secret."""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
import os
import re
import shlex
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
ray = pytest.importorskip("ray")

IMAGE_FILE = REPO_ROOT / "deploy" / "IMAGE"
DOCKERFILE = REPO_ROOT / "Dockerfile"
CLUSTER_YAML = REPO_ROOT / "cluster.yaml"
DEPLOY = REPO_ROOT / "deploy" / "kuberay"
CRDS = REPO_ROOT / "tests" / "kuberay_crds"
MANIFESTS = {
    "rayjob": DEPLOY / "rayjob-ner-extraction.yaml",
    "raycronjob": DEPLOY / "raycronjob-nightly-tagging.yaml",
}
# The specs that run on cluster.yaml's cluster: the ones that join a running cluster
# (resources.ray_address); test_cluster_specs_are_the_ones_that_join_a_cluster keeps this list whole.
CLUSTER_SPECS = ("jobs/ner_extraction.yaml", "jobs/nightly_tagging.yaml")
SCHEMA_FILES = {"RayJob": CRDS / "rayjob.v1.schema.json", "RayCronJob": CRDS / "raycronjob.v1.schema.json"}
# KubeRay's JobSubmissionMode values (ray-operator/apis/ray/v1/rayjob_types.go); the CRD does not enumerate them.
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
WORKDIR = "/home/ray/pipeline"
# Ray's own resources; every other key of a node's resources is a custom one.
RAY_RESOURCES = {"CPU", "GPU", "TPU", "memory", "object_store_memory"}


def load(name: str) -> dict:
    return yaml.safe_load(MANIFESTS[name].read_text())


def cluster_config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def job_spec(manifest: dict) -> dict:
    """The RayJobSpec: a RayJob's spec, a RayCronJob's spec.jobTemplate."""
    return manifest["spec"]["jobTemplate"] if manifest["kind"] == "RayCronJob" else manifest["spec"]


def cluster(manifest: dict) -> dict:
    return job_spec(manifest)["rayClusterSpec"]


def groups(manifest: dict):
    """(name, group spec) for the head group and each worker group."""
    c = cluster(manifest)
    yield "head", c["headGroupSpec"]
    for g in c["workerGroupSpecs"]:
        yield g["groupName"], g


def containers(manifest: dict):
    for name, g in groups(manifest):
        yield name, g["template"]["spec"]["containers"]


def gpu_limit(container: dict) -> float:
    return float(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


def cpu_quantity(q) -> float:
    q = str(q)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


@pytest.fixture(params=sorted(MANIFESTS))
def name(request) -> str:
    return request.param


@pytest.fixture
def config() -> dict:
    return cluster_config()


# --- one image -----------------------------------------------------------------------------------------

IMAGE_REF = re.compile(r"[\w.-]+(?::\d+)?/(?:[\w.-]+/)*bert-batch-pipeline:(?P<version>[\w.]+)-ray(?P<ray>[\d.]+)"
                       r"-py(?P<py>\d+)-cu(?P<cu>\d+)")
# Any reference to this project's image in a file's text, comments included.
ANY_IMAGE_REF = re.compile(r"[\w.:/-]*bert-batch-pipeline:[\w.-]+")


def image() -> str:
    """The one image reference: deploy/IMAGE, a single line (so that `$(cat deploy/IMAGE)` is it)."""
    lines = IMAGE_FILE.read_text().splitlines()
    assert len(lines) == 1 and lines[0] == lines[0].strip() and lines[0], f"deploy/IMAGE: {lines!r}"
    return lines[0]


def dockerfile() -> str:
    return DOCKERFILE.read_text()


def test_image_tag_says_what_is_inside():
    # registry/.../bert-batch-pipeline:<project version>-ray<Ray>-py<Python>-cu<CUDA>
    m = IMAGE_REF.fullmatch(image())
    assert m, image()
    (version,) = re.findall(r'^version = "([^"]+)"$', (REPO_ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert m["version"] == version
    # The cluster runs the Ray the tests run: a client that submits a job and the cluster must agree.
    assert m["ray"] == ray.__version__
    assert (int(m["py"][0]), int(m["py"][1:])) >= (3, 10)         # pyproject: requires-python >= 3.10


def image_errors(kind: str, doc: dict, text: str) -> list[str]:
    """Where a deploy file (cluster.yaml: kind "cluster"; a manifest: "manifest") runs or names an image
    other than deploy/IMAGE's."""
    want, errors = image(), []
    if kind == "cluster":
        docker = doc.get("docker") or {}
        used = {"docker.image": docker.get("image")}
        used |= {f"docker.{k}": docker[k] for k in ("head_image", "worker_image") if k in docker}
        for node, t in doc["available_node_types"].items():
            used |= {f"{node}.docker.{k}": v for k, v in (t.get("docker") or {}).items() if k.endswith("image")}
    else:
        used = {f"{group}.{ct['name']}": ct.get("image") for group, cts in containers(doc) for ct in cts}
    errors += [f"{where}: runs {got!r}" for where, got in used.items() if got != want]
    # Comments too: a stale tag in a file's instructions is a second place to change.
    errors += [f"names {ref!r}" for ref in ANY_IMAGE_REF.findall(text) if ref != want]
    return errors


def test_cluster_yaml_runs_the_image():
    text = CLUSTER_YAML.read_text()
    assert image_errors("cluster", yaml.safe_load(text), text) == []


def test_manifests_run_the_image(name):
    text = MANIFESTS[name].read_text()
    assert image_errors("manifest", yaml.safe_load(text), text) == []


@pytest.mark.parametrize("mutation", ["other-tag", "head-image", "node-type-image", "comment", "no-docker"])
def test_image_check_catches_cluster_yaml(config, mutation):
    text = CLUSTER_YAML.read_text()
    other = image().rsplit(":", 1)[0] + ":0.0.9-ray2.0.0-py39-cu118"
    if mutation == "other-tag":
        config["docker"]["image"] = other
    elif mutation == "head-image":
        config["docker"]["head_image"] = other
    elif mutation == "node-type-image":
        config["available_node_types"]["gpu.worker"]["docker"] = {"worker_image": other}
    elif mutation == "comment":
        text += f"\n# docker pull {other}\n"
    else:
        del config["docker"]
    assert image_errors("cluster", config, text)


@pytest.mark.parametrize("group", ["head", "gpu", "cpu"])
def test_image_check_catches_each_manifest_container(name, group):
    manifest = load(name)
    (cts,) = [cts for g, cts in containers(manifest) if g == group]
    cts[0]["image"] = "rayproject/ray:" + ray.__version__
    expected = f"{group}.{cts[0]['name']}: runs 'rayproject/ray:{ray.__version__}'"
    assert image_errors("manifest", manifest, "") == [expected]


def test_dockerfile_builds_the_image_of_deploy_IMAGE():
    text = dockerfile()
    # The documented build names deploy/IMAGE, and the Dockerfile spells no reference of its own.
    assert re.search(r'^#\s+docker build -t "\$\(cat deploy/IMAGE\)" \.', text, re.MULTILINE), "build command"
    assert ANY_IMAGE_REF.findall(text) == []
    m = IMAGE_REF.fullmatch(image())
    (base,) = re.findall(r"^FROM\s+(\S+)\s*$", text, re.MULTILINE)
    assert base == f"rayproject/ray:{m['ray']}-py{m['py']}-cu{m['cu']}"
    # torch: the project's range, the CUDA build of the base image's CUDA.
    (torch_req,) = re.findall(r'^\s*"(torch[^"]*)",', (REPO_ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert f'"{torch_req}" --index-url https://download.pytorch.org/whl/cu{m["cu"]}' in text
    runs = re.findall(r"^RUN (.*)$", text, re.MULTILINE)
    installs = [i for r in runs for i in re.findall(r"pip install [^&;]*", r)]
    assert any(re.search(r"pip install (--no-cache-dir )?\.(\s|$)", i) for i in installs), installs
    assert not any("[" in i for i in installs), "no extras ([test], [demo]) in the image"
    assert re.search(rf"^WORKDIR {WORKDIR}$", text, re.MULTILINE)
    assert re.search(r"^COPY (--chown=\S+ )?\. \.$", text, re.MULTILINE)


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


# --- cluster.yaml: valid for `ray up`, nodes that run the image as it is ----------------------------------

@pytest.fixture(scope="module")
def ray_schema() -> dict:
    # The schema `ray up` validates against, from the installed ray package.
    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def test_cluster_yaml_valid_against_rays_schema(config, ray_schema):
    jsonschema.validate(config, ray_schema)


def test_cluster_yaml_passes_ray_up_config_checks(config):
    # What `ray up` does before launching anything: fill in the provider's defaults, then validate.
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda c: c.update(bogus_key=1), id="bogus-top-level-key"),
        pytest.param(lambda c: c.pop("cluster_name"), id="no-cluster_name"),
        pytest.param(lambda c: c.pop("provider"), id="no-provider"),
        pytest.param(lambda c: c["provider"].pop("type"), id="no-provider-type"),
        pytest.param(lambda c: c["available_node_types"]["gpu.worker"].pop("node_config"), id="no-node_config"),
        pytest.param(lambda c: c["available_node_types"]["gpu.worker"]["resources"].update(GPU="one"),
                     id="non-integer-resource"),
        pytest.param(lambda c: c["available_node_types"]["cpu.worker"]["resources"].update(cpu_node=0.5),
                     id="fractional-custom-resource"),
        pytest.param(lambda c: c["available_node_types"]["cpu.worker"].update(min_worker=1), id="misspelt-node-key"),
        pytest.param(lambda c: c["auth"].update(ssh_usr="ubuntu"), id="misspelt-auth-key"),
        pytest.param(lambda c: c.update(setup_commands="pip install ."), id="commands-not-a-list"),
        pytest.param(lambda c: c["docker"].update(imag="x"), id="misspelt-docker-key"),
        pytest.param(lambda c: c["docker"].update(run_options="--ulimit nofile=65536:65536"),
                     id="docker-run-options-not-a-list"),
    ],
)
def test_ray_schema_rejects_broken_copies(config, ray_schema, mutate):
    # The schema check is not vacuous: the same validation refuses these edits of the file.
    mutate(config)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, ray_schema)


def test_ray_up_checks_refuse_a_missing_head_type(config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config["head_node_type"] = "no.such.type"
    with pytest.raises(ValueError):
        validate_config(prepare_config(config))


def test_cluster_yaml_node_types(config):
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert config["provider"]["type"] == "aws"
    assert config["provider"]["region"] and config["provider"]["availability_zone"]
    assert config["auth"]["ssh_user"] == "ubuntu"
    workers = {n: t for n, t in types.items() if n != config["head_node_type"]}
    gpus = {n: t for n, t in workers.items() if t["resources"].get("GPU", 0) > 0}
    assert gpus, "a worker type with GPU resources for the model actors"
    for t in gpus.values():
        assert t["node_config"]["InstanceType"].split(".")[0] in {"g4dn", "g5", "g6", "g6e", "p3", "p4d", "p5"}
    assert set(workers) - set(gpus), "a CPU worker type for reading, tokenizing and writing"
    for n, t in workers.items():
        assert t.get("min_workers", 0) == 0 and t["max_workers"] >= 1      # scale from 0 on demand
        assert t["resources"]["CPU"] >= (1 if n in gpus else 4), n
    assert sum(t["max_workers"] for t in workers.values()) <= config["max_workers"]
    assert config["head_start_ray_commands"] and config["worker_start_ray_commands"]
    assert any("--head" in c for c in config["head_start_ray_commands"])
    assert any("$RAY_HEAD_IP" in c for c in config["worker_start_ray_commands"])


# Installing or activating an environment at node start: the image already has it.
INSTALLS = re.compile(r"\b(?:pip3?|uv pip|conda|mamba)\s+install\b|\bvenv\b|\.bashrc|\bactivate\b")
COMMAND_LISTS = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands")


def node_setup_errors(config: dict) -> list[str]:
    """What, in a cluster.yaml, keeps its nodes from running the image as it is."""
    if "docker" not in config:
        return ["no docker: section, so the nodes do not run the image"]
    scopes = {"": config, **{f"{n}.": t for n, t in config["available_node_types"].items()}}
    errors = [f"{where}{key}: {command!r}" for where, scope in scopes.items() for key in COMMAND_LISTS
              for command in scope.get(key) or [] if INSTALLS.search(command)]
    # The image's copy of the repository is the code the job runs (and the code its package was built from).
    image_tree = {WORKDIR, "~/pipeline"}
    errors += [f"file_mounts: {remote!r} covers the image's {WORKDIR}" for remote in config.get("file_mounts") or {}
               if remote.rstrip("/") in image_tree or any(t.startswith(remote.rstrip("/") + "/") for t in image_tree)]
    return errors


def test_cluster_yaml_nodes_run_the_image_as_it_is(config):
    assert node_setup_errors(config) == []


@pytest.mark.parametrize("mutate", [
    pytest.param(lambda c: c["setup_commands"].append("pip install -q -e ~/pipeline"), id="editable-install"),
    pytest.param(lambda c: c["setup_commands"].append('~/venv/bin/pip install "ray[default,data]==2.60.0"'),
                 id="ray-in-a-venv"),
    pytest.param(lambda c: c.update(worker_setup_commands=["pip3 install torch --index-url https://x/cpu"]),
                 id="torch-on-workers"),
    pytest.param(lambda c: c["available_node_types"]["gpu.worker"].update(
        worker_setup_commands=["conda install -y pytorch"]), id="node-type-conda"),
    pytest.param(lambda c: c.update(head_setup_commands=['echo "source ~/venv/bin/activate" >> ~/.bashrc']),
                 id="bashrc-activation"),
    pytest.param(lambda c: c.update(file_mounts={"~/pipeline": "."}), id="working-tree-over-the-image"),
    pytest.param(lambda c: c.update(file_mounts={"/home/ray": "."}), id="mount-above-the-image-tree"),
    pytest.param(lambda c: c.pop("docker"), id="no-docker"),
])
def test_node_setup_check_catches(config, mutate):
    mutate(config)
    assert node_setup_errors(config)


def test_no_docker_alternative_is_commented_out():
    # cluster.yaml keeps the bare-AMI setup as comments only: parsed, the file installs nothing.
    text = CLUSTER_YAML.read_text()
    active = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert not INSTALLS.search(active)
    # Its Ray, for when it is used, is still the image's (the tests' and the submitting client's).
    pins = re.findall(r"ray\[[^\]]*\]==([0-9][^\"' ]*)", text)
    assert pins and set(pins) == {ray.__version__}, pins


# --- the KubeRay manifests: valid for KubeRay 1.6 ------------------------------------------------------

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
    "rayStartParams-resources-a-map": lambda m: gpu_group(m)["rayStartParams"].update(
        resources={"accelerator_node": 1}),
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
def test_crd_schema_rejects_broken_copies(name, mutation):
    broken = load(name)
    BROKEN[mutation](broken)
    assert validation_errors(broken), f"{mutation}: accepted"


@pytest.mark.parametrize("mutation", sorted(BROKEN_CRON))
def test_crd_schema_rejects_broken_cron_copies(mutation):
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


# --- the KubeRay manifests: what the job runs -----------------------------------------------------------

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


def test_gpu_worker_pods(run):
    # Kubernetes' side of the GPU groups (Ray's side, the resources, is checked below for all deploy files).
    from pipeline.spec import pool_bounds

    manifest, _, _, spec, _ = run
    res = spec.resources
    c = cluster(manifest)
    assert c["enableInTreeAutoscaling"] is True
    assert all(gpu_limit(ct) == 0 for ct in c["headGroupSpec"]["template"]["spec"]["containers"])
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
    assert gpu_groups, "a worker group with nvidia.com/gpu limits"
    # The pool starts without waiting for the autoscaler.
    assert pool_bounds(res.model_actors)[0] <= sum(g["replicas"] for g in gpu_groups)


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
    spec = job_spec(load(name))
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["submissionMode"] in SUBMISSION_MODES
    assert spec["backoffLimit"] >= 1                    # a rerun resumes the job's shards
    # The cluster runs the Ray of the image, which is the Ray the tests run.
    assert spec["rayClusterSpec"]["rayVersion"] == ray.__version__


# --- the schedule --------------------------------------------------------------------------------------

CRON_FIELDS = [("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}),
               ("month", 1, 12, {m: i + 1 for i, m in enumerate(
                   ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"])}),
               ("day of week", 0, 7, {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])})]


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


# --- where the stages run: the same in cluster.yaml and both manifests ------------------------------------

def node_types_of_cluster_yaml(config: dict) -> tuple[dict, str]:
    """({node type: {"resources", "max_workers"}}, the head's type) as `ray up`'s autoscaler sees them."""
    types = {n: {"resources": dict(t.get("resources", {})), "max_workers": t.get("max_workers", 0)}
             for n, t in config["available_node_types"].items()}
    return types, config["head_node_type"]


def node_types_of_manifest(manifest: dict) -> tuple[dict, str]:
    """The same for a manifest's Ray cluster, as Ray's autoscaler derives them from the RayCluster spec
    (KubeRay's autoscaler sidecar runs this code): CPU and GPU from rayStartParams or the container's
    limits, custom resources from rayStartParams.resources."""
    from ray.autoscaler._private.kuberay.autoscaling_config import (
        _derive_autoscaling_config_from_ray_cr,
    )

    derived = _derive_autoscaling_config_from_ray_cr(
        {"metadata": {"name": manifest["metadata"]["name"], "namespace": "default"}, "spec": cluster(manifest)})
    return derived["available_node_types"], derived["head_node_type"]


def ray_start_resources(value: str) -> dict:
    """What `ray start` gets from rayStartParams.resources: KubeRay writes `--resources=<value>` into the
    container's bash command line, and `ray start` reads the argument as JSON."""
    args = shlex.split(f"--resources={value}")
    if len(args) != 1:
        raise ValueError(f"--resources={value} is {len(args)} words in the shell")
    return json.loads(args[0].removeprefix("--resources="))


def cluster_yaml_specs():
    from pipeline.spec import load_spec

    return {path: load_spec(REPO_ROOT / path) for path in CLUSTER_SPECS}


def stage_demands(spec) -> dict[str, dict]:
    """What one task or actor of each stage asks Ray for, as pipeline/compose.py and job.py ask."""
    from pipeline.compose import POSTPROCESS_CPUS, READ_CPUS, TOKENIZE_CPUS, WRITE_CPUS

    res = spec.resources
    cpu_stage = res.cpu_stage_resources
    return {
        "predict": {"GPU": res.gpus_per_actor, "CPU": res.cpus_per_actor or 1, **res.model_resources},
        "read": {"CPU": READ_CPUS, **cpu_stage},
        "tokenize": {"CPU": TOKENIZE_CPUS, **cpu_stage},
        "postprocess": {"CPU": POSTPROCESS_CPUS, **cpu_stage},
        "write": {"CPU": WRITE_CPUS, **cpu_stage},
    }


def fits(demand: dict, node: dict) -> bool:
    return all(node.get(k, 0) >= v for k, v in demand.items() if v > 0)


def placement_errors(node_types: dict, head: str, spec) -> list[str]:
    """Why the stages of `spec` would not run where they belong on a cluster of `node_types`: the model
    actors on GPU workers only, the CPU stages on CPU workers only, nothing on the head."""
    from pipeline.spec import pool_bounds

    res, errors = spec.resources, []
    asked = set(res.model_resources) | set(res.cpu_stage_resources)
    head_res = node_types[head]["resources"]
    if head_res.get("CPU", 0) != 0 or head_res.get("GPU", 0) != 0:
        errors.append(f"head {head}: CPU {head_res.get('CPU')}, GPU {head_res.get('GPU', 0)}; the driver only: 0 and 0")
    errors += [f"head {head}: has {k}, which the spec asks for" for k in sorted(asked & set(head_res))]
    workers = {n: t for n, t in node_types.items() if n != head}
    for key in ("model_resources", "cpu_stage_resources"):
        if not getattr(res, key):
            errors.append(f"resources.{key}: empty, so nothing keeps its stages to their nodes")
    for stage, demand in stage_demands(spec).items():
        where = [n for n, t in workers.items() if fits(demand, t["resources"])]
        if not where:
            errors.append(f"{stage}: no worker type has {demand}")
        gpu = stage == "predict"
        errors += [f"{stage}: may run on {n}, a {'CPU' if gpu else 'GPU'} node"
                   for n in where if (workers[n]["resources"].get("GPU", 0) > 0) != gpu]
        if gpu:
            room = sum(workers[n]["max_workers"] * min(math.floor(workers[n]["resources"].get(k, 0) / v)
                                                       for k, v in demand.items() if v > 0) for n in where)
            if pool_bounds(res.model_actors)[1] > room:
                errors.append(f"predict: {pool_bounds(res.model_actors)[1]} model actors, room for {room}")
    return errors


TARGETS = ["cluster.yaml", *sorted(MANIFESTS)]


def node_types_of(target: str) -> tuple[dict, str]:
    if target == "cluster.yaml":
        return node_types_of_cluster_yaml(cluster_config())
    return node_types_of_manifest(load(target))


@pytest.fixture(params=TARGETS)
def target(request, tmp_path):
    """(node types, head, {spec path: JobSpec}) of a deploy file: cluster.yaml with the cluster specs,
    a manifest with the spec its entrypoint runs (the spec file and its --set values)."""
    if request.param == "cluster.yaml":
        return (*node_types_of(request.param), cluster_yaml_specs())
    _, spec_path, _, spec, _ = run_entrypoint(request.param, tmp_path)
    return (*node_types_of(request.param), {spec_path: spec})


def test_cluster_specs_are_the_ones_that_join_a_cluster():
    from pipeline.spec import load_spec

    joining = set()
    for path in sorted((REPO_ROOT / "jobs").glob("*.yaml")):
        if (yaml.safe_load(path.read_text()).get("resources") or {}).get("ray_address"):
            joining.add(f"jobs/{path.name}")
    assert joining == set(CLUSTER_SPECS)
    assert all(load_spec(REPO_ROOT / p).resources.ray_address for p in CLUSTER_SPECS)


def test_stages_run_on_their_nodes(target):
    node_types, head, specs = target
    for path, spec in specs.items():
        assert placement_errors(node_types, head, spec) == [], path


def test_the_three_clusters_offer_the_same_custom_resources():
    # One vocabulary: a spec that runs on one of them runs on the others.
    offered = {}
    for name in TARGETS:
        types, head = node_types_of(name)
        offered[name] = {(k, t["resources"].get("GPU", 0) > 0) for n, t in types.items() if n != head
                         for k in t["resources"] if k not in RAY_RESOURCES}
    assert offered["cluster.yaml"] and len({frozenset(v) for v in offered.values()}) == 1, offered


def test_kuberay_resources_reach_ray_start_as_the_autoscaler_reads_them(name):
    # The autoscaler scales a group for what it reads in rayStartParams.resources; the pods' Ray must
    # start with the same, or a demand the autoscaler thought met would wait for ever.
    manifest = load(name)
    derived, _ = node_types_of_manifest(manifest)
    seen = 0
    for group, g in groups(manifest):
        custom = {k: v for k, v in derived["headgroup" if group == "head" else group]["resources"].items()
                  if k not in RAY_RESOURCES}
        value = g.get("rayStartParams", {}).get("resources")
        started = ray_start_resources(value) if value is not None else {}
        assert not set(started) & RAY_RESOURCES, f"{group}: CPU and GPU go in num-cpus / num-gpus"
        assert started == custom, group
        seen += bool(started)
    assert seen, "no group starts with custom resources"


def test_ray_start_resources_parses_as_ray_start_does():
    assert ray_start_resources('"{\\"accelerator_node\\": 1}"') == {"accelerator_node": 1}
    # Unquoted, the shell splits the JSON at its spaces, or eats its quotes.
    for value in ('{"accelerator_node": 1}', '{"accelerator_node":1}'):
        with pytest.raises(ValueError):
            ray_start_resources(value)


def break_placement(mutation: str, types: dict, head: str, spec):
    """Edits `types` in place, or returns an edited copy of `spec`."""
    res = spec.resources
    gpu_type = next(n for n, t in types.items() if n != head and t["resources"].get("GPU", 0) > 0)
    cpu_type = next(n for n, t in types.items() if n != head and t["resources"].get("GPU", 0) == 0)

    def spec_with(**resources):
        return spec.model_copy(update={"resources": res.model_copy(update=resources)})

    if mutation == "head-with-cpus":
        types[head]["resources"]["CPU"] = 4
    elif mutation == "head-with-the-gpu-resource":
        types[head]["resources"].update(res.model_resources)
    elif mutation == "gpu-node-without-its-resource":
        for k in res.model_resources:
            del types[gpu_type]["resources"][k]
    elif mutation == "cpu-node-without-its-resource":
        for k in res.cpu_stage_resources:
            del types[cpu_type]["resources"][k]
    elif mutation == "cpu-resource-on-the-gpu-node":
        types[gpu_type]["resources"].update({k: 100 for k in res.cpu_stage_resources})
    elif mutation == "spec-asks-for-more-than-a-node-has":
        return spec_with(model_resources={k: 2 for k in res.model_resources})
    elif mutation == "spec-misspells-the-resource":
        return spec_with(cpu_stage_resources={"cpu_nodes": 0.01})
    elif mutation == "spec-without-model-resources":
        return spec_with(model_resources={})
    elif mutation == "spec-without-cpu-stage-resources":
        return spec_with(cpu_stage_resources={})
    elif mutation == "pool-larger-than-the-gpu-nodes":
        return spec_with(model_actors=1000)
    else:
        raise AssertionError(mutation)
    return spec


@pytest.mark.parametrize("mutation", [
    "head-with-cpus", "head-with-the-gpu-resource", "gpu-node-without-its-resource", "cpu-node-without-its-resource",
    "cpu-resource-on-the-gpu-node", "spec-asks-for-more-than-a-node-has", "spec-misspells-the-resource",
    "spec-without-model-resources", "spec-without-cpu-stage-resources", "pool-larger-than-the-gpu-nodes"])
@pytest.mark.parametrize("target_id", TARGETS)
def test_placement_check_catches(target_id, mutation):
    from pipeline.spec import load_spec

    # (Whether the files as they are pass is test_stages_run_on_their_nodes' question: here, that the
    # edit adds an error.)
    types, head = node_types_of(target_id)
    spec = load_spec(REPO_ROOT / "jobs" / "ner_extraction.yaml")
    before = set(placement_errors(copy.deepcopy(types), head, spec))
    spec = break_placement(mutation, types, head, spec)
    assert set(placement_errors(types, head, spec)) - before, mutation


@pytest.mark.parametrize("mutation", ["head-num-cpus", "gpu-group-resources-dropped", "cpu-group-resources-typo"])
def test_placement_check_reads_the_manifest_as_ray_does(name, mutation):
    from pipeline.spec import load_spec

    spec = load_spec(REPO_ROOT / "jobs" / "ner_extraction.yaml")
    manifest = load(name)
    before = set(placement_errors(*node_types_of_manifest(manifest), spec))
    c = cluster(manifest)
    by_name = {g["groupName"]: g for g in c["workerGroupSpecs"]}
    if mutation == "head-num-cpus":
        c["headGroupSpec"]["rayStartParams"]["num-cpus"] = "1"
    elif mutation == "gpu-group-resources-dropped":
        by_name["gpu"]["rayStartParams"].pop("resources")
    else:
        by_name["cpu"]["rayStartParams"]["resources"] = '"{\\"cpu-node\\": 100}"'
    assert set(placement_errors(*node_types_of_manifest(manifest), spec)) - before
