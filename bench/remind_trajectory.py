"""The remind stage epoch by epoch: the model the stage would return if it stopped there (its EMA
weights when ``remind.ema_decay`` is set), on the calibration set D_m and the validation split.

    python bench/remind_trajectory.py configs/suite/cifar10-kmeans.yaml 11,12
    python bench/remind_trajectory.py - 11 "defaults;remind cosine" --every 2

Arguments as ``bench/stage_variants.py`` (a config file or ``-``, seeds, ``;``-separated
variants of that script). Each seed runs the forget stage once and the remind stage once per
variant; every ``--every`` epochs (and the last) it prints one JSON line and, at the end, a
table: the stage's accuracy on its training images (``train_F``, ``train_R``), on the calibration
set (``calib_F``, ``calib_R``) and on validation images (``F``, ``R``, ``Z``). No test image is
read. It shows how far the stage's end point moves between nearby epochs, which decides how much
one run's figures say.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.stage_variants import VARIANTS, add_arguments, read_arguments, seeded  # noqa: E402
from distforget.config import RemindConfig, load_config  # noqa: E402
from distforget.forget import run_forget  # noqa: E402
from distforget.prepare import Prepared, prepare  # noqa: E402
from distforget.remind import run_remind  # noqa: E402
from distforget.training import StageHooks, StageOutput  # noqa: E402


def stopped_here(snapshot: dict) -> dict[str, torch.Tensor]:
    """The image tower the stage returns if it stops at this snapshot: the EMA weights (an
    ``AveragedModel``'s ``module.`` entries) when there are any, else the trained ones."""
    if "ema" in snapshot:
        return {k[len("module."):]: v for k, v in snapshot["ema"].items()
                if k.startswith("module.")}
    return snapshot["visual"]


def trajectory(prepared: Prepared, cfg: RemindConfig, forgotten: StageOutput, every: int,
               device: torch.device) -> tuple[list[dict], StageOutput]:
    """One remind stage from ``forgotten``; a row every ``every`` epochs and at the last."""
    evaluator = prepared.evaluator(device)
    rows: list[dict] = []
    visual = prepared.model().visual.to(device)  # built once; each row loads its weights

    def on_epoch(epoch: int, metrics: dict, snapshot) -> None:
        if (epoch + 1) % every and epoch + 1 != cfg.epochs:
            return
        visual.load_state_dict(stopped_here(snapshot()))
        visual.eval()
        val, calib = evaluator.metrics(visual), evaluator.calibration(visual)
        rows.append(dict(epoch=epoch + 1, train_F=metrics.get("train_forget_acc"),
                         train_R=metrics.get("train_retain_acc"),
                         calib_F=calib["calib_forget_acc"], calib_R=calib["calib_retain_acc"],
                         F=val["forget_acc"], R=val["retain_acc"], Z=val["zeroshot_acc"]))

    out = run_remind(prepared, cfg, forgotten, device=device, hooks=StageHooks(on_epoch=on_epoch))
    return rows, out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, "defaults")
    parser.add_argument("--every", type=int, default=4, help="epochs between rows (default 4)")
    args = parser.parse_args(argv)
    config, seeds, names = read_arguments(parser, args)
    if args.every < 1:
        parser.error(f"--every {args.every}: expected 1 or more epochs")
    device = torch.device("cpu")
    torch.set_num_threads(1)
    table = []
    for seed in seeds:
        prepared = prepare(load_config(config, seeded(seed)), device, log=lambda m: None)
        forgotten: dict[str, StageOutput] = {}
        for name in names:
            cfg = load_config(config, {**seeded(seed), **VARIANTS[name]})
            if cfg.forget not in forgotten:  # variants that share the forget stage share its run
                forgotten[cfg.forget] = run_forget(prepared, cfg.forget, device=device)
            rows, _ = trajectory(prepared, cfg.remind, forgotten[cfg.forget], args.every, device)
            for row in rows:
                row = dict(seed=seed, variant=name, **row)
                table.append(row)
                print(json.dumps(row, default=float), flush=True)
    print(pd.DataFrame(table).to_string(index=False, float_format="%.3f"))


if __name__ == "__main__":
    main()
