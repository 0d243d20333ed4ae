"""The Tune side of a trial: the function trainable, the Optuna searcher, the results writer.

``run_one_trial`` is thin: it builds the trial's config, runs the core ``run_trial``, writes the
trial's record (``trials/<trial_id>.json``, atomically, before it reports) and reports the
objectives with ``ray.tune.report`` (numbers only: the searcher and the results writer read the
record itself from the run folder). The same trainable runs the baselines, the search's trials
and the confirmation runs of the chosen point.

Which path a trial's stages take follows ``resources.workers`` (``cluster.in_actor``):

- one worker: the stages and the evaluations run in the trial's own Tune actor, which holds the
  worker's resources. The running stage's state is written after every epoch beside the trial
  (``train/<trial_id>/snapshot.pt``); when the actor dies, Tune starts the trial again
  (``resources.max_failures`` times), finished stages come from the stage cache and the running
  one resumes from its last epoch. Each epoch's metrics are reported to Tune (for the tracking
  callbacks).
- several workers: each stage is a Ray Train ``TorchTrainer`` (data-parallel, a dead worker
  replaced and its stage resumed by Ray Train) and evaluations are Ray tasks with one worker's
  resources (``distforget.distributed.train``).

On either path Tune starts a trial whose process died (a lost node) again under the same id,
``resources.max_failures`` times. An error the trial's own code raised is in its record; a
restarted trial that finds it raises it again at once instead of repeating the work.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any, Callable, Sequence

import optuna
import ray
import ray.tune
from ray.tune import Callback
from ray.tune.search.optuna import OptunaSearch

from distforget import storage
from distforget.config import from_dict, replace
from distforget.distributed.cluster import in_actor, trial_resources
from distforget.distributed.train import (StageFailed, actor_device, epoch_metrics,
                                          ray_evaluator, ray_launcher)
from distforget.objectives import OBJECTIVES
from distforget.pareto import pareto_front, usable
from distforget.results import rows_from_record
from distforget.run_folder import RunFolder, is_builtin_print, printed
from distforget.search_space import SearchSpace
from distforget.study import Steering, add_sweep_points, set_constraints
from distforget.threads import set_torch_threads
from distforget.trial import (StageCache, local_evaluator, local_launcher, run_trial,
                              trial_record)


def run_one_trial(params: dict[str, Any], shared: dict[str, Any]) -> None:
    """One Tune trial (see the module docstring)."""
    started, clock = time.time(), time.perf_counter()
    trial_id = ray.tune.get_context().get_trial_id()
    # A confirmation run's values arrive as one dict (Tune grid-searches over whole dicts).
    params = params.get("confirm", params)
    base = from_dict(shared["config"])
    here = in_actor(base.resources)
    set_torch_threads(trial_resources(base.resources)["CPU"])
    prepared_ref = shared["prepared"][0]
    prepared = ray.get(prepared_ref)
    space: SearchSpace | None = shared.get("space")
    # Search and confirmation trials: the space's fixed values, then these; baselines: the
    # method named (and any other dotted overrides) on the base config.
    cfg = space.trial_config(base, params) if space is not None else replace(base, params)
    folder = RunFolder(shared["run"])
    cache = StageCache(folder.stages)
    earlier = folder.read_trial_record(trial_id)
    if earlier is not None and earlier.get("error"):
        # Tune started this trial again after its own code raised (a lost process or node
        # writes no record): the same error again, without repeating the work.
        raise StageFailed(earlier["error"])
    if here:
        # The stages and evaluations run in this actor, which holds a worker's resources.
        device = actor_device()
        # Every stage epoch is a Tune result for the tracking callbacks.
        on_epoch = ((lambda m: ray.tune.report(epoch_metrics(m["stage"], m["epoch"], m)))
                    if cfg.output.callbacks else None)
        launch = local_launcher(prepared, cache, device, on_epoch=on_epoch,
                                snapshots=storage.join(folder.train, trial_id))
        evaluate = local_evaluator(prepared, cache, device, cfg.model.precision)
    else:
        launch = ray_launcher(prepared_ref, cache, cfg.resources, folder.train, trial_id)
        evaluate = ray_evaluator(prepared_ref, cache, cfg.resources, cfg.model.precision)
    ident = {"trial_id": trial_id, "source": shared["source"], "method": cfg.method,
             "params": params, "parent_id": shared.get("parent_id"),
             "node_id": ray.get_runtime_context().get_node_id()}
    setup_s = time.perf_counter() - clock
    try:
        result = run_trial(prepared, cfg, launch=launch, cache=cache, evaluate=evaluate,
                           sweep=shared.get("sweep", ()),
                           log=lambda msg: print(f"[{trial_id}] {msg}"), diagnose=True)
    except Exception as exc:
        folder.write_trial_record(trial_record(**ident, error=f"{type(exc).__name__}: {exc}"))
        if here:  # the trial ends here: its running stage's snapshot resumes nothing
            storage.remove_tree(storage.join(folder.train, trial_id))
        raise
    record = trial_record(**ident, result=result)
    # Where the trial's time went (bench/overhead.py reads it): wall-clock start and end, the
    # path it took, the actor's pid (the same pid on several trials: a reused actor).
    record["timing"] = {**record.get("timing", {}), "path": "in-actor" if here else "ray-train",
                        "setup_s": setup_s, "started": started, "pid": os.getpid()}
    record["timing"]["ended"] = time.time()
    folder.write_trial_record(record)
    ray.tune.report({k: record[k] for k in (*OBJECTIVES, *REPORTED) if record.get(k) is not None})


# Reported to Tune beside the objectives (for tracking callbacks and the progress table).
REPORTED = ("alpha", "mia_auc", "forget_sim", "wall_s")


class SweepOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tags each Optuna trial with its Tune trial id, sets its constraint
    values before it is told (``steering``: so the sampler steers towards points the pick
    accepts), and feeds the extra soups every trial measured to the study as further completed
    trials."""

    def __init__(self, *args, steering: Steering = Steering(), folder: RunFolder,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self._steering = steering
        self._folder = folder
        # optuna-dashboard then names the objectives instead of "Objective 0/1/2".
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._ot_study.set_metric_names(list(OBJECTIVES))

    def suggest(self, trial_id: str):
        params = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None:
            ot_trial.set_user_attr("tune_trial_id", trial_id)
        return params

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        record = self._folder.read_trial_record(trial_id) if result and not error else None
        ot_trial = self._ot_trials.get(trial_id)
        if record is not None and not error and ot_trial is not None:
            for key in ("source", "mia_auc", "forget_sim", "alpha", "parent_id"):
                if record.get(key) is not None:
                    ot_trial.set_user_attr(key, record[key])
            set_constraints(ot_trial, record, self._steering)
        super().on_trial_complete(trial_id, result, error)
        if record is not None and not error:
            add_sweep_points(self._ot_study, self._space, record, self._steering)


def _value(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


class ResultsWriter(Callback):
    """Appends each finished trial (and its sweep points) to ``results.parquet`` and logs one
    line per trial (its searched values and metrics) and the method's front so far; failed
    trials are recorded with their error."""

    def __init__(self, folder: RunFolder, total: int, done: int, study_store=None, *,
                 log: Callable[[str], None] | None = None, params: Sequence[str] = ()):
        self.folder = folder
        self.total = total
        self.done = done
        self.study_store = study_store  # synced after every trial when the run is remote
        # Tune pickles its callbacks: never Python's print itself (see RunLog).
        self.log = printed if log is None or is_builtin_print(log) else log
        self.params = tuple(params)  # the searched keys, in the space's order

    def _append(self, record: dict):
        results = self.folder.append_results(rows_from_record(record))
        self.done += 1
        if self.study_store is not None:
            self.study_store.sync()
        return results

    def on_trial_complete(self, iteration, trials, trial, **info):
        record = self.folder.read_trial_record(trial.trial_id)
        results = self._append(record)
        values = record.get("params", {})
        shown = [k for k in self.params if k in values] or sorted(values)
        self.log(f"trial {self.done}/{self.total} {record['trial_id']} ({record['method']}) "
                 + " ".join(f"{k}={_value(values[k])}" for k in shown)
                 + f": forget_acc {record['forget_acc']:.3f}  retain_acc "
                 f"{record['retain_acc']:.3f}  zeroshot_acc {record['zeroshot_acc']:.3f}  "
                 f"alpha {record['alpha']:.2f}  {len(record.get('sweep', []))} extra soups  "
                 f"stage cache {record['stage_cache_hits']} hit(s)  {record['wall_s']:.1f}s")
        if record["source"] == "trial":
            method = usable(results[results["source"].isin(("trial", "sweep"))])
            front = pareto_front(method)
            self.log(f"  front so far: {len(front)} of {len(method)} points (forget_acc/"
                     "retain_acc/zeroshot_acc): " + ", ".join(
                f"{r.trial_id} ({r.forget_acc:.3f}/{r.retain_acc:.3f}/{r.zeroshot_acc:.3f})"
                for r in front.sort_values("forget_acc").head(4).itertuples())
                + (" ..." if len(front) > 4 else ""))

    def on_trial_error(self, iteration, trials, trial, **info):
        record = self.folder.read_trial_record(trial.trial_id) or {
            "trial_id": trial.trial_id, "status": "failed", "source": "trial",
            "params": dict(trial.config), "method": None,
            "error": str(trial.get_error() or "the trial's process died")}
        self._append(record)
        self.log(f"trial {self.done}/{self.total} {trial.trial_id} failed: {record['error']}")
