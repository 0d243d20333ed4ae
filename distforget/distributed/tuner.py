"""The search: build and run the Tuners, resume an interrupted search, then report and export.

Run folder (``<output.storage>/<output.name>``)::

    run.json            config, search space, identity, model, base metrics
    base.safetensors    the base model (so export needs no data and no network)
    optuna.journal      the Optuna study (open it with optuna-dashboard)
    results.parquet     one row per trial and per extra soup, appended as trials finish
    trials/<id>.json    each trial's own record, written before it reports
    stages/             the content-addressed stage cache
    tune-NNN/, baselines-NNN/, train/   Tune's experiment state and Ray Train's checkpoints
    pareto.parquet, pareto.csv, pareto.png, report.md, best/

Running the same command on the same folder resumes: trials whose record exists are kept (and
appended to results.parquet if the driver died before it could), the study is told about them,
trials that were cut off are marked failed in the study, and only the missing number of trials
runs. A folder that holds a different search is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import optuna
import ray
import torch
from ray import tune
from safetensors.torch import save as save_safetensors

from distforget import storage
from distforget.config import RunConfig
from distforget.data.sources import default_cache_dir
from distforget.distributed.cluster import check_storage, connect, max_concurrent
from distforget.distributed.train import prepare_on_cluster
from distforget.distributed.trainable import (ResultsWriter, SweepOptunaSearch, read_trial_record,
                                              reconcile_study, run_one_trial)
from distforget.errors import ConfigError
from distforget.export import export_point
from distforget.pareto import OBJECTIVES
from distforget.report import build_report
from distforget.results import append_results, read_results, rows_from_record
from distforget.search_space import SearchSpace, load_space
from distforget.study import DIRECTIONS, make_sampler

# Keys that may change between a search and its resumption.
RESUMABLE = {("search", "num_trials"), ("search", "max_concurrent_trials"), ("search", "pick"),
             ("resources",), ("output", "storage"), ("output", "shared")}


def identity_view(cfg: RunConfig) -> dict:
    data = cfg.to_dict()
    for path in RESUMABLE:
        node = data
        for part in path[:-1]:
            node = node[part]
        node.pop(path[-1], None)
    return data


def search_identity(cfg: RunConfig, space_text: str) -> str:
    payload = json.dumps({"config": identity_view(cfg), "space": space_text}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def run_folder(cfg: RunConfig) -> str:
    root = cfg.output.storage
    if not storage.is_remote(root):
        root = os.path.abspath(root)
    return storage.join(root, cfg.output.name)


def check_resumable(run: str, cfg: RunConfig, identity: str, space_text: str) -> dict | None:
    """The existing run.json when ``run`` holds this same search; an error for another one."""
    path = storage.join(run, "run.json")
    if not storage.exists(path):
        # `python -m distforget.unlearn` may have written its records in the same folder.
        if set(storage.list_names(run)) - {"unlearn.json", "unlearn"}:
            raise ConfigError(f"output folder {run!r} is not empty and holds no distforget "
                              "search: choose another output.name or output.storage")
        return None
    info = json.loads(storage.read_bytes(path))
    if info.get("identity") != identity:
        changed = _diff(info.get("identity_view", {}), identity_view(cfg))
        if info.get("space_text") != space_text:
            changed.append("search.space (its contents)")
        raise ConfigError(
            f"output folder {run!r} holds a different search's results (differs in: "
            f"{', '.join(changed) or 'config'}); use another output.name, or the original "
            "config to resume it")
    return info


class StudyStore:
    """The study's journal: in the run folder when that is a local path; for object storage a
    local copy under the cache folder, uploaded to the run folder after every trial."""

    def __init__(self, run: str):
        self.run = run
        self.remote = storage.join(run, "optuna.journal")
        if storage.is_remote(run):
            key = hashlib.sha256(run.encode()).hexdigest()[:16]
            self.local = default_cache_dir() / "studies" / f"{key}.journal"
            self.local.parent.mkdir(parents=True, exist_ok=True)
            if storage.exists(self.remote):
                self.local.write_bytes(storage.read_bytes(self.remote))
        else:
            self.local = Path(self.remote)
            self.local.parent.mkdir(parents=True, exist_ok=True)

    def storage(self) -> optuna.storages.BaseStorage:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(str(self.local)))

    def sync(self) -> None:
        if storage.is_remote(self.run) and self.local.exists():
            storage.write_bytes(self.remote, self.local.read_bytes())


def _attempt(run: str, prefix: str) -> str:
    n = sum(1 for name in storage.list_names(run) if name.startswith(prefix + "-"))
    return f"{prefix}-{n:03d}"


def recover_records(run: str, results) -> int:
    """Append trial records that were written but never reached results.parquet."""
    known = set(results["trial_id"]) if len(results) else set()
    rows = []
    for name in storage.list_names(storage.join(run, "trials")):
        if not name.endswith(".json"):
            continue
        tid = name[:-len(".json")]
        if tid not in known:
            rows += rows_from_record(read_trial_record(run, tid))
    if rows:
        append_results(storage.join(run, "results.parquet"), rows)
    return len(rows)


def write_run_info(run: str, cfg: RunConfig, identity: str, space: SearchSpace, space_text: str,
                   prepared) -> dict:
    info = {
        "identity": identity, "identity_view": identity_view(cfg), "space_text": space_text,
        "space_source": space.source, "config": cfg.to_dict(), "fingerprint": prepared.fingerprint,
        "model": dict(prepared.spec.__dict__), "base_metrics": prepared.base_metrics,
        "classes": list(prepared.classes), "prepared": prepared.info,
    }
    if not storage.exists(storage.join(run, "base.safetensors")):
        full = {k: torch.from_numpy(v.copy()) for k, v in prepared.base_state.items()}
        storage.write_bytes(storage.join(run, "base.safetensors"), save_safetensors(full))
    storage.write_bytes(storage.join(run, "run.json"),
                        json.dumps(info, indent=2, default=float).encode())
    return info


def _trainable(shared: dict, resources) -> Any:
    return tune.with_resources(tune.with_parameters(run_one_trial, shared=shared),
                               {"CPU": resources.trial_cpus})


def _tune_config(**kwargs) -> tune.TuneConfig:
    return tune.TuneConfig(trial_name_creator=lambda t: t.trial_id,
                           trial_dirname_creator=lambda t: t.trial_id, **kwargs)


def run_search(cfg: RunConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole search (see the module docstring); returns a summary."""
    space = load_space(cfg.search.space, cfg)
    space_text = Path(space.source).read_text()
    for b in cfg.search.baselines:
        if b not in ("ft", "ga", "rl", "neggrad", "salun"):
            raise ConfigError(f"search.baselines names {b!r}: expected ft, ga, rl, neggrad "
                              "or salun")
    run = run_folder(cfg)
    identity = search_identity(cfg, space_text)
    existing = check_resumable(run, cfg, identity, space_text)

    connect()
    check_storage(cfg.output.storage, cfg.output.shared, cfg.resources)
    log(f"distforget search {cfg.output.name}: {cfg.search.num_trials} trials "
        f"({cfg.search.sampler}), space {space.source}, run folder {run}")
    prepared_ref, prepared = prepare_on_cluster(cfg)
    if existing is not None and existing.get("fingerprint") != prepared.fingerprint:
        raise ConfigError(f"output folder {run!r} was searched on other inputs (the data or the "
                          "base weights changed); use another output.name")
    storage.makedirs(run)
    info = write_run_info(run, cfg, identity, space, space_text, prepared)
    log("base model: " + "  ".join(f"{k} {prepared.base_metrics[k]:.3f}" for k in OBJECTIVES))

    results_path = storage.join(run, "results.parquet")
    recovered = recover_records(run, read_results(results_path))
    if recovered:
        log(f"recovered {recovered} result rows written before an interruption")
    results = read_results(results_path)
    mc = max_concurrent(cfg.resources, ray.cluster_resources(), max(cfg.search.num_trials, 1),
                        cfg.search.max_concurrent_trials)
    shared = {"prepared": [prepared_ref], "config": cfg.to_dict(), "run": run}

    done_baselines = set(results.loc[results["source"] == "baseline", "method"])
    todo = [b for b in cfg.search.baselines if b not in done_baselines]
    if todo:
        log(f"baselines: {', '.join(todo)}")
        tuner = tune.Tuner(
            _trainable({**shared, "source": "baseline", "space": None}, cfg.resources),
            param_space={"method": tune.grid_search(todo)},
            tune_config=_tune_config(max_concurrent_trials=min(mc, len(todo))),
            run_config=tune.RunConfig(name=_attempt(run, "baselines"), storage_path=run,
                                      callbacks=[ResultsWriter(run, len(todo), 0)]))
        tuner.fit()

    study_store = StudyStore(run)
    study_storage = study_store.storage()
    finished = int((read_results(results_path)["source"] == "trial").sum())
    remaining = cfg.search.num_trials - finished
    if finished:
        study = optuna.create_study(storage=study_storage, study_name=cfg.output.name,
                                    directions=DIRECTIONS,
                                    load_if_exists=True)
        counts = reconcile_study(study, run)
        log(f"resuming: {finished} trials finished, {remaining} to run "
            f"(study: {counts['told']} recovered, {counts['failed']} marked failed)")
    if remaining > 0:
        searcher = SweepOptunaSearch(
            space=space.params, metric=list(OBJECTIVES), mode=list(OBJECTIVES.values()),
            sampler=make_sampler(cfg.search.sampler, cfg.search.seed,
                                 cfg.search.num_trials),
            study_name=cfg.output.name, storage=study_storage)
        tuner = tune.Tuner(
            _trainable({**shared, "source": "trial", "space": space, "sweep": space.sweep},
                       cfg.resources),
            tune_config=_tune_config(search_alg=searcher, num_samples=remaining,
                                     max_concurrent_trials=min(mc, remaining)),
            run_config=tune.RunConfig(
                name=_attempt(run, "tune"), storage_path=run,
                callbacks=[ResultsWriter(run, cfg.search.num_trials, finished, study_store)]))
        tuner.fit()
    study_store.sync()

    summary = build_report(run)
    if summary["chosen"] is not None:
        export_point(run, summary["chosen"], storage.join(run, "best"), summary["why"])
        log(f"best: {summary['chosen']['trial_id']} ({summary['why']}): forget_acc "
            f"{summary['chosen']['forget_acc']:.3f} retain_acc "
            f"{summary['chosen']['retain_acc']:.3f} zeroshot_acc "
            f"{summary['chosen']['zeroshot_acc']:.3f}; exported to {storage.join(run, 'best')}")
    log(f"front: {summary['front_size']} points, hypervolume {summary['hypervolume']:.3f}; "
        f"report: {storage.join(run, 'report.md')}")
    return {**summary, "run": run, "base_metrics": info["base_metrics"]}
