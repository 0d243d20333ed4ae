"""A search's front, plot and report, rebuilt from ``results.parquet`` alone (no GPU, no Ray):

    python -m distforget.report --run distforget_runs/embedded-default [--pick RULE]

writes ``pareto.parquet``, ``pareto.csv``, ``pareto.png`` and ``report.md`` in the run folder.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import numbers
from typing import TYPE_CHECKING, Any

from distforget.cli import run_cli
from distforget.objectives import (ACCURACIES, METRICS, OBJECTIVES, as_test, parse_target,
                                   shortfalls)

if TYPE_CHECKING:
    import pandas as pd

# pandas, pyarrow and optuna (about 1 s to import) are imported where they are used, so that
# `distforget report --help` answers at once.

SHOWN = ["trial_id", "source", "forget_acc", "retain_acc", "zeroshot_acc", "mia_auc", "alpha"]


def _fmt(v: Any) -> str:
    if isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral):  # numpy's too
        v = float(v)
        return "" if math.isnan(v) else f"{v:.3g}" if abs(v) < 0.01 and v != 0 else f"{v:.3f}"
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


def budgets(results: pd.DataFrame) -> pd.DataFrame:
    """Per method: the trials run (each trains), the points evaluated (trials and their extra
    soups) and the summed trial wall time."""
    import pandas as pd

    rows = []
    # A sweep row is a point of its trial (source "sweep" for the method's search; a searched
    # baseline's soups keep the source "baseline" and carry a parent_id).
    runs = results[(results["source"] != "sweep") & results["parent_id"].isna()
                   | (results["source"] == "confirm")]
    for (source, method), group in runs.groupby(["source", "method"], sort=True):
        points = (len(results[(results["source"] == "sweep") & (results["method"] == method)])
                  if source == "trial" else
                  int((results["source"] == source).mul(results["method"] == method).sum()))
        rows.append({"source": source, "method": method, "trials": len(group),
                     "points": len(group) + points if source == "trial" else points,
                     "failed": int((group["status"] != "ok").sum()),
                     "wall_s": float(pd.to_numeric(group["wall_s"]).fillna(0).sum())})
    return pd.DataFrame(rows)


def with_interval(row: pd.Series, metric: str) -> str:
    """``0.912 [0.871, 0.941]``: a test accuracy and its 95% interval ('' if not measured)."""
    value = row.get(as_test(metric))
    if value is None or value != value:
        return ""
    lo, hi = row.get(f"{as_test(metric)}_lo"), row.get(f"{as_test(metric)}_hi")
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]" if lo == lo and hi == hi else f"{value:.3f}"


def point_lines(row: pd.Series) -> list[str]:
    """One point's validation and test metrics as a small table."""
    lines = ["| metric | validation | test [95% interval] | base validation | base test |",
             "| --- | --- | --- | --- | --- |"]
    for m in METRICS:
        test = with_interval(row, m) if m in ACCURACIES else _fmt(row.get(as_test(m)))
        lines.append(f"| {m} | {_fmt(row.get(m))} | {test} | {_fmt(row.get(f'base_{m}'))} | "
                     f"{_fmt(row.get(f'test_base_{m}'))} |")
    return lines


def build_report(run: str, rule: str | None = None, interrupted: dict | None = None
                 ) -> dict[str, Any]:
    """Rebuild the front, plot and report of a run; returns the chosen row and why.

    Everything chosen here (front, pick, hypervolume) is computed on validation metrics; the
    test columns, where the search measured them, are only shown. ``interrupted`` (``signal``,
    ``trials``, ``failed``, ``of``) heads the report as a search stopped part-way."""
    import pandas as pd

    from distforget import storage
    from distforget.confirm import METHOD_SOURCES, baseline_picks, choose, run_config
    from distforget.pareto import (hypervolume, normalized_hypervolume, pareto_front,
                                   reference_point, to_minimize, usable)
    from distforget.results import write_table
    from distforget.run_folder import RunFolder

    folder = RunFolder(run)
    info = folder.read_info()
    cfg = run_config(info, rule)
    base = info["base_metrics"]
    results = folder.read_results()
    method_rows = results[results["source"].isin(METHOD_SOURCES)]
    baselines = usable(results[results["source"] == "baseline"])
    front = pareto_front(method_rows)
    write_table(folder.path(folder.PARETO), front)
    storage.write_bytes(folder.path(folder.PARETO_CSV), front.to_csv(index=False).encode())

    chosen, why = choose(results, cfg, info)
    ref = reference_point(base)
    hv_raw = hypervolume(to_minimize(usable(method_rows)), ref)
    hv = normalized_hypervolume(method_rows, base)
    storage.write_bytes(folder.path(folder.PLOT),
                        plot_front(usable(method_rows), front, chosen, baselines, base))

    target = parse_target(cfg.search.target)
    splits = info.get("prepared", {}).get("splits", {})
    lines = [f"# distforget report: {cfg.output.name}", ""]
    if interrupted is not None:
        lines += [f"**Interrupted** ({interrupted['signal']}) after {interrupted['trials']} of "
                  f"{interrupted['of']} trials ({interrupted['failed']} failed). What follows "
                  "covers the finished trials, on validation only: no confirmation runs, no test "
                  "metrics, nothing exported. Run the same command again to resume.", ""]
    sc = cfg.scenario
    what = (f"subgroup `{sc.forget_subgroup}` of class `{sc.forget_class}`"
            if sc.forget_subgroup else f"the whole class `{sc.forget_class}`")
    lines += [f"Model `{info['model']['name']}` (weights: {info['model']['weights']}); forget "
              f"{what}; subgroups by {info['prepared']['subgroup_rule']}.", ""]
    lines += ["## Protocol", "",
              "Validation chooses, test reports. Every choice (the search's objectives and "
              "constraints, the soup sweeps, the Pareto front, the pick, the hypervolume) sees "
              "the validation images only (" + ", ".join(
                  f"{k[4:]} {v}" for k, v in splits.items() if k.startswith("val_")) +
              "); the test images (" + ", ".join(
                  f"{k[5:]} {v}" for k, v in splits.items() if k.startswith("test_")) +
              ") are read once the point is chosen, for the base model, the front, the chosen "
              "point, its confirmation runs and the baselines. Test accuracies carry 95% Wilson "
              "score intervals.", "",
              f"Target: `{cfg.search.target}` (relative thresholds against the base model's "
              "validation metrics).", ""]
    table = budgets(results)
    lines += ["## Budgets as run", ""]
    if not table.empty:
        lines += [markdown_table(table, list(table.columns)), ""]
    if cfg.search.baseline_trials == 1 and cfg.search.baselines:
        lines += ["Each baseline ran once at its default settings (not searched): one point "
                  "each, against the method's searched trials and soups above.", ""]
    lines += ["## Base model", "", markdown_table(pd.DataFrame([{
        **{m: base.get(m) for m in METRICS},
        **{as_test(m): results[f"test_base_{m}"].dropna().iloc[0]
           for m in METRICS if f"test_base_{m}" in results
           and results[f"test_base_{m}"].notna().any()}}]),
        list(METRICS) + [as_test(m) for m in METRICS]), ""]
    lines += ["## Pareto front", "", f"{len(front)} non-dominated validation points over "
              "forget_acc (lower), retain_acc (higher), zeroshot_acc (higher), with their test "
              "metrics.", "",
              markdown_table(front, SHOWN + [as_test(m) for m in ACCURACIES]
                             + [c for c in front if "." in c and front[c].notna().any()]), ""]
    lines += ["## Chosen point", ""]
    if chosen is not None:
        row = results[results["trial_id"] == chosen["trial_id"]].iloc[0]
        missed = shortfalls(row, target, base)
        lines += [f"Rule `{cfg.search.pick}`: {why}.", "",
                  f"Point `{row['trial_id']}` (method {row['method']}, alpha "
                  f"{_fmt(row.get('alpha'))}); target on validation: "
                  f"{'met' if not missed else 'NOT MET: ' + '; '.join(missed)}.", "",
                  *point_lines(row), ""]
        lines += confirmation_lines(results, row, target)
    else:
        lines += ["No finished trial yet.", ""]
    lines += ["## Hypervolume", "",
              f"{hv_raw:.4f} against the reference point (forget_acc={ref[0]:.3f}, "
              f"retain_acc=0, zeroshot_acc=0) (the base model's forget accuracy, no accuracy "
              f"kept); normalised by the ideal box: **{hv:.3f}** (1.0 = forgets completely and "
              "keeps the base model's retain and zero-shot accuracy). Validation metrics.", ""]
    if not baselines.empty:
        rows = [{**best.to_dict(), "hypervolume": normalized_hypervolume(
                    baselines[baselines["method"] == method], base)}
                for method, best in baseline_picks(results, cfg, info).items()]
        lines += ["## Baselines", "", "Each baseline's point chosen by the same rule on "
                  "validation, on the same splits, with its test metrics and normalised "
                  "hypervolume (validation).", "",
                  markdown_table(pd.DataFrame(rows), ["method"] + SHOWN[2:-1]
                                 + [as_test(m) for m in ACCURACIES] + ["hypervolume"]), ""]
    lines += [f"![front]({folder.PLOT})", ""]
    storage.write_bytes(folder.report, "\n".join(lines).encode())
    return {"chosen": None if chosen is None else chosen.to_dict(), "why": why,
            "rule": cfg.search.pick, "hypervolume": hv, "front_size": len(front)}


def confirmation_lines(results: pd.DataFrame, row: pd.Series, target) -> list[str]:
    """The chosen point's seeds: each seed's test metrics, mean and spread, target per seed."""
    from distforget.confirm import confirmation_summary

    summary = confirmation_summary(results, row.to_dict(), target)
    if len(summary["seeds"]) < 2:
        return []
    lines = ["### Confirmation seeds", "",
             "The chosen recipe trained again with other stage seeds (same values, same soup); "
             "test metrics, target judged against the base model's test metrics.", "",
             "| run | seed offset | test forget_acc | test retain_acc | test zeroshot_acc | "
             "target met |", "| --- | --- | --- | --- | --- | --- |"]
    for s in summary["seeds"]:
        lines.append(f"| {s['trial_id']} | +{s['seed_offset']} | " + " | ".join(
            _fmt(s["test"][m]) for m in ACCURACIES) + " | " +
            ("yes" if s["target_met"] else "no: " + "; ".join(s["target_missed_by"])) + " |")
    lines.append("| mean ± sd | | " + " | ".join(
        f"{summary['mean'][m]:.3f} ± {summary['std'][m]:.3f}" for m in ACCURACIES) + " | " +
        ("on every seed" if summary["target_met_on_every_seed"] else "not on every seed")
        + " |")
    return lines + [""]


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog or "python -m distforget.report",
                                     description="Rebuild a search's front, plot and report.")
    parser.add_argument("--run", required=True, help="the run folder (<storage>/<name>)")
    parser.add_argument("--pick", default=None, help="pick rule (default: the run's)")
    parser.add_argument("--debug", action="store_true")

    def run(args) -> int:
        from distforget import storage
        from distforget.run_folder import RunFolder

        out = build_report(args.run, args.pick)
        chosen = out["chosen"]["trial_id"] if out["chosen"] else None
        print(f"front: {out['front_size']} points; hypervolume {out['hypervolume']:.3f}; "
              f"chosen by `{out['rule']}`: {chosen} ({out['why']})")
        best = storage.join(RunFolder(args.run).best, "distforget.json")
        if storage.exists(best):
            held = json.loads(storage.read_bytes(best))["trial_id"]
            print(f"best/ holds {held}" + ("" if held == chosen else
                  f"; to export {chosen} instead: distforget export --run {args.run} "
                  f"--pick '{out['rule']}' --out {RunFolder(args.run).best}"))
        return 0

    return run_cli(parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
