"""The search: build and run the Tuners (baselines, then the Optuna search), then report and
export. The run folder's files, its identity check and resumption live in
``distforget.run_folder``; this module only builds and drives Ray Tune."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import optuna
import ray
from ray import tune

from distforget.config import RunConfig
from distforget.distributed.cluster import check_storage, connect, max_concurrent
from distforget.distributed.train import prepare_on_cluster, ray_evaluator
from distforget.distributed.trainable import ResultsWriter, SweepOptunaSearch, run_one_trial
from distforget.errors import ConfigError
from distforget.confirm import failed_search, finish
from distforget.export import export_point
from distforget.objectives import (DIRECTIONS, OBJECTIVES, as_test, nothing_to_forget,
                                   parse_target)
from distforget.report import build_report
from distforget.run_folder import RunFolder, StudyStore, reconcile_study, run_info, search_identity
from distforget.search_space import SearchSpace, load_space
from distforget.study import make_sampler
from distforget.trial import StageCache


def _trainable(shared: dict, resources) -> Any:
    return tune.with_resources(tune.with_parameters(run_one_trial, shared=shared),
                               {"CPU": resources.trial_cpus})


def _tune_config(**kwargs) -> tune.TuneConfig:
    return tune.TuneConfig(trial_name_creator=lambda t: t.trial_id,
                           trial_dirname_creator=lambda t: t.trial_id, **kwargs)


def _run_config(name: str, folder: RunFolder, resources, callbacks: list) -> tune.RunConfig:
    """A Tuner's run config. A trial whose process dies (its node lost, say) is started again,
    up to ``resources.max_failures`` times, under the same trial id: the stages it finished are
    in the stage cache, and a stage it was running resumes from its last checkpoint."""
    return tune.RunConfig(name=name, storage_path=folder.root, callbacks=callbacks,
                          failure_config=tune.FailureConfig(
                              max_failures=resources.max_failures))


def run_baselines(cfg: RunConfig, folder: RunFolder, space: SearchSpace, shared: dict, mc: int,
                  log: Callable[[str], None]) -> None:
    """Each baseline in ``search.baselines``: once at its defaults (``search.baseline_trials``
    1), or searched over its own space with the method's soups, that many trials each."""
    results = folder.read_results()
    done = results[(results["source"] == "baseline") & results["parent_id"].isna()]
    if cfg.search.baseline_trials > 1:
        for b in cfg.search.baselines:
            b_space = load_space(f"baseline-{b}", cfg).with_soups_of(space)
            run_study(cfg, folder, b_space, shared, mc, log, source="baseline",
                      num_trials=cfg.search.baseline_trials, study_name=f"{cfg.output.name}-{b}",
                      finished=int((done["method"] == b).sum()))
        return
    todo = [b for b in cfg.search.baselines if b not in set(done["method"])]
    if not todo:
        return
    log(f"baselines (each once, at its defaults): {', '.join(todo)}")
    tune.Tuner(
        _trainable({**shared, "source": "baseline", "space": None}, cfg.resources),
        param_space={"method": tune.grid_search(todo)},
        tune_config=_tune_config(max_concurrent_trials=min(mc, len(todo))),
        run_config=_run_config(folder.attempt("baselines"), folder, cfg.resources,
                               [ResultsWriter(folder, len(todo), 0)])).fit()


def run_study(cfg: RunConfig, folder: RunFolder, space: SearchSpace, shared: dict, mc: int,
              log: Callable[[str], None], *, source: str, num_trials: int, study_name: str,
              finished: int) -> None:
    """An Optuna study's missing trials; a resumed study is reconciled with the records."""
    study_store = StudyStore(folder)
    study_storage = study_store.storage()
    target = parse_target(cfg.search.target)
    remaining = num_trials - finished
    if finished:
        study = optuna.create_study(storage=study_storage, study_name=study_name,
                                    directions=DIRECTIONS, load_if_exists=True)
        counts = reconcile_study(study, folder, target)
        log(f"resuming: {finished} trials of {study_name} finished, {remaining} to run "
            f"(study: {counts['told']} recovered, {counts['failed']} marked failed)")
    if remaining > 0:
        searcher = SweepOptunaSearch(
            space=space.params, metric=list(OBJECTIVES), mode=list(OBJECTIVES.values()),
            sampler=make_sampler(cfg.search.sampler, cfg.search.seed, num_trials),
            study_name=study_name, storage=study_storage, target=target)
        tune.Tuner(
            _trainable({**shared, "source": source, "space": space, "sweep": space.sweep},
                       cfg.resources),
            tune_config=_tune_config(search_alg=searcher, num_samples=remaining,
                                     max_concurrent_trials=min(mc, remaining)),
            run_config=_run_config(
                folder.attempt("tune"), folder, cfg.resources,
                [ResultsWriter(folder, num_trials, finished, study_store)])).fit()
    study_store.sync()


def run_search(cfg: RunConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole search (see the module docstring); returns a summary."""
    space = load_space(cfg.search.space, cfg)
    space_text = Path(space.source).read_text()
    folder = RunFolder.of(cfg)
    identity = search_identity(cfg, space_text)
    existing = folder.check_resumable(cfg, identity, space_text)

    connect()
    check_storage(cfg.output.storage, cfg.output.shared, cfg.resources)
    log(f"distforget search {cfg.output.name}: {cfg.search.num_trials} trials "
        f"({cfg.search.sampler}), space {space.source}, run folder {folder.root}")
    prepared_ref, prepared = prepare_on_cluster(cfg)
    if existing is not None and existing.get("fingerprint") != prepared.fingerprint:
        raise ConfigError(f"output folder {folder.root!r} was searched on other inputs (the "
                          "data or the base weights changed); use another output.name")
    reason = nothing_to_forget(prepared.base_metrics, parse_target(cfg.search.target))
    if reason is not None:
        raise ConfigError(reason)
    info = run_info(cfg, identity, space, space_text, prepared)
    folder.write_info(info, prepared.base_state)
    log("base model: " + "  ".join(f"{k} {prepared.base_metrics[k]:.3f}" for k in OBJECTIVES))
    recovered = folder.recover_records()
    if recovered:
        log(f"recovered {recovered} result rows written before an interruption")
    mc = max_concurrent(cfg.resources, ray.cluster_resources(), max(cfg.search.num_trials, 1),
                        cfg.search.max_concurrent_trials)
    shared = {"prepared": [prepared_ref], "config": cfg.to_dict(), "run": folder.root}
    run_baselines(cfg, folder, space, shared, mc, log)
    finished = int((folder.read_results()["source"] == "trial").sum())
    run_study(cfg, folder, space, shared, mc, log, source="trial",
              num_trials=cfg.search.num_trials, study_name=cfg.output.name, finished=finished)

    def run_confirmations(params: list[dict], parent_id: str) -> None:
        tune.Tuner(
            _trainable({**shared, "source": "confirm", "space": space, "parent_id": parent_id},
                       cfg.resources),
            param_space={"confirm": tune.grid_search(params)},
            tune_config=_tune_config(max_concurrent_trials=min(mc, len(params))),
            run_config=_run_config(folder.attempt("confirm"), folder, cfg.resources,
                                   [ResultsWriter(folder, len(params), 0)])).fit()

    failed_search(folder.read_results())
    evaluate = ray_evaluator(prepared_ref, StageCache(folder.stages), cfg.resources,
                             cfg.model.precision)
    verdict = finish(folder, cfg, evaluate=evaluate, run_confirmations=run_confirmations,
                     log=log)
    summary = build_report(folder.root)
    chosen = verdict["chosen"]
    if chosen is not None:
        export_point(folder.root, chosen, folder.best, verdict["why"], verdict["confirmation"])
        log(f"chosen: {chosen['trial_id']} ({verdict['why']})")
        log("  validation: " + "  ".join(f"{k} {chosen[k]:.3f}" for k in OBJECTIVES))
        log("  test:       " + "  ".join(f"{k} {chosen[as_test(k)]:.3f}" for k in OBJECTIVES)
            + f"; exported to {folder.best}")
    log(f"front: {summary['front_size']} points, hypervolume {summary['hypervolume']:.3f}; "
        f"report: {folder.report}")
    return {**summary, "run": folder.root, "base_metrics": info["base_metrics"]}
