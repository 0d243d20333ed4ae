"""The Tune side of a trial: the function trainable, the Optuna searcher, the results writer.

``run_one_trial`` is thin: it builds the trial's config, runs the core ``run_trial`` with stages
launched as Ray Train jobs, writes the trial's record (``trials/<trial_id>.json``, atomically,
before it reports) and reports the objectives with ``ray.tune.report``. The same trainable runs
the baselines, the search's trials and the confirmation runs of the chosen point.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import ray
import ray.tune
from ray.tune import Callback
from ray.tune.search.optuna import OptunaSearch

from distforget.config import from_dict, replace
from distforget.distributed.train import ray_evaluator, ray_launcher
from distforget.objectives import OBJECTIVES, Constraint
from distforget.results import rows_from_record
from distforget.run_folder import RunFolder
from distforget.search_space import SearchSpace
from distforget.study import add_sweep_points, set_constraints
from distforget.threads import set_torch_threads
from distforget.trial import StageCache, run_trial, trial_record


def run_one_trial(params: dict[str, Any], shared: dict[str, Any]) -> None:
    """One Tune trial (see the module docstring)."""
    trial_id = ray.tune.get_context().get_trial_id()
    # A confirmation run's values arrive as one dict (Tune grid-searches over whole dicts).
    params = params.get("confirm", params)
    base = from_dict(shared["config"])
    set_torch_threads(base.resources.trial_cpus)
    prepared_ref = shared["prepared"][0]
    prepared = ray.get(prepared_ref)
    space: SearchSpace | None = shared.get("space")
    # Search and confirmation trials: the space's fixed values, then these; baselines: the
    # method named (and any other dotted overrides) on the base config.
    cfg = space.trial_config(base, params) if space is not None else replace(base, params)
    folder = RunFolder(shared["run"])
    cache = StageCache(folder.stages)
    ident = {"trial_id": trial_id, "source": shared["source"], "method": cfg.method,
             "params": params, "parent_id": shared.get("parent_id"),
             "node_id": ray.get_runtime_context().get_node_id()}
    try:
        result = run_trial(
            prepared, cfg,
            launch=ray_launcher(prepared_ref, cache, cfg.resources, folder.train, trial_id),
            cache=cache,
            evaluate=ray_evaluator(prepared_ref, cache, cfg.resources, cfg.model.precision),
            sweep=shared.get("sweep", ()), log=lambda msg: print(f"[{trial_id}] {msg}"),
            diagnose=True)
    except Exception as exc:
        folder.write_trial_record(trial_record(**ident, error=f"{type(exc).__name__}: {exc}"))
        raise
    record = trial_record(**ident, result=result)
    text = folder.write_trial_record(record)
    ray.tune.report({**{k: record[k] for k in OBJECTIVES}, "record": text})


class SweepOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tags each Optuna trial with its Tune trial id, sets its constraint
    values against the target before it is told (so the sampler steers towards the target),
    and feeds the extra soups every trial measured to the study as further completed trials."""

    def __init__(self, *args, target: Sequence[Constraint] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self._target = tuple(target)
        # optuna-dashboard then names the objectives instead of "Objective 0/1/2".
        self._ot_study.set_metric_names(list(OBJECTIVES))

    def suggest(self, trial_id: str):
        params = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None:
            ot_trial.set_user_attr("tune_trial_id", trial_id)
        return params

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        record = json.loads(result["record"]) if result and "record" in result else None
        ot_trial = self._ot_trials.get(trial_id)
        if record is not None and not error and ot_trial is not None:
            for key in ("source", "mia_auc", "forget_sim", "alpha", "parent_id"):
                if record.get(key) is not None:
                    ot_trial.set_user_attr(key, record[key])
            if self._target:
                set_constraints(ot_trial, record, self._target)
        super().on_trial_complete(trial_id, result, error)
        if record is not None and not error:
            add_sweep_points(self._ot_study, self._space, record, self._target)


class ResultsWriter(Callback):
    """Appends each finished trial (and its sweep points) to ``results.parquet`` and prints one
    line per trial; failed trials are recorded with their error."""

    def __init__(self, folder: RunFolder, total: int, done: int, study_store=None):
        self.folder = folder
        self.total = total
        self.done = done
        self.study_store = study_store  # synced after every trial when the run is remote

    @staticmethod
    def log(message: str) -> None:
        print(message, flush=True)

    def _append(self, record: dict) -> None:
        self.folder.append_results(rows_from_record(record))
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
        record = self.folder.read_trial_record(trial.trial_id) or {
            "trial_id": trial.trial_id, "status": "failed", "source": "trial",
            "params": dict(trial.config), "method": None,
            "error": str(trial.get_error() or "the trial's process died")}
        self._append(record)
        self.log(f"trial {self.done}/{self.total} {trial.trial_id} failed: {record['error']}")
