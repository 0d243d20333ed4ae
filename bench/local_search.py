"""An in-process search for the benchmarks: the same search spaces, Optuna samplers, stage
cache, soup sweeps and records as ``python -m distforget.search``, without Ray (one process, one
device), so that method quality and sampler efficiency can be measured on 2 CPU cores without
paying a Ray Train start per trial."""

from __future__ import annotations

import time
from typing import Callable

import optuna
import pandas as pd
import torch

from distforget.config import RunConfig
from distforget.objectives import DIRECTIONS
from distforget.prepare import Prepared
from distforget.results import rows_from_record
from distforget.search_space import SearchSpace
from distforget.study import (Steering, add_sweep_points, make_sampler, objective_values,
                              set_constraints, start_from_config)
from distforget.trial import (StageCache, local_evaluator, local_launcher, run_trial,
                              trial_record)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def local_search(prepared: Prepared, base: RunConfig, space: SearchSpace, *, trials: int,
                 sampler: str, seed: int, device: torch.device, cache: StageCache | None = None,
                 on_trial: Callable[[int, dict], None] | None = None,
                 source: str = "trial") -> pd.DataFrame:
    """Run ``trials`` trials; returns the results table (trials and their sweep points). The
    search's target (``base.search.target``) reaches the sampler as constraints with the pick's
    margin, and the first trial is at the config's settings (``search.start_from_config``), as
    in ``python -m distforget.search``."""
    cache = cache or StageCache()
    steering = Steering.of_run(base.search, prepared.scenario.summary())
    study = optuna.create_study(directions=DIRECTIONS, sampler=make_sampler(sampler, seed, trials))
    start_from_config(study, space, base)  # the first trial at the config's settings, as there
    launch = local_launcher(prepared, cache, device)
    evaluate = local_evaluator(prepared, cache, device, base.model.precision)
    rows = []
    for i in range(trials):
        ot = study.ask(space.params)
        ident = {"trial_id": f"{space.method}-{sampler}-{seed}-{i:03d}", "source": source,
                 "method": space.method, "params": dict(ot.params)}
        start = time.perf_counter()
        try:
            cfg = space.trial_config(base, ot.params)
            result = run_trial(prepared, cfg, launch=launch, cache=cache, evaluate=evaluate,
                               sweep=space.sweep)
        except Exception as exc:  # a failed trial is recorded, the search goes on
            record = trial_record(**ident, error=f"{type(exc).__name__}: {exc}")
            study.tell(ot, state=optuna.trial.TrialState.FAIL)
        else:
            record = trial_record(**ident, result=result)
            values = objective_values(record)
            if values is None:
                study.tell(ot, state=optuna.trial.TrialState.FAIL)
            else:
                set_constraints(ot, record, steering)
                study.tell(ot, values)
                add_sweep_points(study, space.params, record, steering)
        record["wall_s"] = time.perf_counter() - start
        new = rows_from_record(record)
        for row in new:
            row["order"] = i
        rows += new
        if on_trial is not None:
            on_trial(i, record)
    return pd.DataFrame(rows)
