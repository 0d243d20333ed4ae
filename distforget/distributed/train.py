"""Stages as Ray Train jobs, and evaluation and preparation as Ray tasks.

A trial's stages (forget then remind, or a baseline) run in a ``TorchTrainer``:
data-parallel across the trial's workers (gloo on CPUs, NCCL on GPUs), every worker running the
same core stage code on its shard of each global batch. The stages a trial has to train run
one after the other on the same worker group, so workers start (and import torch and
open_clip) once per trial rather than once per stage: a TorchTrainer start costs about 9 s on
a 2-core machine, more than the embedded default's stages themselves. Each stage still has its
own checkpoints, its own entry in the stage cache, and its own metrics.

Rank 0 reports a checkpoint after every epoch, so a worker that dies is replaced and the
running stage resumes from its last epoch (``FailureConfig``); stages already in the cache are
not run again. An error raised by the stage code itself is not a lost worker, and a restart
would only raise it again: the rank records it (``<name>.stage-error.json`` beside the Train
run) and the launch raises ``StageFailed`` at once (see ``_stage_error``). The prepared inputs
travel as one object in Ray's object store, read without copies by every process on a node.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Sequence

import ray
import ray.train
import torch
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from distforget import storage
from distforget.config import ResourcesConfig, RunConfig as DistforgetConfig, from_dict
from distforget.errors import DistforgetError
from distforget.prepare import Prepared, prepare
from distforget.threads import set_torch_threads
from distforget.training import Parallel, StageHooks, StageOutput
from distforget.trial import (SNAPSHOT, UPSTREAM, Evaluate, Launch, Recipe, StageCache,
                              StageTask, evaluate_recipes, run_stage)

STAGE_ERROR = "stage-error.json"


class StageFailed(RuntimeError):
    """A stage's own code raised: the trial fails with that error, without restarts."""


def epoch_metrics(stage: str, epoch: int, metrics: dict) -> dict:
    """A stage's metrics after an epoch as one report: numbers under ``<stage>/<name>`` (so
    a tracker keeps forget's and remind's apart), with the stage and its epoch."""
    return {**{f"{stage}/{k}": v for k, v in metrics.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)},
            f"{stage}/epoch": epoch, "stage": stage}


def _own_error(exc: Exception, world_size: int) -> bool:
    """Whether ``exc`` is the stage code's own error rather than a consequence of a lost worker.
    On one worker every error is. In a group, a rank whose peer died fails in a collective with
    a RuntimeError (gloo, NCCL), so RuntimeErrors keep Ray Train's restarts there."""
    return world_size == 1 or not isinstance(exc, RuntimeError)


def _stages_worker(config: dict) -> None:
    """One rank of a trial's stages (runs inside a Ray Train worker)."""
    cfg = from_dict(config["cfg"])
    if not cfg.output.verbose:
        # Ray Train logs every report ("Reporting training result ...") through a logger named
        # by its file, outside ``ray.train``, which LoggingConfig's level does not reach.
        logging.getLogger().setLevel(logging.WARNING)
    set_torch_threads(cfg.resources.cpus_per_worker)
    prepared: Prepared = ray.get(config["prepared"][0])
    cache = StageCache(config["cache_root"])
    device = ray.train.torch.get_device()
    parallel = Parallel.current()
    error_path = config["error_path"]
    if storage.exists(error_path):
        return  # restarted after a rank's own error: nothing to run (the launch raises it)

    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = torch.load(Path(folder) / SNAPSHOT, weights_only=True)

    for task in (StageTask(**t) for t in config["tasks"]):
        # After a restart, stages that finished are in the cache; every rank sees the same.
        if cache.has(task.stage, task.key):
            continue

        def on_epoch(epoch: int, metrics: dict, snapshot, stage=task.stage) -> None:
            metrics = epoch_metrics(stage, epoch, metrics)
            if parallel.is_main:
                with tempfile.TemporaryDirectory() as folder:
                    torch.save({**snapshot(), "stage_key": task.key}, Path(folder) / SNAPSHOT)
                    ray.train.report(metrics,
                                     checkpoint=ray.train.Checkpoint.from_directory(folder))
            else:
                ray.train.report(metrics)

        upstream = (cache.get(UPSTREAM[task.stage], task.upstream) if task.upstream else None)
        own = resume if resume is not None and resume.get("stage_key") == task.key else None
        try:
            output = run_stage(prepared, cfg, task.stage, upstream, device=device,
                               parallel=parallel, hooks=StageHooks(on_epoch=on_epoch,
                                                                   resume=own))
        except Exception as exc:
            if not _own_error(exc, parallel.world_size):
                raise
            storage.write_bytes(error_path, json.dumps(
                {"stage": task.stage, "rank": parallel.rank,
                 "error": f"{type(exc).__name__}: {exc}"}).encode())
            if parallel.world_size > 1:
                # Ray Train then stops the whole group (no rank is left waiting in a
                # collective); the restarted group finds the record and ends at once.
                raise
            return
        if parallel.is_main:
            cache.put(task.stage, task.key, output)
        parallel.barrier()


def scaling_config(resources: ResourcesConfig) -> ScalingConfig:
    per_worker = {"CPU": resources.cpus_per_worker}
    if resources.gpus_per_worker:
        per_worker["GPU"] = resources.gpus_per_worker
    return ScalingConfig(num_workers=resources.workers,
                         use_gpu=resources.gpus_per_worker > 0,
                         resources_per_worker=per_worker)


def ray_launcher(prepared_ref: ray.ObjectRef, cache: StageCache, resources: ResourcesConfig,
                 storage_path: str, run_name: str) -> Launch:
    """Launch a trial's stages as one ``TorchTrainer`` named ``<run_name>-<stages>``."""
    def launch(cfg: DistforgetConfig, tasks: Sequence[StageTask]) -> dict[str, StageOutput]:
        name = f"{run_name}-{'-'.join(t.stage for t in tasks)}"
        error_path = storage.join(storage_path, f"{name}.{STAGE_ERROR}")
        if storage.exists(error_path):  # left by an interrupted earlier attempt
            storage.remove_file(error_path)
        trainer = TorchTrainer(
            _stages_worker,
            # The ref is wrapped in a list so Ray passes it through instead of resolving it.
            train_loop_config={"prepared": [prepared_ref], "cfg": cfg.to_dict(),
                               "tasks": [t.__dict__ for t in tasks], "cache_root": cache.root,
                               "error_path": error_path},
            scaling_config=scaling_config(resources),
            run_config=RunConfig(
                name=name, storage_path=storage_path,
                failure_config=FailureConfig(max_failures=resources.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=1),
                # Every epoch's report on to the Tune trial, for the tracking callbacks.
                callbacks=[TuneReportCallback()] if cfg.output.callbacks else None,
                logging_config=LoggingConfig(log_level="INFO" if cfg.output.verbose
                                             else "WARNING")))
        try:
            trainer.fit()
        except Exception:
            if not storage.exists(error_path):
                raise
        _stage_error(error_path, storage.join(storage_path, name))
        out = {}
        for t in tasks:
            out[t.key] = cache.get(t.stage, t.key)
            if out[t.key] is None:
                raise RuntimeError(f"stage {t.stage} finished without writing its output "
                                   f"({t.key[:12]})")
        # Every stage is in the stage cache now: its per-epoch Ray Train checkpoints (a whole
        # model each) are no longer needed to resume anything.
        storage.remove_tree(storage.join(storage_path, name))
        return out
    return launch


def _stage_error(error_path: str, run_dir: str) -> None:
    """Raise ``StageFailed`` with the error a rank recorded, if one did (after removing the
    record and the launch's checkpoints)."""
    if not storage.exists(error_path):
        return
    failure = json.loads(storage.read_bytes(error_path))
    storage.remove_file(error_path)
    storage.remove_tree(run_dir)
    raise StageFailed(f"stage {failure['stage']} raised {failure['error']}")


@ray.remote
def _evaluate_task(prepared: Prepared, cache_root: str, recipes: list[dict], which: str,
                   precision: str) -> list[dict]:
    set_torch_threads(ray.get_runtime_context().get_assigned_resources().get("CPU"))
    device = actor_device()
    return evaluate_recipes(prepared, StageCache(cache_root),
                            [Recipe.from_dict(r) for r in recipes], which, device, precision)


def ray_evaluator(prepared_ref: ray.ObjectRef, cache: StageCache, resources: ResourcesConfig,
                  precision: str) -> Evaluate:
    """Evaluate soups as a Ray task with one worker's resources (evaluations only)."""
    # Scheduled outside the trial's placement group, which holds only the trial's own process.
    task = _evaluate_task.options(num_cpus=resources.cpus_per_worker,
                                  num_gpus=resources.gpus_per_worker,
                                  scheduling_strategy=PlacementGroupSchedulingStrategy(
                                      placement_group=None))

    def evaluate(recipes: Sequence[Recipe], which: str) -> list[dict]:
        return ray.get(task.remote(prepared_ref, cache.root, [r.to_dict() for r in recipes],
                                   which, precision))
    return evaluate


@ray.remote
def _prepare_task(cfg: dict) -> Prepared:
    set_torch_threads(from_dict(cfg).resources.cpus_per_worker)
    device = actor_device()
    return prepare(from_dict(cfg), device)


def actor_device() -> torch.device:
    """The device of a Ray task or actor: its GPU when Ray gave it one."""
    return torch.device("cuda" if ray.get_gpu_ids() else "cpu")


def driver_device(resources: ResourcesConfig) -> torch.device:
    """The device a worker would get, for work done in the search's own process."""
    return torch.device("cuda" if resources.gpus_per_worker > 0 and torch.cuda.is_available()
                        else "cpu")


def prepare_on_cluster(cfg: DistforgetConfig, here: bool = False
                       ) -> tuple[ray.ObjectRef, Prepared]:
    """Run ``prepare`` once, in this process (``here``: see ``cluster.driver_works``) or as a
    task with one worker's resources; its result is put in the object store for every trial.
    Input errors raised in a task come back as themselves.

    A task's result is put into the object store again from the driver, so that its primary
    copy lives on the driver's node (the head) rather than on the worker node that ran the
    task: when that node is lost (a preempted or scaled-down worker), trials still read their
    inputs instead of waiting for Ray to run ``prepare`` again on CPUs the trials hold."""
    r = cfg.resources
    if here:
        set_torch_threads(r.cpus_per_worker)
        prepared = prepare(cfg, driver_device(r))
        return ray.put(prepared), prepared
    ref = _prepare_task.options(num_cpus=r.cpus_per_worker,
                                num_gpus=r.gpus_per_worker).remote(cfg.to_dict())
    try:
        prepared = ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, DistforgetError):
            raise exc.cause from None
        raise
    own = ray.put(prepared)
    del ref, prepared  # frees the task's copies; the driver reads its own
    return own, ray.get(own)
