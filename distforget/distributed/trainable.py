"""The Tune side of a trial: the function trainable, the Optuna searcher, the results writer.

``run_one_trial`` is thin: it builds the trial's config, runs the core ``run_trial`` with stages
launched as Ray Train jobs, writes the trial's record (``trials/<trial_id>.json``, atomically,
before it reports) and reports the objectives with ``ray.tune.report``.
"""

from __future__ import annotations

import json
from typing import Any

import optuna
import ray
import ray.tune
from ray.tune import Callback
from ray.tune.search.optuna import OptunaSearch

from distforget import storage
from distforget.config import from_dict, replace
from distforget.distributed.train import ray_evaluator, ray_launcher
from distforget.pareto import OBJECTIVES
from distforget.results import append_results, rows_from_record
from distforget.search_space import SearchSpace
from distforget.study import add_sweep_points, objective_values
from distforget.threads import set_torch_threads
from distforget.trial import StageCache, run_trial


def trial_record_path(run: str, trial_id: str) -> str:
    return storage.join(run, "trials", f"{trial_id}.json")


def read_trial_record(run: str, trial_id: str) -> dict | None:
    path = trial_record_path(run, trial_id)
    return json.loads(storage.read_bytes(path)) if storage.exists(path) else None


def run_one_trial(params: dict[str, Any], shared: dict[str, Any]) -> None:
    """One Tune trial (see the module docstring)."""
    trial_id = ray.tune.get_context().get_trial_id()
    base = from_dict(shared["config"])
    set_torch_threads(base.resources.trial_cpus)
    prepared_ref = shared["prepared"][0]
    prepared = ray.get(prepared_ref)
    space: SearchSpace | None = shared.get("space")
    cfg = (space.trial_config(base, params) if space is not None
           else replace(base, {"method": params["method"]}))
    run = shared["run"]
    cache = StageCache(storage.join(run, "stages"))
    record: dict[str, Any] = {"trial_id": trial_id, "parent_id": None,
                              "source": shared["source"], "status": "ok", "error": None,
                              "method": cfg.method, "params": params}
    try:
        result = run_trial(
            prepared, cfg,
            launch=ray_launcher(prepared_ref, cache, cfg.resources, storage.join(run, "train"),
                                trial_id),
            cache=cache,
            evaluate=ray_evaluator(prepared_ref, cache, cfg.resources, cfg.model.precision),
            sweep=shared.get("sweep", ()), log=lambda msg: print(f"[{trial_id}] {msg}"),
            diagnose=True)
    except Exception as exc:
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        storage.write_bytes(trial_record_path(run, trial_id),
                            json.dumps(record, default=float).encode())
        raise
    record.update(result.record())
    record.update(recipe=result.recipe.to_dict(), stages=result.stages,
                  sweep=[{"recipe": r.to_dict(), "metrics": m} for r, m in result.sweep],
                  diagnostics=result.diagnostics)
    text = json.dumps(record, default=float)
    storage.write_bytes(trial_record_path(run, trial_id), text.encode())
    ray.tune.report({**{k: record[k] for k in OBJECTIVES}, "record": text})


class SweepOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tags each Optuna trial with its Tune trial id and feeds the extra
    soups every trial measured to the study as further completed trials."""

    def suggest(self, trial_id: str):
        params = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None:
            ot_trial.set_user_attr("tune_trial_id", trial_id)
        return params

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        super().on_trial_complete(trial_id, result, error)
        if result and not error and "record" in result:
            add_sweep_points(self._ot_study, self._space, json.loads(result["record"]))


def reconcile_study(study: optuna.Study, run: str) -> dict[str, int]:
    """After an interrupted search: tell the study about trials that finished (their record was
    written) but were never told, and mark the others, which were cut off, as failed."""
    counts = {"told": 0, "failed": 0}
    running = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    for t in study.get_trials(deepcopy=False, states=running):
        tid = t.user_attrs.get("tune_trial_id")
        record = read_trial_record(run, tid) if tid else None
        values = objective_values(record) if record and record.get("status") == "ok" else None
        if values is not None:
            study.tell(t.number, values)
            add_sweep_points(study, t.distributions, record)
            counts["told"] += 1
        else:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            counts["failed"] += 1
    return counts


class ResultsWriter(Callback):
    """Appends each finished trial (and its sweep points) to ``results.parquet`` and prints one
    line per trial; failed trials are recorded with their error."""

    def __init__(self, run: str, total: int, done: int, study_store=None):
        self.run = run
        self.total = total
        self.done = done
        self.study_store = study_store  # synced after every trial when the run is remote

    @staticmethod
    def log(message: str) -> None:
        print(message, flush=True)

    def _append(self, record: dict) -> None:
        append_results(storage.join(self.run, "results.parquet"), rows_from_record(record))
        self.done += 1
        if self.study_store is not None:
            self.study_store.sync()

    def on_trial_complete(self, iteration, trials, trial, **info):
        record = json.loads(trial.last_result["record"])
        self._append(record)
        self.log(f"trial {self.done}/{self.total} {record['trial_id']} ({record['method']}): "
                 f"forget_acc {record['forget_acc']:.3f}  retain_acc {record['retain_acc']:.3f}  "
                 f"zeroshot_acc {record['zeroshot_acc']:.3f}  alpha {record['alpha']:.2f}  "
                 f"{len(record.get('sweep', []))} extra soups  stage cache "
                 f"{record['stage_cache_hits']} hit(s)  {record['wall_s']:.1f}s")

    def on_trial_error(self, iteration, trials, trial, **info):
        record = read_trial_record(self.run, trial.trial_id) or {
            "trial_id": trial.trial_id, "status": "failed", "source": "trial",
            "params": dict(trial.config), "method": None,
            "error": str(trial.get_error() or "the trial's process died")}
        self._append(record)
        self.log(f"trial {self.done}/{self.total} {trial.trial_id} failed: {record['error']}")
