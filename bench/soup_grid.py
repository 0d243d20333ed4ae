"""A finished search replayed with a finer soup sweep: every three-stage trial's cached forget
and remind stages are soup-ed with the base model at more alphas, the new soups are measured on
validation, and the pick rule chooses again among all the validation points; only then is the
newly chosen point measured on test. No stage is trained again, so the trials are those the
search ran (a search run with the finer sweep would also hand the new points to its sampler,
which this replay cannot show).

    python bench/soup_grid.py /tmp/suite/r16 --alphas 0.85,0.9,0.95
    python bench/soup_grid.py RUN_FOLDER [RUN_FOLDER ...] --alphas 0.9,0.95 --section soup-grid

Arguments: run folders, or storage folders whose sub-folders are runs (a folder with
``run.json``). Prints one row per run: how many validation points meet the target (and by the
pick's margin) before and after, the chosen point before and after (validation), and the
chosen point's test metrics with the target on test. ``--section NAME`` also writes the table
to bench/RESULTS.md between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine, missing_section, replace_section  # noqa: E402
from bench.suite import markdown, meets_target  # noqa: E402
from distforget.config import from_dict  # noqa: E402
from distforget.confirm import METHOD_SOURCES, choose, pick_options  # noqa: E402
from distforget.objectives import ACCURACIES, METRICS, margins  # noqa: E402
from distforget.pareto import usable  # noqa: E402
from distforget.prepare import prepare  # noqa: E402
from distforget.run_folder import RunFolder  # noqa: E402
from distforget.trial import Recipe, StageCache, local_evaluator  # noqa: E402


def run_folders(paths: list[str]) -> list[Path]:
    """Each path that is a run folder, or the run folders directly under it, in name order."""
    out: list[Path] = []
    for p in map(Path, paths):
        found = [p] if (p / "run.json").is_file() else sorted(
            q for q in p.iterdir() if (q / "run.json").is_file())
        if not found:
            raise SystemExit(f"{p}: neither a run folder (no run.json) nor a folder of runs")
        out += found
    return out


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of a benchmark that reads finished runs: the runs, and where its table
    goes (``--section``: between those markers of ``--results``)."""
    parser.add_argument("runs", nargs="+", help="run folders or folders of runs")
    parser.add_argument("--section", metavar="NAME", help="write the table to bench/RESULTS.md")
    parser.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))


def runs_to_read(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[Path]:
    """``args.runs``' run folders; a ``--section`` that cannot be written is refused first,
    before any run is read."""
    runs = run_folders(args.runs)
    missing = args.section and missing_section(Path(args.results), args.section)
    if missing:
        parser.error(f"--section {args.section!r}: {missing}")
    return runs


def publish(text: str, args: argparse.Namespace) -> None:
    """Print a benchmark's text, and write it to its ``--section`` where one is named."""
    print(text)
    if args.section:
        replace_section(Path(args.results), args.section, text)


def parse_alphas(text: str) -> list[float]:
    try:
        alphas = [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        raise SystemExit(f"--alphas {text!r}: expected comma-separated numbers in [0, 1]")
    if not alphas or any(not 0.0 <= a <= 1.0 for a in alphas):
        raise SystemExit(f"--alphas {text!r}: expected comma-separated numbers in [0, 1]")
    return alphas


def method_rows(results: pd.DataFrame) -> pd.DataFrame:
    """The search's own finished validation points (its trials and their soups), as the pick
    reads them."""
    return usable(results[results["source"].isin(METHOD_SOURCES)])


def new_soups(results: pd.DataFrame, alphas: list[float]) -> list[tuple[str, Recipe]]:
    """(parent trial id, recipe) for every alpha of ``alphas`` that a finished three-stage
    trial of the search was not yet measured at (its own soup or its sweep)."""
    method = method_rows(results)
    method = method[method["method"] == "three_stage"]
    parent = method["parent_id"].where(method["source"] == "sweep", method["trial_id"])
    seen = set(zip(parent, method["alpha"].round(9)))
    out = []
    for _, row in method[method["source"] == "trial"].iterrows():
        recipe = Recipe.from_dict(json.loads(row["recipe"]))
        out += [(row["trial_id"], recipe.with_soup(a, 0.0)) for a in alphas
                if (row["trial_id"], round(a, 9)) not in seen]
    return out


def test_verdict(row: pd.Series, base: pd.Series) -> dict:
    """A point's test metrics and the base model's (``base``: any tested row of the results,
    each carries ``test_base_*``), as bench/suite.py reads them."""
    return {**{f"test_{m}": float(row[f"test_{m}"]) for m in ACCURACIES},
            **{f"test_base_{m}": float(base[f"test_base_{m}"]) for m in ACCURACIES}}


def replay(run: Path, alphas: list[float], device: torch.device) -> dict:
    folder = RunFolder(str(run))
    info = folder.read_info()
    cfg = from_dict(info["config"])
    results = folder.read_results()
    before, _ = choose(results, cfg, info)
    if before is None:
        raise SystemExit(f"{run}: no finished trial to choose from")
    prepared = prepare(cfg, device, log=lambda message: None)
    evaluate = local_evaluator(prepared, StageCache(folder.stages), device, cfg.model.precision)
    # The replay measures what the search measured: the chosen point again, to the last digit.
    again = evaluate([Recipe.from_dict(json.loads(before["recipe"]))], "val")[0]
    for m in ACCURACIES:
        if abs(again[m] - float(before[m])) > 1e-6:
            raise SystemExit(f"{run}: the chosen point measures {m} {again[m]:.4f} now, "
                             f"{float(before[m]):.4f} in the search: not the same inputs")
    start = time.perf_counter()
    soups = new_soups(results, alphas)
    measured = evaluate([r for _, r in soups], "val")
    base = {f"base_{m}": float(before[f"base_{m}"]) for m in METRICS}
    rows = [{"trial_id": f"{parent}~a{r.alpha:g}", "parent_id": parent, "source": "sweep",
             "status": "ok", "method": "three_stage", "alpha": r.alpha, "beta": r.beta,
             "recipe": json.dumps(r.to_dict()), **m, **base}
            for (parent, r), m in zip(soups, measured)]
    grown = pd.concat([results, pd.DataFrame(rows)], ignore_index=True)
    after, why = choose(grown, cfg, info)
    tested = after
    if pd.isna(after.get(f"test_{ACCURACIES[0]}")):  # test images are read now, after the choice
        tested = pd.Series(evaluate([Recipe.from_dict(json.loads(after["recipe"]))], "test")[0])
    options = pick_options(cfg, info)
    counts = {}
    for name, table in (("before", results), ("after", grown)):
        slack = np.array(margins(method_rows(table).to_dict("records"), options["target"],
                                 options["base"], options["sizes"]))
        counts[name] = (int((slack >= 0).sum()), int((slack >= options["margin"]).sum()),
                        len(slack))
    verdict = test_verdict(tested, before)
    return {"run": f"{run.parent.name}/{run.name}", "new soups": len(rows),
            "eval_s": time.perf_counter() - start, "counts": counts, "before": before,
            "after": after, "why": why, "test": verdict,
            "before_met": meets_target(test_verdict(before, before)),
            "after_met": meets_target(verdict)}


def fmt_point(row: pd.Series) -> str:
    return (" / ".join(f"{float(row[m]):.3f}" for m in ACCURACIES)
            + f" (a {float(row['alpha']):.2f})")


def table(out: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{
        "run": o["run"],
        "meet target (by margin) / points, before": "{} ({}) / {}".format(*o["counts"]["before"]),
        "after": "{} ({}) / {}".format(*o["counts"]["after"]),
        "chosen before, val F / R / Z": fmt_point(o["before"]),
        "chosen after, val F / R / Z": fmt_point(o["after"]),
        "test before": " / ".join(f"{float(o['before'][f'test_{m}']):.3f}" for m in ACCURACIES),
        "test after": " / ".join(f"{o['test'][f'test_{m}']:.3f}" for m in ACCURACIES),
        "target on test, before -> after": f"{'yes' if o['before_met'] else 'no'} -> "
                                            f"{'yes' if o['after_met'] else 'no'}",
    } for o in out])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser)
    parser.add_argument("--alphas", required=True, help="extra soup alphas, e.g. 0.85,0.9,0.95")
    args = parser.parse_args(argv)
    alphas = parse_alphas(args.alphas)
    runs = runs_to_read(parser, args)
    torch.set_num_threads(1)
    out = []
    for run in runs:
        o = replay(run, alphas, torch.device("cpu"))
        print(f"{o['run']}: {o['new soups']} new soups in {o['eval_s']:.0f} s; chosen "
              f"{o['before']['trial_id']} -> {o['after']['trial_id']} ({o['why']})", flush=True)
        out.append(o)
    df = table(out)
    met = (sum(o["before_met"] for o in out), sum(o["after_met"] for o in out))
    text = (f"`python bench/soup_grid.py {' '.join(args.runs)} --alphas {args.alphas}` "
            f"({machine()}): {len(out)} runs; target met on test {met[0]}/{len(out)} before, "
            f"{met[1]}/{len(out)} after.\n\n" + markdown(df) + "\n")
    publish(text, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
