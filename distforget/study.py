"""Optuna pieces shared by the Ray search and the in-process benchmarks: samplers, the first
trial at the config's own settings, objective values, the target as Optuna constraints, and
feeding a trial's extra soups to the study.

The target (``search.target``) reaches the sampler as Optuna 5's trial constraints: before a
trial is told, each constraint's value (<= 0 met, from its validation metrics and the base
model's validation metrics) is set with ``Trial.set_constraint`` under the constraint's text
(e.g. ``retain_acc>=0.9*base``); the extra soups a trial measured are added with theirs
(``create_trial(constraints=...)``). TPE, NSGA-II and GP read them from the trials and steer
towards points that meet the target (no ``constraints_func``, which Optuna 5 deprecates); the
random sampler ignores them.

Under the ``target`` pick, a constraint's value is its gap plus the pick's margin
(``search.pick_margin`` standard errors of the difference between its validation and its test
estimate, or of the validation estimate alone under ``search.pick_margin_unit: validation``; see
``Steering`` and ``objectives.margins``): the sampler counts as feasible the
points the pick (``pareto.pick``) accepts as meeting the target with confidence, not those that
meet it by less than the samples' noise, which the pick passes over.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

import optuna

from distforget.errors import ConfigError
from distforget.objectives import (OBJECTIVES, Constraint, constraint_gaps, margin_sizes,
                                   parse_rule, parse_target, required_slack)

if TYPE_CHECKING:
    from distforget.config import RunConfig, SearchConfig
    from distforget.search_space import SearchSpace


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


def start_from_config(study: optuna.Study, space: SearchSpace, cfg: RunConfig) -> str | None:
    """Queue ``cfg``'s own point of ``space`` (``SearchSpace.config_point``) as the study's next
    trial, under ``search.start_from_config``; a study that already holds a trial with those
    values (a resumed search) does not get it again. Returns a line for the log when a fresh
    study starts there, else None."""
    if not cfg.search.start_from_config:
        return None
    point, outside = space.config_point(cfg)
    if not point:
        return None
    fresh = not study.get_trials(deepcopy=False)
    study.enqueue_trial(point, user_attrs={"start": "config"}, skip_if_exists=True)
    if not fresh:
        return None
    values = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in point.items())
    sampled = (f"; sampled, the config's value lying outside the space: {', '.join(outside)}"
               if outside else "")
    return f"first trial at the config's settings (search.start_from_config): {values}{sampled}"


@dataclass(frozen=True)
class Steering:
    """The target as the sampler sees it (see the module docstring): ``target``'s constraints,
    each asked to hold by ``margin`` standard errors of its metric over ``sizes`` images
    (``objectives.margin_sizes``, ``objectives.required_slack``); a metric without a size asks
    for no margin."""

    target: tuple[Constraint, ...] = ()
    sizes: Mapping[str, float] = field(default_factory=dict)
    margin: float = 0.0

    @classmethod
    def of_run(cls, search: SearchConfig, splits: Mapping[str, int] | None) -> "Steering":
        """From a run's ``search`` config (its ``target``; ``pick_margin`` where ``pick`` is
        ``target``, the rule that reads it, else no margin) and a split summary (``run.json``'s
        ``prepared.splits``)."""
        margin = search.pick_margin if parse_rule(search.pick).kind == "target" else 0.0
        return cls(parse_target(search.target), margin_sizes(splits, search.pick_margin_unit),
                   float(margin))

    def values(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        """A point's constraint values (<= 0: met by the margin) by constraint text; relative
        thresholds use the point's ``base_<metric>`` values (the base model's validation
        metrics)."""
        base = {k[len("base_"):]: v for k, v in metrics.items() if k.startswith("base_")}
        out = {}
        for c, gap in zip(self.target, constraint_gaps(metrics, self.target, base)):
            n = self.sizes.get(c.metric)
            out[str(c)] = gap + required_slack(c, base, n, self.margin) if n else gap
        return out


def set_constraints(trial: optuna.Trial, metrics: Mapping[str, Any],
                    steering: Steering) -> None:
    """Set a running trial's constraint values before it is told (see the module docstring);
    none without a target."""
    for key, value in steering.values(metrics).items():
        trial.set_constraint(key, value)


def objective_values(metrics: dict) -> list[float] | None:
    """The study's values for a result, or None when one of them is missing or NaN."""
    values = [float(metrics.get(k, float("nan"))) for k in OBJECTIVES]
    return None if any(math.isnan(v) for v in values) else values


def add_sweep_points(study: optuna.Study, distributions: dict, record: dict,
                     steering: Steering = Steering()) -> int:
    """Add the extra soups a trial measured as completed trials of the study (same stage
    parameters, other soup coefficients), with their constraint values when ``steering`` has
    a target; returns how many were added."""
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
            user_attrs={"sweep_of": record["trial_id"], "source": "sweep",
                        "tune_trial_id": f"{record['trial_id']}~{i}",
                        **{k: point["metrics"][k] for k in ("mia_auc", "forget_sim")
                           if point["metrics"].get(k) is not None}},
            constraints=steering.values({**record, **point["metrics"]}) or None))
        added += 1
    return added
