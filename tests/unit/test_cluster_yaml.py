"""cluster.yaml: valid for the Ray cluster launcher (the JSON schema Ray ships, and the checks `ray up`
runs on top of it), with a GPU worker type for the model actors and a CPU worker type, and consistent
with the GPU job spec."""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

jsonschema = pytest.importorskip("jsonschema")
ray = pytest.importorskip("ray")

CLUSTER_YAML = REPO_ROOT / "cluster.yaml"


@pytest.fixture(scope="module")
def schema() -> dict:
    # The schema `ray up` validates against, from the installed ray package.
    path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    return json.loads(path.read_text())


@pytest.fixture
def config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def gpu_types(config: dict) -> dict:
    return {name: t for name, t in config["available_node_types"].items() if t.get("resources", {}).get("GPU", 0) > 0}


def test_valid_against_rays_schema(config, schema):
    jsonschema.validate(config, schema)


def test_passes_ray_up_config_checks(config):
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
        pytest.param(lambda c: c["available_node_types"]["cpu.worker"].update(min_worker=1), id="misspelt-node-key"),
        pytest.param(lambda c: c["auth"].update(ssh_usr="ubuntu"), id="misspelt-auth-key"),
        pytest.param(lambda c: c.update(setup_commands="pip install ."), id="commands-not-a-list"),
        pytest.param(lambda c: c["docker"].update(imag="x"), id="misspelt-docker-key"),
        pytest.param(lambda c: c["docker"].update(run_options="--ulimit nofile=65536:65536"),
                     id="docker-run-options-not-a-list"),
    ],
)
def test_schema_rejects_broken_copies(config, schema, mutate):
    # The schema check is not vacuous: the same validation refuses these edits of the file.
    broken = copy.deepcopy(config)
    mutate(broken)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_head_type_must_exist(config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = copy.deepcopy(config)
    broken["head_node_type"] = "no.such.type"
    with pytest.raises(ValueError):
        validate_config(prepare_config(broken))


def test_node_types(config):
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert config["provider"]["type"] == "aws"
    assert config["provider"]["region"] and config["provider"]["availability_zone"]
    assert config["auth"]["ssh_user"] == "ubuntu"

    gpus = gpu_types(config)
    assert gpus, "a worker type with GPU resources for the model actors"
    for name, t in gpus.items():
        assert name != config["head_node_type"]
        assert t["node_config"]["InstanceType"].split(".")[0] in {"g4dn", "g5", "g6", "g6e", "p3", "p4d", "p5"}
        assert t["resources"]["CPU"] >= 1
        assert t.get("min_workers", 0) == 0 and t["max_workers"] >= 1

    cpu_workers = {n: t for n, t in types.items() if n not in gpus and n != config["head_node_type"]}
    assert cpu_workers, "a CPU worker type for reading, tokenizing and writing"
    for t in cpu_workers.values():
        assert t["resources"]["CPU"] >= 4 and t.get("min_workers", 0) == 0

    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0

    assert sum(t.get("max_workers", 0) for n, t in types.items() if n != config["head_node_type"]) <= config[
        "max_workers"
    ]


def test_installs_this_project_on_every_node(config):
    # file_mounts copies the working tree; setup_commands install it (editable) with the same Ray.
    mounts = config["file_mounts"]
    (remote,) = [r for r, local in mounts.items() if (REPO_ROOT / local).resolve() == REPO_ROOT]
    assert (REPO_ROOT / mounts[remote] / "pyproject.toml").exists()
    commands = "\n".join(config["setup_commands"])
    assert f"pip install -q -e {remote}" in commands or f"pip install -e {remote}" in commands
    assert config["head_start_ray_commands"] and config["worker_start_ray_commands"]
    assert any("--head" in c for c in config["head_start_ray_commands"])
    assert any("$RAY_HEAD_IP" in c for c in config["worker_start_ray_commands"])


def test_cluster_runs_the_installed_ray_version(config):
    # A driver and a cluster on different Ray versions cannot talk; the pin must follow upgrades.
    pins = re.findall(r"ray\[[^\]]*\]==([0-9][^\"' ]*)", "\n".join(config["setup_commands"]))
    assert pins == [ray.__version__]


def test_gpu_job_fits_the_cluster(config):
    from pipeline.spec import load_spec, pool_bounds

    spec = load_spec(REPO_ROOT / "jobs" / "ner_extraction.yaml")
    res = spec.resources
    (gpu_type,) = gpu_types(config).values()
    per_node = gpu_type["resources"]
    # One model actor's CPUs and GPUs fit on one GPU node, and the pool fits the GPU nodes at most.
    assert res.gpus_per_actor <= per_node["GPU"] and res.cpus_per_actor <= per_node["CPU"]
    actors_per_node = min(per_node["GPU"] // res.gpus_per_actor, per_node["CPU"] // res.cpus_per_actor)
    assert pool_bounds(res.model_actors)[1] <= gpu_type["max_workers"] * actors_per_node


def test_nodes_run_the_projects_image(config):
    # The image the Dockerfile builds (its "# image:" line), the one deploy/kuberay/ runs too.
    (image,) = re.findall(r"^# image: (\S+)$", (REPO_ROOT / "Dockerfile").read_text(), re.M)
    docker = config["docker"]
    assert docker["image"] == image
    assert not {"head_image", "worker_image"} & set(docker), "one image for every node"
    # Its tag carries the Ray it was built on: the Ray pinned in setup_commands and installed here.
    assert f"-ray{ray.__version__}-" in image
