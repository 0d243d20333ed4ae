"""Optuna pieces shared by the Ray search and the in-process benchmarks: samplers, objective
values, and feeding a trial's extra soups to the study."""

from __future__ import annotations

import math

import optuna

from distforget.errors import ConfigError
from distforget.objectives import OBJECTIVES


def nsga2_population(num_trials: int) -> int:
    """NSGA-II's population for a budget of ``num_trials``: a quarter of the budget, between 4
    and Optuna's default of 50, so that a small search runs several generations rather than
    one generation of random samples."""
    return max(4, min(50, num_trials // 4))


def make_sampler(name: str, seed: int, num_trials: int = 200) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed,
                                             population_size=nsga2_population(num_trials))
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"search.sampler {name!r}: expected tpe, nsga2, gp or random")


def objective_values(metrics: dict) -> list[float] | None:
    """The study's values for a result, or None when one of them is missing or NaN."""
    values = [float(metrics.get(k, float("nan"))) for k in OBJECTIVES]
    return None if any(math.isnan(v) for v in values) else values


def add_sweep_points(study: optuna.Study, distributions: dict, record: dict) -> int:
    """Add the extra soups a trial measured as completed trials of the study (same stage
    parameters, other soup coefficients); returns how many were added."""
    if "restore.alpha" not in distributions or record.get("status") != "ok":
        return 0
    added = 0
    for i, point in enumerate(record.get("sweep", [])):
        values = objective_values(point["metrics"])
        if values is None:
            continue
        params = dict(record["params"])
        params["restore.alpha"] = point["recipe"]["alpha"]
        if "restore.beta" in distributions:
            params["restore.beta"] = point["recipe"]["beta"]
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=distributions, values=values,
            user_attrs={"sweep_of": record["trial_id"],
                        "tune_trial_id": f"{record['trial_id']}~{i}"}))
        added += 1
    return added
