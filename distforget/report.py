"""A search's front, plot and report, rebuilt from ``results.parquet`` alone (no GPU, no Ray):

    python -m distforget.report --run distforget_runs/embedded-default [--pick RULE]

writes ``pareto.parquet``, ``pareto.csv``, ``pareto.png`` and ``report.md`` in the run folder.
"""

from __future__ import annotations

import argparse
import io
import json
from typing import Any

import numpy as np
import pandas as pd

from distforget import storage
from distforget.cli import run_cli
from distforget.errors import ConfigError
from distforget.evaluate import METRICS
from distforget.pareto import (OBJECTIVES, hypervolume, normalized_hypervolume, pareto_front,
                               pick, reference_point, to_minimize, usable)
from distforget.results import read_results, write_table

SHOWN = ["trial_id", "source", "forget_acc", "retain_acc", "zeroshot_acc", "mia_auc", "alpha"]


def read_run_info(run: str) -> dict[str, Any]:
    path = storage.join(run, "run.json")
    if not storage.exists(path):
        raise ConfigError(f"{run!r} is not a distforget run folder: no run.json")
    return json.loads(storage.read_bytes(path))


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return "" if np.isnan(v) else f"{v:.3g}" if abs(v) < 0.01 and v != 0 else f"{v:.3f}"
    return "" if v is None else str(v)


def markdown_table(df: pd.DataFrame, columns: list[str]) -> str:
    cols = [c for c in columns if c in df]
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(_fmt(row[c]) for c in cols) + " |")
    return "\n".join(lines)


def plot_front(method_rows: pd.DataFrame, front: pd.DataFrame, chosen: pd.Series | None,
               baselines: pd.DataFrame, base: dict[str, float]) -> bytes:
    """Three projections of the objectives: every point, the front, the chosen point, the base
    model and each baseline."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = [("forget_acc", "retain_acc"), ("forget_acc", "zeroshot_acc"),
             ("retain_acc", "zeroshot_acc")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    markers = ["s", "^", "v", "D", "P", "X", "<", ">"]
    for ax, (x, y) in zip(axes, pairs):
        ax.scatter(method_rows[x], method_rows[y], s=14, c="0.75", label="three-stage points")
        ax.scatter(front[x], front[y], s=30, c="tab:blue", label="Pareto front")
        if chosen is not None:
            ax.scatter([chosen[x]], [chosen[y]], s=160, facecolors="none", edgecolors="tab:red",
                       linewidths=2, label="chosen")
        ax.scatter([base[x]], [base[y]], marker="*", s=220, c="black", label="base model")
        for i, (method, group) in enumerate(baselines.groupby("method", sort=True)):
            ax.scatter(group[x], group[y], marker=markers[i % len(markers)], s=60,
                       label=f"baseline {method}")
        ax.set_xlabel(f"{x} ({'lower' if OBJECTIVES[x] == 'min' else 'higher'} is better)")
        ax.set_ylabel(f"{y} ({'lower' if OBJECTIVES[y] == 'min' else 'higher'} is better)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle("distforget: forgetting vs keeping")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def build_report(run: str, rule: str | None = None) -> dict[str, Any]:
    """Rebuild the front, plot and report of a run; returns the chosen row and why."""
    info = read_run_info(run)
    rule = rule or info["config"]["search"]["pick"]
    base = info["base_metrics"]
    results = read_results(storage.join(run, "results.parquet"))
    method_rows = results[results["source"].isin(["trial", "sweep"])]
    baselines = usable(results[results["source"] == "baseline"])
    front = pareto_front(method_rows)
    write_table(storage.join(run, "pareto.parquet"), front)
    storage.write_bytes(storage.join(run, "pareto.csv"), front.to_csv(index=False).encode())

    chosen, why = (pick(method_rows, rule) if not usable(method_rows).empty else (None, ""))
    ref = reference_point(base)
    hv_raw = hypervolume(to_minimize(usable(method_rows)), ref)
    hv = normalized_hypervolume(method_rows, base)
    storage.write_bytes(storage.join(run, "pareto.png"),
                        plot_front(usable(method_rows), front, chosen, baselines, base))

    trials = results[results["source"] == "trial"]
    lines = [f"# distforget report: {info['config']['output']['name']}", ""]
    sc = info["config"]["scenario"]
    target = (f"subgroup `{sc['forget_subgroup']}` of class `{sc['forget_class']}`"
              if sc["forget_subgroup"] else f"the whole class `{sc['forget_class']}`")
    lines += [f"Model `{info['model']['name']}` (weights: {info['model']['weights']}); forget "
              f"{target}; subgroups by {info['prepared']['subgroup_rule']}.",
              "", f"Trials: {len(trials)} ({int((trials['status'] == 'ok').sum())} finished, "
              f"{int((trials['status'] == 'failed').sum())} failed); "
              f"{len(method_rows) - len(trials)} extra soups measured in trials; "
              f"stage cache: {int(trials['stage_cache_hits'].fillna(0).sum())} hits, "
              f"{int(trials['stage_cache_misses'].fillna(0).sum())} misses.", ""]
    lines += ["## Base model", "", markdown_table(pd.DataFrame([base]), list(METRICS)), ""]
    lines += ["## Pareto front", "", f"{len(front)} non-dominated points over forget_acc "
              "(lower), retain_acc (higher), zeroshot_acc (higher).", "",
              markdown_table(front, SHOWN + [c for c in front if "." in c]), ""]
    lines += ["## Chosen point", ""]
    if chosen is not None:
        lines += [f"Rule `{rule}`: {why}.", "", markdown_table(pd.DataFrame([chosen]), SHOWN), ""]
    else:
        lines += ["No finished trial yet.", ""]
    lines += ["## Hypervolume", "",
              f"{hv_raw:.4f} against the reference point (forget_acc={ref[0]:.3f}, "
              f"retain_acc=0, zeroshot_acc=0) (the base model's forget accuracy, no accuracy "
              f"kept); normalised by the ideal box: **{hv:.3f}** (1.0 = forgets completely and "
              "keeps the base model's retain and zero-shot accuracy).", ""]
    if not baselines.empty:
        rows = []
        for method, group in baselines.groupby("method", sort=True):
            best, _ = pick(group, rule if rule != "knee" else
                           "forget_acc<=0.05, max zeroshot_acc")
            rows.append({**best.to_dict(), "hypervolume": normalized_hypervolume(group, base)})
        lines += ["## Baselines", "", "Best point of each baseline (same splits and budget) "
                  "under the same rule (the knee rule reads as `forget_acc<=0.05, max "
                  "zeroshot_acc` for a single point), with its normalised hypervolume.", "",
                  markdown_table(pd.DataFrame(rows), ["method"] + SHOWN[2:-1] + ["hypervolume"]),
                  ""]
    lines += ["![front](pareto.png)", ""]
    storage.write_bytes(storage.join(run, "report.md"), "\n".join(lines).encode())
    return {"chosen": None if chosen is None else chosen.to_dict(), "why": why, "rule": rule,
            "hypervolume": hv, "front_size": len(front)}


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog or "python -m distforget.report",
                                     description="Rebuild a search's front, plot and report.")
    parser.add_argument("--run", required=True, help="the run folder (<storage>/<name>)")
    parser.add_argument("--pick", default=None, help="pick rule (default: the run's)")
    parser.add_argument("--debug", action="store_true")

    def run(args) -> int:
        out = build_report(args.run, args.pick)
        print(f"front: {out['front_size']} points; hypervolume {out['hypervolume']:.3f}; "
              f"chosen: {out['chosen']['trial_id'] if out['chosen'] else None} ({out['why']})")
        return 0

    return run_cli(parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
