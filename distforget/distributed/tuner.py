"""The search: build and run the Tuners (baselines, then the Optuna search), then report and
export. The run folder's files, its identity check and resumption live in
``distforget.run_folder``; this module only builds and drives Ray Tune.

What the console shows: distforget's own lines (also appended to ``<run>/search.log``), and
Tune's table of trials with the searched values and the three objectives, printed when a
trial ends. Ray Train's own lines (worker groups, a checkpoint per epoch) stay off the console
unless ``output.verbose`` (``--verbose``). SIGINT and SIGTERM stop the search with its finished
trials kept (``distforget.interrupts``).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
import ray
from ray import tune
from ray.tune import Callback
from ray.tune.progress_reporter import ProgressReporter
from ray.tune.experiment import Trial

from distforget.config import RunConfig, small_clip_settings_note
from distforget.distributed.cluster import (check_storage, connect, driver_works,
                                            max_concurrent, trial_resources)
from distforget.distributed.tracking import check_trackers, tune_callbacks
from distforget.distributed.train import driver_device, prepare_on_cluster, ray_evaluator
from distforget.distributed.trainable import ResultsWriter, SweepOptunaSearch, run_one_trial
from distforget.errors import ConfigError
from distforget.confirm import failed_search, finish
from distforget.export import export_point
from distforget.interrupts import (Interrupts, SearchInterrupted, TuneStopped,
                                   stop_tune_on_signal)
from distforget.objectives import (DIRECTIONS, OBJECTIVES, as_test, nothing_to_forget,
                                   parse_target, weak_base)
from distforget.report import build_report
from distforget.run_folder import (RunFolder, RunLog, StudyStore, reconcile_study, run_info,
                                   search_identity)
from distforget.search_space import SearchSpace, load_space
from distforget.study import Steering, make_sampler, start_from_config
from distforget.trial import StageCache, local_evaluator


def _trainable(shared: dict, resources) -> Any:
    return tune.with_resources(tune.with_parameters(run_one_trial, shared=shared),
                               trial_resources(resources))


def _tune_config(**kwargs) -> tune.TuneConfig:
    # reuse_actors: a trial that runs in its actor finds torch, open_clip and the prepared
    # inputs already loaded by the trial before it (some 4 s per trial on 2 cores).
    return tune.TuneConfig(trial_name_creator=lambda t: t.trial_id,
                           trial_dirname_creator=lambda t: t.trial_id, reuse_actors=True,
                           **kwargs)


class TrialTable(ProgressReporter):
    """Tune's progress: the trials with their searched values and the three objectives, as one
    table printed each time a trial ends (and once at the end), not every few seconds."""

    def __init__(self, params: dict[str, str]):
        self.params = params  # key in the trial's config ("/" for nested) -> column name
        self._ended: int | None = None

    def should_report(self, trials: list[Trial], done: bool = False) -> bool:
        ended = sum(t.status in (Trial.TERMINATED, Trial.ERROR) for t in trials)
        changed, self._ended = ended != self._ended, ended
        return done or (changed and ended > 0)

    def report(self, trials: list[Trial], done: bool, *sys_info: str) -> None:
        import pandas as pd

        rows = []
        for t in trials:
            row = {"trial": t.trial_id, "status": t.status.lower()}
            for key, name in self.params.items():
                value: Any = t.config
                for part in key.split("/"):
                    value = value.get(part) if isinstance(value, dict) else None
                row[name] = value
            row.update({m: (t.last_result or {}).get(m) for m in OBJECTIVES})
            rows.append(row)
        counts = ", ".join(f"{n} {s.lower()}" for s, n in
                           sorted(Counter(t.status for t in trials).items()))
        table = pd.DataFrame(rows).to_string(index=False, na_rep="", float_format="{:.4g}".format)
        print(f"Tune: {len(trials)} trials ({counts})\n{table}", flush=True)


class StopOnSignal(Callback):
    """Ends a Tune run at its next step once SIGINT or SIGTERM came (see ``Interrupts``)."""

    def on_step_begin(self, iteration, trials, **info):
        stop_tune_on_signal()


@dataclass
class Driver:
    """What every Tuner of one search shares: the run folder, the log, the signal handling,
    the tracking callbacks and how many trials run at once."""

    cfg: RunConfig
    folder: RunFolder
    log: Callable[[str], None]
    interrupts: Interrupts
    shared: dict = field(default_factory=dict)
    mc: int = 1
    tracking: list = field(default_factory=list)

    def fit(self, trainable, *, prefix: str, writer: ResultsWriter, params: dict[str, str],
            **tune_kwargs) -> None:
        """Run one Tuner to its end, or until a signal (then ``SearchInterrupted``)."""
        param_space = tune_kwargs.pop("param_space", None)
        tuner = tune.Tuner(
            trainable, param_space=param_space, tune_config=_tune_config(**tune_kwargs),
            run_config=tune.RunConfig(
                name=self.folder.attempt(prefix), storage_path=self.folder.root,
                callbacks=[writer, StopOnSignal(), *self.tracking],
                # A trial whose process dies (its actor, or its node lost) is started again
                # under the same trial id: the stages it finished are in the stage cache and a
                # running one resumes from its last snapshot or checkpoint. A trial whose own
                # code raised finds its error in its record and raises it again at once.
                failure_config=tune.FailureConfig(max_failures=self.cfg.resources.max_failures),
                progress_reporter=TrialTable(params), verbose=2 if self.cfg.output.verbose
                else 1))
        with self.interrupts.deferred():
            try:
                tuner.fit()
            except TuneStopped:
                pass  # the deferred block raises SearchInterrupted


def run_baselines(driver: Driver, space: SearchSpace) -> None:
    """Each baseline in ``search.baselines``: once at its defaults (``search.baseline_trials``
    1), or searched over its own space with the method's soups, that many trials each."""
    cfg, folder = driver.cfg, driver.folder
    results = folder.read_results()
    done = results[(results["source"] == "baseline") & results["parent_id"].isna()]
    if cfg.search.baseline_trials > 1:
        for b in cfg.search.baselines:
            b_space = load_space(f"baseline-{b}", cfg).with_soups_of(space)
            run_study(driver, b_space, source="baseline", num_trials=cfg.search.baseline_trials,
                      study_name=f"{cfg.output.name}-{b}",
                      finished=int((done["method"] == b).sum()))
        return
    todo = [b for b in cfg.search.baselines if b not in set(done["method"])]
    if not todo:
        return
    driver.log(f"baselines (each once, at its defaults): {', '.join(todo)}")
    driver.fit(_trainable({**driver.shared, "source": "baseline", "space": None}, cfg.resources),
               param_space={"method": tune.grid_search(todo)}, prefix="baselines",
               writer=ResultsWriter(folder, len(todo), 0, log=driver.log),
               params={"method": "method"}, max_concurrent_trials=min(driver.mc, len(todo)))


def run_steering(cfg: RunConfig, folder: RunFolder) -> Steering:
    """The search's target as its samplers see it: with the pick's margin over the run's
    validation and test split sizes (``run.json``, written before the first trial)."""
    splits = folder.read_info().get("prepared", {}).get("splits")
    return Steering.of_run(cfg.search, splits)


def run_study(driver: Driver, space: SearchSpace, *, source: str, num_trials: int,
              study_name: str, finished: int) -> None:
    """An Optuna study's missing trials; a resumed study is reconciled with the records."""
    cfg, folder = driver.cfg, driver.folder
    study_store = StudyStore(folder)
    study_storage = study_store.storage()
    steering = run_steering(cfg, folder)
    remaining = num_trials - finished
    study = optuna.create_study(storage=study_storage, study_name=study_name,
                                directions=DIRECTIONS, load_if_exists=True)
    if finished:
        counts = reconcile_study(study, folder, steering)
        driver.log(f"resuming: {finished} trials of {study_name} finished, {remaining} to run "
                   f"(study: {counts['told']} recovered, {counts['failed']} marked failed)")
    if remaining > 0:
        started = start_from_config(study, space, cfg)
        if started:
            driver.log(f"{study_name}: {started}")
        searcher = SweepOptunaSearch(
            space=space.params, metric=list(OBJECTIVES), mode=list(OBJECTIVES.values()),
            sampler=make_sampler(cfg.search.sampler, cfg.search.seed, num_trials),
            study_name=study_name, storage=study_storage, steering=steering, folder=folder)
        driver.fit(
            _trainable({**driver.shared, "source": source, "space": space,
                        "sweep": space.sweep}, cfg.resources),
            prefix="tune", params={k: k for k in space.params},
            writer=ResultsWriter(folder, num_trials, finished, study_store, log=driver.log,
                                 params=list(space.params)),
            search_alg=searcher, num_samples=remaining,
            max_concurrent_trials=min(driver.mc, remaining))
    study_store.sync()


def settle_interrupted(cfg: RunConfig, folder: RunFolder, stop: SearchInterrupted,
                       log: Callable[[str], None]) -> None:
    """After a signal: keep every trial whose record was written, settle the studies (trials
    that finished told, those cut off marked failed, none left running) and head the report
    as interrupted. ``best/`` is not touched."""
    if not folder.has_info():
        log(f"interrupted by {stop.name} before the first trial; nothing was recorded")
        return
    folder.recover_records()
    study_store = StudyStore(folder)
    study_storage = study_store.storage()
    steering = run_steering(cfg, folder)
    for name in optuna.study.get_all_study_names(study_storage):
        reconcile_study(optuna.load_study(study_name=name, storage=study_storage), folder,
                        steering)
    study_store.sync()
    results = folder.read_results()
    trials = results[results["source"] == "trial"]
    done, failed = len(trials), int((trials["status"] != "ok").sum())
    build_report(folder.root, interrupted={"signal": stop.name, "trials": done,
                                           "failed": failed, "of": cfg.search.num_trials})
    log(f"interrupted by {stop.name} after {done} of {cfg.search.num_trials} trials "
        f"({failed} failed); they are kept in {folder.results}; report (headed as "
        f"interrupted): {folder.report}; best/ was not changed")


def run_search(cfg: RunConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The whole search (see the module docstring); returns a summary. A signal ends it with
    ``SearchInterrupted`` once the finished trials are recorded (``settle_interrupted``)."""
    check_trackers(cfg.output.callbacks)
    space = load_space(cfg.search.space, cfg)
    space_text = Path(space.source).read_text()
    folder = RunFolder.of(cfg)
    identity = search_identity(cfg, space_text)
    existing = folder.check_resumable(cfg, identity, space_text)

    connect()
    check_storage(cfg.output.storage, cfg.output.shared, cfg.resources)
    log = RunLog(folder, echo=log)  # None: printed
    # The legacy reporter takes the columns to show (the new output engine infers them and
    # would show the trial's record); Ray's own SIGTERM handler is replaced while this runs.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # trials are logged by distforget
    if cfg.output.callbacks:
        # Each stage epoch is a Tune result for the trackers; only a trial's last result holds
        # the objectives that the searcher reads.
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    with Interrupts(log) as interrupts:
        driver = Driver(cfg, folder, log, interrupts)
        try:
            return _search(driver, space, space_text, identity, existing)
        except SearchInterrupted as stop:
            interrupts.restore()  # a further signal ends the process at once
            settle_interrupted(cfg, folder, stop, log)
            raise


def _search(driver: Driver, space: SearchSpace, space_text: str, identity: str,
            existing: dict | None) -> dict[str, Any]:
    cfg, folder, log = driver.cfg, driver.folder, driver.log
    log(f"distforget search {cfg.output.name}: {cfg.search.num_trials} trials "
        f"({cfg.search.sampler}), space {space.source}, run folder {folder.root}")
    note = small_clip_settings_note(cfg)
    if note:
        log(note)
    # On one node with room for a worker, the one-off work runs in this process (no task).
    here = driver_works(cfg.resources)
    prepared_ref, prepared = prepare_on_cluster(cfg, here)
    if existing is not None and existing.get("fingerprint") != prepared.fingerprint:
        raise ConfigError(f"output folder {folder.root!r} was searched on other inputs (the "
                          "data or the base weights changed); use another output.name")
    reason = nothing_to_forget(prepared.base_metrics, parse_target(cfg.search.target))
    if reason is not None:
        raise ConfigError(reason)
    info = run_info(cfg, identity, space, space_text, prepared)
    with driver.interrupts.deferred():
        folder.write_info(info, prepared.base_state)
    log("base model: " + "  ".join(f"{k} {prepared.base_metrics[k]:.3f}" for k in OBJECTIVES))
    weak = weak_base(prepared.base_metrics, len(prepared.head))
    if weak:
        log(f"note: {weak}")
    recovered = folder.recover_records()
    if recovered:
        log(f"recovered {recovered} result rows written before an interruption")
    driver.mc = max_concurrent(cfg.resources, ray.cluster_resources(),
                               max(cfg.search.num_trials, 1), cfg.search.max_concurrent_trials)
    driver.shared = {"prepared": [prepared_ref], "config": cfg.to_dict(), "run": folder.root}
    driver.tracking = tune_callbacks(cfg.output.callbacks, folder.root, cfg.output.name)
    if cfg.output.callbacks:
        log(f"tracking: {', '.join(cfg.output.callbacks)}"
            + (f" (tensorboard --logdir {folder.root})" if "tensorboard" in cfg.output.callbacks
               else ""))
    run_baselines(driver, space)
    finished = int((folder.read_results()["source"] == "trial").sum())
    run_study(driver, space, source="trial", num_trials=cfg.search.num_trials,
              study_name=cfg.output.name, finished=finished)

    def run_confirmations(params: list[dict], parent_id: str) -> None:
        driver.fit(
            _trainable({**driver.shared, "source": "confirm", "space": space,
                        "parent_id": parent_id}, cfg.resources),
            param_space={"confirm": tune.grid_search(params)}, prefix="confirm",
            params={f"confirm/{k}": k for k in ("forget.seed", "remind.seed", "baseline.seed")},
            writer=ResultsWriter(folder, len(params), 0, log=log),
            max_concurrent_trials=min(driver.mc, len(params)))

    failed_search(folder.read_results())
    cache = StageCache(folder.stages)
    evaluate = (local_evaluator(prepared, cache, driver_device(cfg.resources),
                                cfg.model.precision) if here else
                ray_evaluator(prepared_ref, cache, cfg.resources, cfg.model.precision))
    verdict = finish(folder, cfg, evaluate=evaluate, run_confirmations=run_confirmations,
                     log=log)
    with driver.interrupts.deferred():
        summary = build_report(folder.root)
        chosen = verdict["chosen"]
        if chosen is not None:
            export_point(folder.root, chosen, folder.best, verdict["why"],
                         verdict["confirmation"])
    if chosen is not None:
        log(f"chosen: {chosen['trial_id']} ({verdict['why']})")
        log("  validation: " + "  ".join(f"{k} {chosen[k]:.3f}" for k in OBJECTIVES))
        log("  test:       " + "  ".join(f"{k} {chosen[as_test(k)]:.3f}" for k in OBJECTIVES)
            + f"; exported to {folder.best}")
    log(f"front: {summary['front_size']} points, hypervolume {summary['hypervolume']:.3f}; "
        f"report: {folder.report}; results: {folder.results}; log: {folder.path(folder.LOG)}")
    return {**summary, "run": folder.root, "base_metrics": info["base_metrics"]}
