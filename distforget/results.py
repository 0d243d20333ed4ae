"""The results table: one row per trial (and per extra soup a trial measured), appended as
trials finish, so fronts, reports and plots can be rebuilt without a GPU.

Columns: ``trial_id``, ``parent_id`` (the trial a sweep point belongs to, or the point a
confirmation run repeats), ``source`` (``trial`` and its soups ``sweep``: the method's search;
``baseline``, with a searched baseline's soups; ``confirm``), ``status`` (ok or failed),
``error``, ``node_id`` (the Ray node the trial's own process last ran on; null outside Ray),
``method``, every searched value under
its config key (``forget.lr``, ...), ``alpha``/``beta`` (the soup), every metric and its
``base_`` twin, ``calib_*``, ``wall_s``, stage-cache hits and misses, ``train_steps``, and
``recipe``/``params`` as JSON.
"""

from __future__ import annotations

import io
import json
from typing import Any, Iterable

import pandas as pd

from distforget import storage
from distforget.objectives import METRICS

FIXED_COLUMNS = (
    ["trial_id", "parent_id", "source", "status", "error", "node_id", "method", "alpha", "beta"]
    + list(METRICS) + [f"base_{m}" for m in METRICS]
    + ["calib_forget_acc", "calib_retain_acc", "wall_s", "stage_cache_hits",
       "stage_cache_misses", "train_steps", "recipe", "params"])


def rows_from_record(record: dict[str, Any]) -> list[dict[str, Any]]:
    """A trial's record (written by the trial) as table rows: the trial, then its sweep points."""
    params = record.get("params", {})
    base = {k: v for k, v in record.items() if k in FIXED_COLUMNS}
    row = {**base, **params,
           "params": json.dumps(params, sort_keys=True),
           "recipe": json.dumps(record.get("recipe")) if record.get("recipe") else None}
    rows = [row]
    for i, point in enumerate(record.get("sweep", [])):
        recipe = point["recipe"]
        sweep_params = dict(params)
        for key, value in (("restore.alpha", recipe["alpha"]), ("restore.beta", recipe["beta"])):
            if key in params:
                sweep_params[key] = value
        rows.append({**row, **point["metrics"], **sweep_params,
                     "trial_id": f"{record['trial_id']}~{i}", "parent_id": record["trial_id"],
                     "source": "sweep" if record["source"] == "trial" else record["source"],
                     "alpha": recipe["alpha"], "beta": recipe["beta"],
                     "recipe": json.dumps(recipe), "params": json.dumps(sweep_params,
                                                                        sort_keys=True),
                     "stage_cache_hits": 0, "stage_cache_misses": 0, "train_steps": 0,
                     "wall_s": 0.0, "calib_forget_acc": None, "calib_retain_acc": None})
    return rows


def _ordered(df: pd.DataFrame) -> pd.DataFrame:
    fixed = [c for c in FIXED_COLUMNS if c in df]
    return df[fixed + sorted(c for c in df if c not in FIXED_COLUMNS)]


def read_results(path: str) -> pd.DataFrame:
    """The table, with every fixed column present (empty when there is no file yet)."""
    if not storage.exists(path):
        return pd.DataFrame(columns=FIXED_COLUMNS)
    df = pd.read_parquet(io.BytesIO(storage.read_bytes(path)))
    for col in FIXED_COLUMNS:
        if col not in df:
            df[col] = None
    return df


def write_table(path: str, df: pd.DataFrame) -> None:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    storage.write_bytes(path, buf.getvalue())


def append_results(path: str, rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Append rows (a row whose ``trial_id`` is present already is skipped) and rewrite the
    file atomically. Returns the whole table."""
    old = read_results(path)
    new = pd.DataFrame(list(rows))
    if not new.empty:
        new = new[~new["trial_id"].isin(set(old["trial_id"]))]
    if new.empty:
        return old
    frames = [f for f in (old, new) if not f.empty]
    df = _ordered(pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0])
    for col in df.columns:  # parameters can mix types (None, floats, strings) across rows
        if df[col].dtype == object and col not in ("recipe", "params", "error", "trial_id",
                                                   "parent_id", "source", "status", "method",
                                                   "node_id"):
            kinds = {type(v) for v in df[col] if v is not None and v == v}
            if len(kinds) > 1:
                df[col] = df[col].map(lambda v: None if v is None else str(v))
    write_table(path, df)
    return df
