"""How far a search's remind stage carries from its training images to held-out ones: for every
three-stage trial of finished runs, the accuracies the remind stage recorded on the images it
trained on (its last epoch: the forget and the retained training images) beside the same trial's
validation accuracies at alpha 1 (the reminded model itself, on held-out images of the same
subgroups). Reads run folders only (``results.parquet`` and the stage cache's ``meta.json``);
trains and measures nothing, and reads no test metric.

    python bench/stage_gap.py /tmp/suite/fw/cifar10-kmeans-s0
    python bench/stage_gap.py RUN_FOLDER [RUN_FOLDER ...] --section stage-gap

Arguments: run folders, or storage folders whose sub-folders are runs. Prints one row per run:
the trials read, the median (min-max) over them of each accuracy on training and on validation
images, and in how many trials the training forget images are forgotten (accuracy <= 0.05)
while the held-out ones are not. ``--section NAME`` also writes the table to bench/RESULTS.md
between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.soup_grid import add_run_arguments, method_rows, publish, runs_to_read  # noqa: E402
from bench.suite import markdown  # noqa: E402
from distforget.objectives import DEFAULT_TARGET, parse_target  # noqa: E402
from distforget.run_folder import RunFolder  # noqa: E402
from distforget.trial import StageCache  # noqa: E402

# The default target's forget threshold.
FORGOTTEN = next(c.value for c in parse_target(DEFAULT_TARGET) if c.metric == "forget_acc")


def trial_gaps(run: Path) -> pd.DataFrame:
    """One row per three-stage trial measured at alpha 1: the remind stage's last-epoch training
    accuracies and the trial's validation accuracies."""
    folder = RunFolder(str(run))
    rows = method_rows(folder.read_results())
    rows = rows[(rows["method"] == "three_stage") & (rows["alpha"] == 1.0)]
    cache = StageCache(folder.stages)
    out = []
    for _, row in rows.iterrows():
        key = json.loads(row["recipe"])["stages"].get("remind")
        meta = cache.meta("remind", key) if key else None
        if meta is None:
            continue
        last = meta["history"][-1]
        out.append({"train_forget_acc": last.get("train_forget_acc"),
                    "train_retain_acc": last.get("train_retain_acc"),
                    "val_forget_acc": row["forget_acc"], "val_retain_acc": row["retain_acc"]})
    return pd.DataFrame(out)


def spread(values: pd.Series) -> str:
    return f"{values.median():.3f} ({values.min():.3f}-{values.max():.3f})"


def summary(run: Path) -> dict:
    gaps = trial_gaps(run).dropna()
    if gaps.empty:
        raise SystemExit(f"{run}: no three-stage trial with a cached remind stage at alpha 1 "
                         "that recorded its training accuracies")
    held_back = ((gaps["train_forget_acc"] <= FORGOTTEN)
                 & (gaps["val_forget_acc"] > FORGOTTEN)).sum()
    return {"run": f"{run.parent.name}/{run.name}", "trials": len(gaps),
            "forget acc, train": spread(gaps["train_forget_acc"]),
            "forget acc, validation": spread(gaps["val_forget_acc"]),
            "retain acc, train": spread(gaps["train_retain_acc"]),
            "retain acc, validation": spread(gaps["val_retain_acc"]),
            f"train forget <= {FORGOTTEN:g}, validation not": f"{held_back}/{len(gaps)}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    args = parser.parse_args()
    runs = runs_to_read(parser, args)
    table = pd.DataFrame([summary(run) for run in runs])
    command = "python bench/stage_gap.py " + " ".join(args.runs)
    publish(f"`{command}`: the remind stage's last epoch on its training images against the "
            f"reminded model (alpha 1) on validation images; median (min-max) over each run's "
            f"three-stage trials.\n\n{markdown(table)}\n", args)


if __name__ == "__main__":
    main()
