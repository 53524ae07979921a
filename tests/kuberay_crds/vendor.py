"""Writes the KubeRay CRD schemas that tests/unit/test_deploy.py validates the manifests in
deploy/kuberay/ against (see README.md in this folder):

    python tests/kuberay_crds/vendor.py <kuberay>/ray-operator/config/crd/bases --commit <sha> --release <tag>

For each CRD (ray.io_raycronjobs.yaml, ray.io_rayjobs.yaml) it takes the served version's
`openAPIV3Schema` and prunes it to KEEP: the properties KEEP names are kept whole (True) or pruned
further (a dict), every other property is cut and its name listed in `x-pruned-properties` of its
parent, so the test can tell "not in KubeRay's schema" from "in it, but not vendored". Everything else
of a kept node (type, format, enum, default, required, x-kubernetes-*) is copied as it is.

When ray.io_rayjobs.yaml is not in the folder, the RayJob schema is derived from the RayCronJob CRD:
RayCronJob's `spec.jobTemplate` is KubeRay's RayJobSpec, the same Go type as RayJob's `spec`, generated
by the same controller-gen run. No third-party imports beyond PyYAML.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPOSITORY = "ray-project/kuberay"
CRD_DIR_IN_REPO = "ray-operator/config/crd/bases"

ALL = True
STRING_MAP = ALL

# core/v1 Container: what a Ray container sets; probes, lifecycle and securityContext are cut.
CONTAINER = {
    "args": ALL, "command": ALL, "env": ALL, "envFrom": ALL, "image": ALL, "imagePullPolicy": ALL,
    "name": ALL, "ports": ALL, "resizePolicy": ALL, "resources": ALL, "restartPolicy": ALL,
    "restartPolicyRules": ALL, "stdin": ALL, "stdinOnce": ALL, "terminationMessagePath": ALL,
    "terminationMessagePolicy": ALL, "tty": ALL, "volumeDevices": ALL, "volumeMounts": ALL,
    "workingDir": ALL,
}

# core/v1 PodTemplateSpec: affinity, volumes, init/ephemeral containers, the pod securityContext and
# topology spread constraints are cut (each is thousands of lines, repeated in every pod template).
POD_TEMPLATE = {
    "metadata": ALL,
    "spec": {
        "activeDeadlineSeconds": ALL, "automountServiceAccountToken": ALL, "containers": CONTAINER,
        "dnsConfig": ALL, "dnsPolicy": ALL, "enableServiceLinks": ALL, "hostAliases": ALL, "hostIPC": ALL,
        "hostNetwork": ALL, "hostPID": ALL, "hostUsers": ALL, "hostname": ALL, "hostnameOverride": ALL,
        "imagePullSecrets": ALL, "nodeName": ALL, "nodeSelector": ALL, "os": ALL, "overhead": ALL,
        "preemptionPolicy": ALL, "priority": ALL, "priorityClassName": ALL, "readinessGates": ALL,
        "resourceClaims": ALL, "resources": ALL, "restartPolicy": ALL, "runtimeClassName": ALL,
        "schedulerName": ALL, "schedulingGates": ALL, "serviceAccount": ALL, "serviceAccountName": ALL,
        "setHostnameAsFQDN": ALL, "shareProcessNamespace": ALL, "subdomain": ALL,
        "terminationGracePeriodSeconds": ALL, "tolerations": ALL,
    },
}

RAY_JOB_SPEC = {
    "activeDeadlineSeconds": ALL, "backoffLimit": ALL, "clusterSelector": ALL, "deletionStrategy": ALL,
    "entrypoint": ALL, "entrypointNumCpus": ALL, "entrypointNumGpus": ALL, "entrypointResources": ALL,
    "jobId": ALL, "managedBy": ALL, "metadata": ALL,
    "rayClusterSpec": {
        "authOptions": ALL,
        "autoscalerOptions": {
            "idleTimeoutSeconds": ALL, "image": ALL, "imagePullPolicy": ALL, "resources": ALL,
            "upscalingMode": ALL, "version": ALL,
        },
        "enableInTreeAutoscaling": ALL,
        "headGroupSpec": {
            "enableIngress": ALL, "labels": ALL, "rayStartParams": ALL, "resources": ALL,
            "serviceType": ALL, "template": POD_TEMPLATE,
        },
        "headServiceAnnotations": ALL, "managedBy": ALL, "rayVersion": ALL, "suspend": ALL,
        "upgradeStrategy": ALL,
        "workerGroupSpecs": {
            "groupName": ALL, "idleTimeoutSeconds": ALL, "labels": ALL, "maxReplicas": ALL,
            "minReplicas": ALL, "numOfHosts": ALL, "rayStartParams": ALL, "replicas": ALL, "resources": ALL,
            "scaleStrategy": ALL, "suspend": ALL, "template": POD_TEMPLATE,
        },
    },
    "runtimeEnvYAML": ALL, "shutdownAfterJobFinishes": ALL, "submissionMode": ALL, "submitterConfig": ALL,
    "submitterPodTemplate": POD_TEMPLATE, "suspend": ALL, "ttlSecondsAfterFinished": ALL,
}

KEEP = {
    "RayCronJob": {
        "apiVersion": ALL, "kind": ALL, "metadata": ALL,
        "spec": {"jobTemplate": RAY_JOB_SPEC, "schedule": ALL, "suspend": ALL},
        "status": ALL,
    },
    # RayJob's status is cut: a manifest never sets it.
    "RayJob": {"apiVersion": ALL, "kind": ALL, "metadata": ALL, "spec": RAY_JOB_SPEC},
}

FILES = {"RayCronJob": "ray.io_raycronjobs.yaml", "RayJob": "ray.io_rayjobs.yaml"}


def prune(node: dict, keep, where: str = "") -> dict:
    if keep is ALL:
        return copy.deepcopy(node)
    if node.get("type") == "array":
        out = {k: copy.deepcopy(v) for k, v in node.items() if k != "items"}
        out["items"] = prune(node["items"], keep, where + "[]")
        return out
    props = node.get("properties", {})
    missing = sorted(set(keep) - set(props))
    if missing:
        raise SystemExit(f"{where or '<root>'}: KEEP names {missing}, which the CRD does not have")
    required_cut = sorted(set(node.get("required", [])) - set(keep))
    if required_cut:
        raise SystemExit(f"{where or '<root>'}: required {required_cut} would be cut; keep them")
    out = {k: copy.deepcopy(v) for k, v in node.items() if k != "properties"}
    out["properties"] = {k: prune(props[k], keep[k], f"{where}.{k}") for k in sorted(keep)}
    cut = sorted(set(props) - set(keep))
    if cut:
        out["x-pruned-properties"] = cut
    return out


def served_schema(crd: dict) -> tuple[str, dict]:
    (version,) = [v for v in crd["spec"]["versions"] if v.get("served") and v.get("storage")]
    return version["name"], version["schema"]["openAPIV3Schema"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("crd_dir", type=Path, help=f"a KubeRay checkout's {CRD_DIR_IN_REPO}")
    ap.add_argument("--commit", required=True, help="the KubeRay commit the CRDs come from")
    ap.add_argument("--release", required=True, help="the KubeRay release that commit stands for")
    ap.add_argument("--note", default="", help="how the files were obtained, recorded in the output")
    args = ap.parse_args()

    crds = {}
    for kind, name in FILES.items():
        path = args.crd_dir / name
        if path.exists():
            crds[kind] = yaml.safe_load(path.read_text())
    if "RayCronJob" not in crds:
        raise SystemExit(f"{args.crd_dir / FILES['RayCronJob']}: not found")

    for kind in FILES:
        source = {
            "repository": REPOSITORY, "release": args.release, "commit": args.commit,
            "path": f"{CRD_DIR_IN_REPO}/{FILES[kind]}",
            "controller-gen": crds.get(kind, crds["RayCronJob"])["metadata"]["annotations"][
                "controller-gen.kubebuilder.io/version"],
        }
        if kind in crds:
            version, schema = served_schema(crds[kind])
        else:
            version, cron = served_schema(crds["RayCronJob"])
            job_spec = cron["properties"]["spec"]["properties"]["jobTemplate"]
            schema = {"properties": {**{k: cron["properties"][k] for k in ("apiVersion", "kind", "metadata")},
                                     "spec": job_spec}, "type": "object"}
            source["path"] = f"{CRD_DIR_IN_REPO}/{FILES['RayCronJob']}"
            source["derived"] = ("spec is RayCronJob's spec.jobTemplate (KubeRay's RayJobSpec, the type of "
                                 "RayJob's spec); status is not part of this copy")
        if args.note:
            source["note"] = args.note
        out = {
            "kind": kind, "group": "ray.io", "version": version, "source": source,
            "pruned": "properties listed in x-pruned-properties exist in the CRD but were not copied",
            "openAPIV3Schema": prune(schema, KEEP[kind]),
        }
        target = HERE / f"{kind.lower()}.{version}.schema.json"
        target.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
        print(f"{target.relative_to(HERE.parents[1])}: {target.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
