"""The pick's margin unit on finished searches: the same validation points picked twice, with the
margin in standard errors of the validation estimate alone (the unit before) and of the
difference between the validation and the test estimate (``objectives.margin_sizes``, the
unit now), at the run's ``search.pick_margin``. Both picks read validation metrics only; then
each chosen point's test metrics are read (from ``results.parquet``, where the search already
measured them, else measured now, after both choices). No stage is trained again, so both picks
choose among the points one search made (its sampler was steered by the run's own unit).

    python bench/pick_unit.py /tmp/suite/pu
    python bench/pick_unit.py RUN_FOLDER [RUN_FOLDER ...] --section pick-unit

Arguments: run folders, or storage folders whose sub-folders are runs. Prints one row per run:
how many validation points meet the target by the margin in each unit, the point each unit
chooses (validation and test metrics) and whether the target holds on test. ``--section NAME``
also writes the table to bench/RESULTS.md between ``<!-- NAME:begin -->`` and
``<!-- NAME:end -->``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402
from bench.soup_grid import (add_run_arguments, fmt_point, method_rows, publish,  # noqa: E402
                             runs_to_read, test_verdict)
from bench.suite import markdown, meets_target  # noqa: E402
from distforget.config import from_dict  # noqa: E402
from distforget.confirm import pick_options  # noqa: E402
from distforget.objectives import ACCURACIES, MARGIN_UNITS, margin_sizes, margins  # noqa: E402
from distforget.pareto import pick  # noqa: E402
from distforget.prepare import prepare  # noqa: E402
from distforget.run_folder import RunFolder  # noqa: E402
from distforget.trial import Recipe, StageCache, local_evaluator  # noqa: E402

def compare(run: Path, device: torch.device) -> dict:
    folder = RunFolder(str(run))
    info = folder.read_info()
    cfg = from_dict(info["config"])
    results = folder.read_results()
    rows = method_rows(results)
    if rows.empty:
        raise SystemExit(f"{run}: no finished trial to choose from")
    options = pick_options(cfg, info)
    splits = info.get("prepared", {}).get("splits", {})
    out = {"run": f"{run.parent.name}/{run.name}"}
    for unit in MARGIN_UNITS:  # both choices first: no test image is read before the second
        sizes = margin_sizes(splits, unit)
        chosen, why = pick(rows, cfg.search.pick, **{**options, "sizes": sizes, "unit": unit})
        slack = np.array(margins(rows.to_dict("records"), options["target"], options["base"],
                                 sizes))
        out[unit] = {"chosen": chosen, "why": why, "confident": int((slack >= options["margin"])
                                                                    .sum()), "points": len(rows)}
    tested = results[results[f"test_{ACCURACIES[0]}"].notna()] \
        if f"test_{ACCURACIES[0]}" in results else results.iloc[:0]
    if tested.empty:
        raise SystemExit(f"{run}: no test metrics in results.parquet (an unfinished search?)")
    evaluate = None
    for unit in MARGIN_UNITS:
        chosen = out[unit]["chosen"]
        if pd.isna(chosen.get(f"test_{ACCURACIES[0]}")):
            if evaluate is None:
                prepared = prepare(cfg, device, log=lambda message: None)
                evaluate = local_evaluator(prepared, StageCache(folder.stages), device,
                                           cfg.model.precision)
            chosen = pd.Series({**chosen.to_dict(), **evaluate(
                [Recipe.from_dict(json.loads(chosen["recipe"]))], "test")[0]})
        out[unit]["test"] = test_verdict(chosen, tested.iloc[0])
        out[unit]["met"] = meets_target(out[unit]["test"])
    return out


def table(out: list[dict]) -> pd.DataFrame:
    rows = []
    for o in out:
        for unit in MARGIN_UNITS:
            u = o[unit]
            rows.append({
                "run": o["run"], "margin unit": unit,
                "meet by margin / points": f"{u['confident']} / {u['points']}",
                "chosen": u["chosen"]["trial_id"],
                "val F / R / Z": fmt_point(u["chosen"]),
                "test F / R / Z": " / ".join(f"{u['test'][f'test_{m}']:.3f}"
                                             for m in ACCURACIES),
                "target on test": "yes" if u["met"] else "no"})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    runs = runs_to_read(parser, args)
    torch.set_num_threads(1)
    out = []
    for run in runs:
        o = compare(run, torch.device("cpu"))
        print(f"{o['run']}: " + "; ".join(f"{unit}: {o[unit]['why']}" for unit in MARGIN_UNITS),
              flush=True)
        out.append(o)
    met = {unit: sum(o[unit]["met"] for o in out) for unit in MARGIN_UNITS}
    text = (f"`python bench/pick_unit.py {' '.join(args.runs)}` ({machine()}): {len(out)} runs; "
            "target met on test " + ", ".join(f"{met[u]}/{len(out)} with the {u} unit"
                                              for u in MARGIN_UNITS)
            + ".\n\n" + markdown(table(out)) + "\n")
    publish(text, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
