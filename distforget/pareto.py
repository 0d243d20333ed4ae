"""The Pareto front, its hypervolume, and the rules that pick one point: pure functions over
the results table.

Objectives: ``forget_acc`` (lower is better), ``retain_acc`` and ``zeroshot_acc`` (higher is
better). ``to_minimize`` turns them into "lower is better" in this one place; everything else
works on that form. Rows whose status is not ``ok`` or that have a NaN objective are never on
the front.

Hypervolume is measured in the minimised form against the reference point
``(base_forget_acc, 0, 0)``: the base model's forget accuracy (forgetting nothing) and no
retained or zero-shot accuracy. ``normalized_hypervolume`` divides by the box of the ideal point
``(0, base_retain_acc, base_zeroshot_acc)``, so 1.0 is a model that forgets the subgroup
completely and keeps the base model's accuracy everywhere else.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from distforget.errors import ConfigError
from distforget.objectives import (MARGIN_UNIT_WORDS, OBJECTIVES, Constraint, margins, parse_rule,
                                   shortfalls)


def to_minimize(table: pd.DataFrame, objectives: dict[str, str] = OBJECTIVES) -> np.ndarray:
    """Objective columns as an [n, k] array in which lower is better for every column."""
    cols = []
    for name, sense in objectives.items():
        values = pd.to_numeric(table[name], errors="coerce").to_numpy(dtype=np.float64)
        cols.append(values if sense == "min" else -values)
    return np.stack(cols, axis=1) if cols else np.zeros((len(table), 0))


def non_dominated(points: np.ndarray) -> np.ndarray:
    """Mask of rows not dominated by any other row (minimisation). Rows with NaN are False;
    identical rows do not dominate each other, so ties are all kept."""
    points = np.asarray(points, dtype=np.float64)
    valid = ~np.isnan(points).any(axis=1)
    mask = valid.copy()
    idx = np.flatnonzero(valid)
    for i in idx:
        others = points[idx]
        dominated_by = np.all(others <= points[i], axis=1) & np.any(others < points[i], axis=1)
        if dominated_by.any():
            mask[i] = False
    return mask


def usable(table: pd.DataFrame) -> pd.DataFrame:
    """Rows that count: status ``ok`` (when there is a status) and every objective present."""
    ok = table["status"].eq("ok") if "status" in table else pd.Series(True, index=table.index)
    finite = ~np.isnan(to_minimize(table)).any(axis=1) if len(table) else np.zeros(0, bool)
    return table[ok.to_numpy() & finite]


def pareto_front(table: pd.DataFrame) -> pd.DataFrame:
    """The non-dominated rows of ``table`` (see ``usable``), in ascending ``forget_acc``."""
    rows = usable(table)
    if rows.empty:
        return rows
    front = rows[non_dominated(to_minimize(rows))]
    return front.sort_values(list(OBJECTIVES), ascending=[s == "min" for s in OBJECTIVES.values()])


def _hv2d(points: np.ndarray, ref: np.ndarray) -> float:
    """Area dominated by 2-D points (minimisation) inside the box below ``ref``."""
    pts = points[np.all(points < ref, axis=1)]
    if len(pts) == 0:
        return 0.0
    pts = pts[np.lexsort((pts[:, 1], pts[:, 0]))]
    area, best_y = 0.0, ref[1]
    for x, y in pts:
        if y < best_y:
            area += (ref[0] - x) * (best_y - y)
            best_y = y
    return float(area)


def hypervolume(points: np.ndarray, reference: Sequence[float]) -> float:
    """Exact hypervolume of 2-D or 3-D points (minimisation) against ``reference``; points not
    strictly better than the reference in every objective add nothing."""
    points = np.asarray(points, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if len(points) == 0:
        return 0.0
    points = points[~np.isnan(points).any(axis=1)]
    points = points[np.all(points < ref, axis=1)]
    if len(points) == 0:
        return 0.0
    if points.shape[1] == 2:
        return _hv2d(points, ref)
    if points.shape[1] != 3:
        raise ValueError("hypervolume supports 2 or 3 objectives")
    # Slice along the third objective: between consecutive z levels, the dominated area is the
    # 2-D hypervolume of the points at or below that level.
    zs = np.unique(points[:, 2])
    volume = 0.0
    for i, z in enumerate(zs):
        upper = zs[i + 1] if i + 1 < len(zs) else ref[2]
        volume += _hv2d(points[points[:, 2] <= z][:, :2], ref[:2]) * (upper - z)
    return float(volume)


def reference_point(base: dict[str, float]) -> np.ndarray:
    """The hypervolume reference in minimised form: (base_forget_acc, -0, -0)."""
    return np.array([base["forget_acc"], 0.0, 0.0])


def normalized_hypervolume(table: pd.DataFrame, base: dict[str, float]) -> float:
    """Hypervolume of the usable rows divided by the box of the ideal point (module docstring)."""
    rows = usable(table)
    hv = hypervolume(to_minimize(rows), reference_point(base))
    box = base["forget_acc"] * base["retain_acc"] * base["zeroshot_acc"]
    return hv / box if box > 0 else float("nan")


def knee(front: pd.DataFrame) -> pd.Series:
    """The knee of a front: the point closest (Euclidean) to the ideal point after each
    objective is scaled to [0, 1] over the front; ties go to the lower forget_acc."""
    if front.empty:
        raise ValueError("an empty front has no knee")
    pts = to_minimize(front)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    dist = np.linalg.norm((pts - lo) / span, axis=1)
    order = np.lexsort((pts[:, 0], dist))
    return front.iloc[order[0]]


def violations(rows: pd.DataFrame, constraints: Sequence[Constraint],
               base: Mapping[str, float] | None) -> np.ndarray:
    """Total shortfall of each row against the constraints (0 = every one met)."""
    total = np.zeros(len(rows))
    for c in constraints:
        if c.metric not in rows:
            raise ConfigError(f"constraint {c}: the results have no column {c.metric!r}")
        values = pd.to_numeric(rows[c.metric], errors="coerce").to_numpy(dtype=np.float64)
        gap = np.array([1.0 if v != v else c.gap(v, base) for v in values])
        met = np.array([v == v and c.met(v, base) for v in values])
        total += np.where(met, 0.0, np.maximum(gap, 1e-12))
    return total


def pick(table: pd.DataFrame, rule: str, *, target: Sequence[Constraint] = (),
         base: Mapping[str, float] | None = None, sizes: Mapping[str, int] | None = None,
         margin: float = 0.0, unit: str | None = None) -> tuple[pd.Series, str]:
    """The row a rule picks among usable rows, and a sentence saying why.

    ``target``: among rows that meet every constraint of ``target`` (thresholds relative to
    ``base``, the base model's validation metrics) by at least ``margin`` standard errors
    (``objectives.margins``; ``sizes``: images per metric from ``objectives.margin_sizes``, in
    the run's ``search.pick_margin_unit``, which ``unit`` names in the sentence), the highest
    ``zeroshot_acc``, then ``retain_acc``, then the lowest ``forget_acc``. If rows meet the
    target but none by that margin, the one with the largest margin: the point most likely to
    meet it again on new images, where a point just over a threshold (one image on 60) would
    miss it as often as not. If none meets it, the row with the smallest total shortfall, and
    the sentence says by how much the target is missed. Without ``sizes`` (or with ``margin``
    0) the margin asks nothing. ``knee``: see
    ``knee``. Constraint rules: among rows meeting every constraint, the best by the objective;
    if none meets them, the row with the smallest total violation (ties: best objective)."""
    rows = usable(table)
    if rows.empty:
        raise ValueError("no finished trial to pick from")
    parsed = parse_rule(rule)
    if parsed.kind == "knee":
        return knee(pareto_front(rows)), ("knee of the Pareto front: the point closest to the "
                                          "ideal point with each objective scaled to [0, 1] "
                                          "over the front")
    if parsed.kind == "target":
        if not target:
            raise ConfigError("pick rule 'target' needs a target (search.target)")
        violation = violations(rows, target, base)
        z, r, f = (rows[m].to_numpy(dtype=np.float64) for m in
                   ("zeroshot_acc", "retain_acc", "forget_acc"))
        text = ", ".join(str(c) for c in target)
        feasible = violation == 0
        slack = np.array(margins(rows.to_dict("records"), target, base, sizes))
        confident = feasible & (slack >= margin)
        errors = "standard errors" + (f" of the {MARGIN_UNIT_WORDS[unit]}" if unit else "")
        if confident.any():
            order = np.lexsort((f, -r, -z, ~confident))
            by = f" by at least {margin:g} {errors}" if margin > 0 and sizes else ""
            return rows.iloc[order[0]], (
                f"the highest zeroshot_acc (then retain_acc) among the {int(confident.sum())} "
                f"validation points that meet the target {text!r}{by}")
        if feasible.any():
            order = np.lexsort((-r, -z, -slack, ~feasible))
            return rows.iloc[order[0]], (
                f"the largest margin ({slack[order[0]]:.2f} {errors}) among the "
                f"{int(feasible.sum())} validation points that meet the target {text!r}; none "
                f"meets it by {margin:g}")
        idx = np.lexsort((-z, violation))[0]
        missed = "; ".join(shortfalls(rows.iloc[idx].to_dict(), target, base))
        return rows.iloc[idx], (f"TARGET NOT MET: no validation point meets {text!r}; this is "
                                f"the nearest one (total shortfall {violation[idx]:.3f}: "
                                f"{missed})")
    sense, metric = parsed.objective
    if metric not in rows:
        raise ConfigError(f"pick rule {rule!r}: unknown metric {metric!r}")
    violation = violations(rows, parsed.constraints, base)
    score = rows[metric].to_numpy(dtype=np.float64) * (1 if sense == "max" else -1)
    feasible = violation == 0
    if feasible.any():
        idx = np.flatnonzero(feasible)[np.argmax(score[feasible])]
        why = f"the {sense}imum {metric} among the {int(feasible.sum())} points meeting {rule!r}"
    else:
        idx = np.lexsort((-score, violation))[0]
        why = (f"no point meets {rule!r}; this is the closest one (smallest total violation, "
               f"{violation[idx]:.3f})")
    return rows.iloc[idx], why
