"""After the search has chosen: confirmation seeds, then test metrics. No Ray here; the caller
hands in how confirmation runs are launched and how recipes are evaluated.

The order is what keeps the test split honest:

1. the pick rule (``search.pick``, default ``target``) chooses a point among the method's
   validation rows (trials and their soups) — test images have not been read;
2. the chosen recipe is trained again with ``search.confirm_seeds`` further stage seeds (the same
   searched values and soup coefficients; ``forget.seed``, ``remind.seed`` and ``baseline.seed``
   each + 1, + 2, ...): rows with ``source: confirm`` whose ``parent_id`` is the chosen point;
3. only then are test images read, for the base model, every front row, the chosen row, the
   baselines' rows and the confirmation rows: their ``test_<metric>`` columns (with 95% Wilson
   intervals for the accuracies) are filled in ``results.parquet``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from distforget.config import RunConfig, from_dict, replace
from distforget.errors import DistforgetError
from distforget.objectives import (ACCURACIES, METRICS, Constraint, as_test, margin_sizes,
                                   parse_target, shortfalls)
from distforget.pareto import pareto_front, pick, usable
from distforget.results import write_table
from distforget.run_folder import RunFolder

if TYPE_CHECKING:  # distforget.trial imports torch and open_clip; `report --help` should not
    from distforget.trial import Evaluate

CONFIRM = "confirm"        # results.parquet source of the confirmation runs
METHOD_SOURCES = ("trial", "sweep")
SEED_KEYS = ("forget.seed", "remind.seed", "baseline.seed")

# run_confirmations(param dicts, parent trial id): trains and records each (results rows with
# source "confirm")
RunConfirmations = Callable[[list[dict[str, Any]], str], None]


def base_of(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The base model's metrics as plain names, from ``<prefix>base_<metric>`` keys."""
    out = {}
    for m in METRICS:
        value = metrics.get(f"{prefix}base_{m}")
        if value is not None and value == value:
            out[m] = float(value)
    return out


class SearchFailed(DistforgetError):
    """Every trial of the search failed: there is nothing to choose from."""


def failed_search(results: pd.DataFrame) -> None:
    """Raise ``SearchFailed`` naming the most common error when no trial of the method
    finished."""
    trials = results[results["source"] == "trial"]
    if len(trials) and usable(results[results["source"].isin(METHOD_SOURCES)]).empty:
        errors = trials["error"].fillna("no metrics").value_counts()
        raise SearchFailed(f"every trial failed ({len(trials)} of {len(trials)}); the most "
                           f"common error ({errors.iloc[0]} trials): {errors.index[0]}")


def run_config(info: Mapping[str, Any], rule: str | None = None) -> RunConfig:
    """A run's config from its ``run.json``, with another pick rule where one is given."""
    cfg = from_dict(info["config"])
    return cfg if rule is None else replace(cfg, {"search.pick": rule})


def pick_options(cfg: RunConfig, info: Mapping[str, Any]) -> dict[str, Any]:
    """What every pick of a run reads besides its rows: the target, the base model's
    validation metrics, the images behind each metric's margin unit, the margin and its unit
    (run.json, config)."""
    return {"target": parse_target(cfg.search.target), "base": info["base_metrics"],
            "sizes": margin_sizes(info.get("prepared", {}).get("splits"),
                                  cfg.search.pick_margin_unit),
            "margin": cfg.search.pick_margin, "unit": cfg.search.pick_margin_unit}


def choose(results: pd.DataFrame, cfg: RunConfig, info: Mapping[str, Any]
           ) -> tuple[pd.Series | None, str]:
    """The point the pick rule chooses among the method's validation rows, and why (``info``:
    the run's ``run.json``)."""
    rows = results[results["source"].isin(METHOD_SOURCES)]
    if usable(rows).empty:
        return None, ""
    return pick(rows, cfg.search.pick, **pick_options(cfg, info))


def confirmation_params(row: Mapping[str, Any], base_cfg: RunConfig, seeds: int
                        ) -> list[dict[str, Any]]:
    """The values of each confirmation run of ``row``: its searched values, its soup
    coefficients fixed, and every stage seed moved on by 1, 2, ... ``seeds``."""
    params = json.loads(row["params"]) if isinstance(row.get("params"), str) else {}
    soup = {"restore.choose": "fixed", "restore.alpha": float(row["alpha"]),
            "restore.beta": float(row["beta"])} if row.get("method") == "three_stage" else {}
    start = {k: getattr(getattr(base_cfg, k.split(".")[0]), "seed") for k in SEED_KEYS}
    return [{**params, **soup, **{k: int(params.get(k, start[k])) + i for k in SEED_KEYS}}
            for i in range(1, seeds + 1)]


def baseline_picks(results: pd.DataFrame, cfg: RunConfig, info: Mapping[str, Any]
                   ) -> dict[str, pd.Series]:
    """Each baseline's point, chosen among its own rows (its trials and soups) by the same
    rule on validation."""
    rows = usable(results[results["source"] == "baseline"])
    options = pick_options(cfg, info)
    return {method: pick(group, cfg.search.pick, **options)[0]
            for method, group in rows.groupby("method", sort=True)}


def rows_to_test(results: pd.DataFrame, chosen_id: str | None, baseline_ids=()
                 ) -> pd.DataFrame:
    """The rows whose test metrics the report gives: the method's front, the chosen row, each
    baseline's chosen row and the confirmation runs (finished ones only)."""
    method = results[results["source"].isin(METHOD_SOURCES)]
    ids = set(pareto_front(method)["trial_id"]) | set(baseline_ids)
    if chosen_id is not None:
        ids.add(chosen_id)
    ids |= set(usable(results[results["source"] == CONFIRM])["trial_id"])
    return usable(results[results["trial_id"].isin(ids)])


def add_test_metrics(folder: RunFolder, metrics: Mapping[str, Mapping[str, float]],
                     base_test: Mapping[str, float]) -> pd.DataFrame:
    """Write each row's test metrics (by trial id) and the base model's (``test_base_<m>``, on
    every row) into results.parquet; returns the table."""
    df = folder.read_results().set_index("trial_id")
    measured = pd.DataFrame.from_dict(dict(metrics), orient="index")
    for key in measured.columns.difference(df.columns):
        df[key] = np.nan
    df.update(measured)
    df = df.reset_index()
    for key, value in base_test.items():
        df[f"test_base_{key[len('test_'):]}" if key.startswith("test_") else key] = value
    write_table(folder.results, df)
    return df


def confirmation_summary(results: pd.DataFrame, chosen: Mapping[str, Any],
                         target: Sequence[Constraint]) -> dict[str, Any]:
    """The chosen point and its confirmation runs on the test images: each seed's metrics,
    their mean and standard deviation, and whether the target holds on each seed (relative
    thresholds against the base model's test metrics)."""
    # Confirmation runs in the order of their seeds (Tune names grid trials in that order).
    runs = [dict(chosen)] + [r.to_dict() for _, r in results[
        (results["source"] == CONFIRM) & (results["parent_id"] == chosen["trial_id"])
        & (results["status"] == "ok")].sort_values("trial_id").iterrows()]
    base_test = base_of(chosen, prefix="test_")
    per_seed = []
    for i, run in enumerate(runs):
        test = {m: run.get(as_test(m)) for m in METRICS}
        val = {m: run.get(m) for m in METRICS}
        tested = all(test[m] is not None and test[m] == test[m] for m in ACCURACIES)
        misses = shortfalls(test, target, base_test) if tested else ["no test metrics"]
        per_seed.append({
            "trial_id": run["trial_id"], "seed_offset": i,
            "val": val, "test": test,
            "test_interval": {m: (run.get(f"{as_test(m)}_lo"), run.get(f"{as_test(m)}_hi"))
                              for m in ACCURACIES},
            "target_met": not misses, "target_missed_by": misses})
    summary = {"seeds": per_seed, "mean": {}, "std": {},
               "target_met_on_every_seed": all(s["target_met"] for s in per_seed),
               "target": ", ".join(str(c) for c in target)}
    for m in ACCURACIES:
        values = np.array([s["test"][m] for s in per_seed], dtype=np.float64)
        values = values[~np.isnan(values)]
        summary["mean"][m] = float(values.mean()) if len(values) else float("nan")
        summary["std"][m] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return summary


def finish(folder: RunFolder, cfg: RunConfig, *, evaluate: Evaluate,
           run_confirmations: RunConfirmations, log: Callable[[str], None] = print
           ) -> dict[str, Any]:
    """Steps 1 to 3 of the module docstring; returns the chosen row (with its test metrics),
    why it was chosen, and the confirmation summary. Confirmation runs that a resumed search
    already has are not run again."""
    info = folder.read_info()
    target = parse_target(cfg.search.target)
    results = folder.read_results()
    chosen, why = choose(results, cfg, info)
    if chosen is None:
        return {"chosen": None, "why": "", "confirmation": None}
    done = int(((results["source"] == CONFIRM) & (results["parent_id"] == chosen["trial_id"]))
               .sum())
    wanted = confirmation_params(chosen, cfg, cfg.search.confirm_seeds)
    if len(wanted) > done:
        log(f"confirming {chosen['trial_id']} with {len(wanted) - done} further seed(s)")
        run_confirmations(wanted[done:], chosen["trial_id"])
        results = folder.read_results()

    # The choice is made: now, and only now, the test images are read.
    picks = baseline_picks(results, cfg, info)
    todo = rows_to_test(results, chosen["trial_id"], [r["trial_id"] for r in picks.values()])
    from distforget.trial import Recipe

    recipes = [Recipe("base")] + [Recipe.from_dict(json.loads(r)) for r in todo["recipe"]]
    measured = evaluate(recipes, "test")
    base_test, rows = measured[0], measured[1:]
    results = add_test_metrics(folder, dict(zip(todo["trial_id"], rows)), base_test)
    chosen = results[results["trial_id"] == chosen["trial_id"]].iloc[0]
    summary = confirmation_summary(results, chosen.to_dict(), target)
    return {"chosen": chosen.to_dict(), "why": why, "confirmation": summary}
