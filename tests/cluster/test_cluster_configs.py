"""The files under cluster/ are valid for the tools that read them.

Launcher YAMLs go through what `ray up` runs before it touches a cloud: Ray's
``prepare_config`` (merge the provider's defaults, check the docker block, fill per-type
worker limits) and ``validate_config`` (JSON-schema check against Ray's own
``ray-schema.json`` plus its cross-field checks). The provider's bootstrap and resource
autodetection call cloud APIs, so they are left out; the node types state their resources.

The KubeRay manifest is checked three ways: its structure, a JSON schema of the RayJob
fields it uses (transcribed from KubeRay's ray.io/v1 API types; unknown fields are errors,
as under `kubectl apply`'s default strict field validation), and the Ray autoscaler's own
reading of the cluster spec, ``_derive_autoscaling_config_from_ray_cr``, which is what the
autoscaler inside the head pod runs on the RayCluster that KubeRay creates.

No network, no sleeping, no Ray cluster.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.kuberay.autoscaling_config import (
    _derive_autoscaling_config_from_ray_cr,
)
from ray.autoscaler._private.util import prepare_config, validate_config

from distforget.config import from_dict, small_clip_settings_note

CLUSTER_DIR = Path(__file__).resolve().parents[2] / "cluster"
LAUNCHER_FILES = ("aws-gpu.yaml", "gcp-gpu.yaml")
RAYJOB_FILE = CLUSTER_DIR / "kuberay-rayjob.yaml"
IMAGE = f"rayproject/ray:{ray.__version__}-py311-gpu"


# --- factories ---------------------------------------------------------------------------------

def load_launcher(name: str) -> dict[str, Any]:
    return yaml.safe_load((CLUSTER_DIR / name).read_text())


def ray_up_checks(raw: dict[str, Any]) -> dict[str, Any]:
    """The offline part of what `ray up` does with a config; raises on an invalid one."""
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    return config


def load_rayjob_docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(RAYJOB_FILE.read_text()) if d is not None]


def the(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} in {RAYJOB_FILE.name}, found {len(found)}"
    return found[0]


def gpu_worker_groups(job: dict[str, Any]) -> list[dict[str, Any]]:
    groups = job["spec"]["rayClusterSpec"].get("workerGroupSpecs", [])
    return [g for g in groups if "nvidia.com/gpu" in ray_container(g)["resources"]["limits"]]


def ray_container(group: dict[str, Any]) -> dict[str, Any]:
    # KubeRay treats the first container of a Ray pod as the Ray container.
    return group["template"]["spec"]["containers"][0]


def ray_cluster_cr(job: dict[str, Any]) -> dict[str, Any]:
    """The RayCluster that KubeRay creates from a RayJob's rayClusterSpec."""
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": job["metadata"]["name"], "namespace": "default"},
        "spec": copy.deepcopy(job["spec"]["rayClusterSpec"]),
    }


# --- the RayJob schema (the fields of KubeRay's ray.io/v1 types this project may use) -------

# Kubernetes resource.Quantity: an integer or a string such as "8", "500m", "32Gi".
_QUANTITY = {
    "anyOf": [
        {"type": "integer"},
        {"type": "string",
         "pattern": r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
                    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"},
    ]
}
_INT32 = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_POD_TEMPLATE = {
    # The pod spec itself is Kubernetes' schema; only what KubeRay reads from it is pinned.
    "type": "object",
    "required": ["spec"],
    "properties": {
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "required": ["containers"],
            "properties": {
                "containers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "image"],
                        "properties": {
                            "name": {"type": "string"},
                            "image": {"type": "string"},
                            "resources": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "limits": {"type": "object",
                                               "additionalProperties": _QUANTITY},
                                    "requests": {"type": "object",
                                                 "additionalProperties": _QUANTITY},
                                },
                            },
                        },
                    },
                },
                "volumes": {"type": "array"},
                "tolerations": {"type": "array"},
                "serviceAccountName": {"type": "string"},
            },
        },
    },
    "additionalProperties": False,
}
_HEAD_GROUP = {
    "type": "object",
    "required": ["template"],
    "additionalProperties": False,
    "properties": {
        "template": _POD_TEMPLATE,
        "headService": {"type": "object"},
        "enableIngress": {"type": "boolean"},
        "rayStartParams": _STRING_MAP,
        "serviceType": {"type": "string"},
        "resources": _STRING_MAP,
        "labels": _STRING_MAP,
    },
}
_WORKER_GROUP = {
    "type": "object",
    "required": ["groupName", "template"],
    "additionalProperties": False,
    "properties": {
        "suspend": {"type": "boolean"},
        "groupName": {"type": "string", "minLength": 1},
        "replicas": _INT32,
        "minReplicas": _INT32,
        "maxReplicas": _INT32,
        "idleTimeoutSeconds": _INT32,
        "rayStartParams": _STRING_MAP,
        "template": _POD_TEMPLATE,
        "scaleStrategy": {"type": "object"},
        "numOfHosts": _INT32,
        "resources": _STRING_MAP,
        "labels": _STRING_MAP,
    },
}
_RAY_CLUSTER_SPEC = {
    "type": "object",
    "required": ["headGroupSpec"],
    "additionalProperties": False,
    "properties": {
        "suspend": {"type": "boolean"},
        "managedBy": {"type": "string"},
        "autoscalerOptions": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "resources": {"type": "object"},
                "image": {"type": "string"},
                "imagePullPolicy": {"type": "string"},
                "securityContext": {"type": "object"},
                "idleTimeoutSeconds": _INT32,
                "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
                "version": {"enum": ["v1", "v2"]},
                "env": {"type": "array"},
                "envFrom": {"type": "array"},
                "volumeMounts": {"type": "array"},
            },
        },
        "authOptions": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"mode": {"enum": ["disabled", "token"]},
                           "secretName": {"type": "string"}},
        },
        "headServiceAnnotations": _STRING_MAP,
        "enableInTreeAutoscaling": {"type": "boolean"},
        "gcsFaultToleranceOptions": {"type": "object"},
        "headGroupSpec": _HEAD_GROUP,
        "rayVersion": {"type": "string"},
        "workerGroupSpecs": {"type": "array", "items": _WORKER_GROUP},
    },
}
RAYJOB_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayJob"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string",
                                    "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}},
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
                "backoffLimit": _INT32,
                "rayClusterSpec": _RAY_CLUSTER_SPEC,
                "submitterPodTemplate": {"type": "object"},
                "metadata": _STRING_MAP,
                "clusterSelector": _STRING_MAP,
                "submitterConfig": {"type": "object"},
                "managedBy": {"type": "string"},
                "deletionPolicy": {"type": "string"},
                "entrypoint": {"type": "string"},
                "runtimeEnvYAML": {"type": "string"},
                "jobId": {"type": "string"},
                "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode",
                                            "SidecarMode"]},
                "entrypointResources": {"type": "string"},
                "entrypointNumCpus": {"type": "number"},
                "entrypointNumGpus": {"type": "number"},
                "ttlSecondsAfterFinished": _INT32,
                "shutdownAfterJobFinishes": {"type": "boolean"},
                "suspend": {"type": "boolean"},
            },
        },
    },
}


# --- launcher YAMLs ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", LAUNCHER_FILES)
def test_launcher_config_passes_ray_validation(name):
    config = ray_up_checks(load_launcher(name))
    assert config["provider"]["type"] == name.split("-")[0]


@pytest.mark.parametrize("name", LAUNCHER_FILES)
def test_launcher_head_runs_no_training_and_workers_autoscale(name):
    config = ray_up_checks(load_launcher(name))
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0
    assert not head["resources"].get("GPU")

    gpu_types = {k: t for k, t in types.items() if t["resources"].get("GPU", 0) >= 1}
    assert gpu_types, "no node type offers a GPU"
    for t in gpu_types.values():
        assert t["min_workers"] == 0
        assert 0 < t["max_workers"] <= config["max_workers"]
    assert config["idle_timeout_minutes"] > 0


@pytest.mark.parametrize("name", LAUNCHER_FILES)
def test_launcher_installs_distforget_and_keeps_token_auth(name):
    config = ray_up_checks(load_launcher(name))
    # prepare_config prepends setup_commands to both head and worker setup commands.
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert any("distforget" in c and "pip install" in c for c in config[key]), key
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in config[key] if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start), key
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"


def test_local_autoscaling_config_matches_ray_schema_and_scales_a_cpu_worker_from_zero():
    # Only the schema check: `ray up`'s prepare_config fills defaults from the fake provider's
    # example.yaml, which Ray's wheel does not ship. tests/distributed/test_autoscaling.py
    # starts this file with `ray start --head --autoscaling-config`.
    config = load_launcher("local-autoscaling.yaml")
    validate_config(config)
    assert config["provider"]["type"] == "fake_multinode"
    assert config["provider"]["use_node_id_as_ip"] and config["provider"]["disable_node_updaters"]
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    worker = types["cpu-worker"]
    assert (worker["min_workers"], worker["max_workers"]) == (0, 2)
    assert worker["resources"]["CPU"] >= 1  # one trial at the default resources
    assert 0 < config["idle_timeout_minutes"] <= 1


@pytest.mark.parametrize("name", LAUNCHER_FILES)
def test_launcher_image_matches_installed_ray(name):
    # `ray up` and the job client expect the cluster to run the same Ray version.
    assert load_launcher(name)["docker"]["image"] == IMAGE


def test_gcp_gpu_worker_attaches_an_accelerator():
    config = ray_up_checks(load_launcher("gcp-gpu.yaml"))
    worker = next(t for t in config["available_node_types"].values()
                  if t["resources"].get("GPU"))
    accelerators = worker["node_config"]["guestAccelerators"]
    assert sum(a["acceleratorCount"] for a in accelerators) == worker["resources"]["GPU"]
    assert worker["node_config"]["scheduling"]["onHostMaintenance"] == "TERMINATE"


def _wrong_max_workers(c):
    c["max_workers"] = "eight"


def _unknown_top_level_key(c):
    c["max_worker"] = 4


def _node_type_without_resources(c):
    del c["available_node_types"]["worker_gpu"]["resources"]


def _unknown_node_type_key(c):
    c["available_node_types"]["worker_gpu"]["min_worker"] = 0


def _min_workers_above_max(c):
    c["available_node_types"]["worker_gpu"]["min_workers"] = c["max_workers"] + 1


def _head_type_missing(c):
    c["head_node_type"] = "no_such_type"


@pytest.mark.parametrize("name", LAUNCHER_FILES)
@pytest.mark.parametrize("breaks", [
    _wrong_max_workers, _unknown_top_level_key, _node_type_without_resources,
    _unknown_node_type_key, _min_workers_above_max, _head_type_missing,
])
def test_ray_validation_rejects_a_broken_launcher_config(name, breaks):
    raw = load_launcher(name)
    breaks(raw)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        ray_up_checks(raw)


# --- KubeRay RayJob ----------------------------------------------------------------------------

def test_rayjob_manifest_structure():
    job = the(load_rayjob_docs(), "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert spec["entrypoint"].split()[:3] == ["python", "-m", "distforget.search"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] >= 0

    cluster = spec["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["authOptions"]["mode"] == "token"
    head = cluster["headGroupSpec"]
    assert ray_container(head)["image"] == IMAGE
    assert head["rayStartParams"]["num-cpus"] == "0"

    groups = gpu_worker_groups(job)
    assert groups, "no worker group asks for nvidia.com/gpu"
    for g in groups:
        assert g["minReplicas"] == 0
        assert g["minReplicas"] <= g.get("replicas", 0) <= g["maxReplicas"]
        assert g["maxReplicas"] > 0
        c = ray_container(g)
        assert c["image"] == IMAGE
        assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1


def test_rayjob_matches_schema():
    jsonschema.validate(the(load_rayjob_docs(), "RayJob"), RAYJOB_SCHEMA)


def _typo_in_spec(job):
    job["spec"]["shutdownAfterJobFinish"] = job["spec"].pop("shutdownAfterJobFinishes")


def _replicas_as_string(job):
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplicas"] = "8"


def _ray_start_param_not_a_string(job):
    job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0


def _bad_gpu_quantity(job):
    group = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    ray_container(group)["resources"]["limits"]["nvidia.com/gpu"] = "one"


def _wrong_api_version(job):
    job["apiVersion"] = "ray.io/v1alpha1"


@pytest.mark.parametrize("breaks", [
    _typo_in_spec, _replicas_as_string, _ray_start_param_not_a_string, _bad_gpu_quantity,
    _wrong_api_version,
])
def test_schema_rejects_a_broken_rayjob(breaks):
    job = copy.deepcopy(the(load_rayjob_docs(), "RayJob"))
    breaks(job)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(job, RAYJOB_SCHEMA)


def test_ray_autoscaler_reads_the_rayjob_cluster():
    job = the(load_rayjob_docs(), "RayJob")
    autoscaling = _derive_autoscaling_config_from_ray_cr(ray_cluster_cr(job))
    types = autoscaling["available_node_types"]
    assert types["headgroup"]["resources"]["CPU"] == 0
    for g in gpu_worker_groups(job):
        t = types[g["groupName"]]
        assert t["resources"]["GPU"] >= 1
        assert (t["min_workers"], t["max_workers"]) == (g["minReplicas"], g["maxReplicas"])


def test_ray_autoscaler_rejects_a_group_without_cpus():
    job = copy.deepcopy(the(load_rayjob_docs(), "RayJob"))
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]
    del head["rayStartParams"]["num-cpus"]
    del ray_container(head)["resources"]
    with pytest.raises(ValueError, match="CPU"):
        _derive_autoscaling_config_from_ray_cr(ray_cluster_cr(job))


def test_rayjob_config_is_a_valid_distforget_config_that_fits_the_cluster():
    docs = load_rayjob_docs()
    job, config_map = the(docs, "RayJob"), the(docs, "ConfigMap")

    # The entrypoint's --config names a key of the ConfigMap mounted into the head pod,
    # where the driver runs.
    args = job["spec"]["entrypoint"].split()
    config_path = Path(args[args.index("--config") + 1])
    head_pod = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    volumes = {v["name"]: v for v in head_pod["volumes"]}
    mounts = [m for m in ray_container(job["spec"]["rayClusterSpec"]["headGroupSpec"])
              ["volumeMounts"] if Path(m["mountPath"]) == config_path.parent]
    assert mounts, f"nothing mounted at {config_path.parent} in the head pod"
    assert volumes[mounts[0]["name"]]["configMap"]["name"] == config_map["metadata"]["name"]
    text = config_map["data"][config_path.name]

    cfg = from_dict(yaml.safe_load(text))
    # A multi-node cluster needs storage every pod reaches.
    assert cfg.output.storage.split("://")[0] in {"s3", "gs", "gcs"}
    # open_clip's weights with settings for them, not the small CLIP's learning rates and space.
    assert cfg.model.pretrained == "openai" and small_clip_settings_note(cfg) is None

    # Every Ray Train worker of a trial fits in one GPU pod, so no trial waits forever,
    # and the concurrency is what the cluster holds at full scale.
    group = gpu_worker_groups(job)[0]
    pod = _derive_autoscaling_config_from_ray_cr(
        ray_cluster_cr(job))["available_node_types"][group["groupName"]]["resources"]
    r = cfg.resources
    assert r.gpus_per_worker <= pod["GPU"] and r.cpus_per_worker <= pod["CPU"]
    total_gpus = group["maxReplicas"] * pod["GPU"]
    assert cfg.search.max_concurrent_trials == math.floor(
        total_gpus / (r.workers * r.gpus_per_worker))


# --- cluster/README.md -------------------------------------------------------------------------

def test_readme_example_config_is_valid_and_uses_shared_storage():
    text = (CLUSTER_DIR / "README.md").read_text()
    blocks = [b.split("```")[0] for b in text.split("```yaml\n")[1:]]
    example = next(b for b in blocks if b.startswith("# my.yaml"))
    cfg = from_dict(yaml.safe_load(example))
    assert cfg.output.storage.startswith(("s3://", "gs://"))
    assert cfg.model.pretrained == "openai" and small_clip_settings_note(cfg) is None
    r = cfg.resources
    # The README's worked arithmetic: 8 one-GPU workers at full scale.
    assert cfg.search.max_concurrent_trials == 8 // (r.workers * int(r.gpus_per_worker))
