"""Joining Ray, checking that storage suits the cluster, and sizing concurrency."""

from __future__ import annotations

import math
import os

import ray

from distforget import storage
from distforget.config import ResourcesConfig
from distforget.errors import ConfigError

# Ray Train's controller polls its workers every 2 s by default; on short stages (the embedded
# default) that poll is most of a stage's overhead.
TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}


def connect() -> None:
    """Join the cluster in ``RAY_ADDRESS`` (as under ``ray job submit``), or start a local one."""
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        keep_train_coordinator_here()
    else:
        for k, v in TRAIN_ENV.items():
            os.environ.setdefault(k, v)
        ray.init(runtime_env={"env_vars": {k: os.environ[k] for k in TRAIN_ENV}})


def keep_train_coordinator_here() -> None:
    """Start Ray Train's autoscaling coordinator on this (the driver's) node, if it is not running.

    Ray Train 2.60 starts a detached actor (``AutoscalingCoordinator``, 0 CPUs, restarted
    forever) on the node of the first ``TorchTrainer`` that asks for workers. On an autoscaling
    cluster that is a worker node, which then never counts as idle and is never removed, long
    after the search (tests/distributed/test_autoscaling.py saw it). Started first from the
    driver, it lives on the driver's node (the head under ``ray job submit``). Ray's own
    function does it; on a Ray without it there is nothing to do."""
    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator)
    except ImportError:
        return
    get_or_create_autoscaling_coordinator()


def alive_nodes(nodes: list[dict] | None = None) -> list[dict]:
    nodes = ray.nodes() if nodes is None else nodes
    return [n for n in nodes if n.get("Alive")]


def in_actor(resources: ResourcesConfig) -> bool:
    """Whether a trial runs its stages and evaluations in its own Tune actor (one worker: a
    ``TorchTrainer`` would add a controller and a worker process, about 9 s per trial on 2
    cores, for no parallelism) rather than as a Ray Train worker group (several workers)."""
    return resources.workers == 1


def trial_resources(resources: ResourcesConfig) -> dict[str, float]:
    """What a trial's Tune actor asks for: everything the trial uses when it runs in the actor,
    else only its own process (the worker group and evaluation tasks ask for theirs)."""
    if in_actor(resources):
        return per_trial(resources)
    return {"CPU": resources.trial_cpus}


def per_trial(resources: ResourcesConfig) -> dict[str, float]:
    """What one trial holds while a stage runs: its own process plus the stage's workers."""
    need = {"CPU": resources.trial_cpus + resources.workers * resources.cpus_per_worker}
    if resources.gpus_per_worker:
        need["GPU"] = resources.workers * resources.gpus_per_worker
    return need


def fits_on(node_resources: dict[str, float], resources: ResourcesConfig) -> bool:
    """Whether one Train worker of a trial fits on a node with these resources."""
    return (node_resources.get("CPU", 0) >= resources.cpus_per_worker
            and node_resources.get("GPU", 0) >= resources.gpus_per_worker)


def driver_works(resources: ResourcesConfig, nodes: list[dict] | None = None) -> bool:
    """Whether the search's own process may do the one-off work a worker would do (prepare the
    shared inputs, measure the chosen points on test): the cluster is this one node and it has
    room for a worker, so a task would run on this machine anyway, only in a process that has
    to start and import torch first (seconds on a small machine)."""
    live = alive_nodes(nodes)
    if len(live) != 1:
        return False
    here = ray.get_runtime_context().get_node_id() if nodes is None else live[0].get("NodeID")
    return live[0].get("NodeID") == here and fits_on(live[0].get("Resources", {}), resources)


def check_storage(storage_uri: str, shared: bool, resources: ResourcesConfig,
                  nodes: list[dict] | None = None) -> None:
    """Refuse a local output path when stage workers can run on other nodes than this one."""
    if storage.is_remote(storage_uri) or shared:
        return
    live = alive_nodes(nodes)
    here = ray.get_runtime_context().get_node_id() if nodes is None else None
    local = [n for n in live if here is None or n.get("NodeID") == here] or live[:1]
    workers_elsewhere = len(live) > 1 or not any(fits_on(n.get("Resources", {}), resources)
                                                 for n in local)
    if workers_elsewhere:
        raise ConfigError(
            f"output.storage {storage_uri!r} is a local path, but this Ray cluster runs stage "
            f"workers on other nodes ({len(live)} nodes, or none here with room for a worker): "
            "use storage that every node reaches (s3://..., gs://...), or set "
            "output.shared: true if the path is a shared mount (NFS) on every node")


def max_concurrent(resources: ResourcesConfig, total: dict[str, float], num_trials: int,
                   configured: int | None) -> int:
    """Trials that can run at once: the configured value, else what the cluster's current
    resources hold (at least 1, at most the number of trials)."""
    if configured is not None:
        return configured
    need = per_trial(resources)
    fit = min(math.floor(total.get(k, 0.0) / v + 1e-9) for k, v in need.items() if v > 0)
    return max(1, min(num_trials, fit))
