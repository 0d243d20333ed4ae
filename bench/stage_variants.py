"""Stage settings side by side: the three-stage method once per variant and seed (as
``distforget unlearn`` runs it, no search), with the per-stage diagnostics, to see which stage
falls short where.

    python bench/stage_variants.py - 0,1,2                       # the embedded default
    python bench/stage_variants.py configs/suite/cifar10-hierarchy.yaml 0 "defaults;paper"

Arguments: a config file (``-`` for the embedded default), seeds (comma-separated; each moves the
scenario, forget and remind seeds), and optionally the variants to run (``;``-separated names).
Prints one JSON line per run and a table: the chosen soup's validation metrics, whether they
meet the target (the default ``search.target``), the forget and zero-shot accuracy after the
forget stage and the forget, retain and zero-shot accuracy after the remind stage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distforget.config import load_config, read_yaml  # noqa: E402
from distforget.objectives import parse_target, shortfalls  # noqa: E402
from distforget.prepare import prepare  # noqa: E402
from distforget.unlearn import unlearn  # noqa: E402

# The paper's exact stages: the preset's keys as dotted overrides.
PAPER = {f"{section}.{key}": value
         for section, knobs in read_yaml(ROOT / "configs" / "presets" / "paper.yaml").items()
         for key, value in knobs.items()}

VARIANTS = {
    "defaults": {},
    "paper": PAPER,
    "no retain bound": {"restore.retain_floor": 0.0},  # the calibration rule before the bound
    "remind 4 epochs": {"remind.epochs": 4},  # the default before remind.epochs became 8
    "remind 8 epochs": {"remind.epochs": 8},  # the default before remind.epochs became 16
    "remind 16 epochs": {"remind.epochs": 16},  # the default before remind.epochs became 32
    "remind 32 epochs": {"remind.epochs": 32},  # the default now (as "defaults")
    "feature kd 10": {"remind.feature_kd": 10.0},
    "feature kd 100": {"remind.feature_kd": 100.0},
    "synthetic 0": {"remind.bn_align_images": 0},  # no BN-aligned images in the distillation set
    "synthetic 1024": {"remind.bn_align_images": 1024},  # four times the default 256
    "remind forget weight 3": {"remind.forget_weight": 3.0},  # the forget term's weight (100)
    "remind forget weight 10": {"remind.forget_weight": 10.0},  # the default before it was 100
    "remind forget weight 30": {"remind.forget_weight": 30.0},
    "remind forget weight 100": {"remind.forget_weight": 100.0},  # the default now
    "remind forget margin": {"remind.forget_loss": "margin"},  # the term's loss (distill)
    "forget lr 3e-4": {"forget.lr": 3e-4},  # a gentler forget stage (1e-3 by default)
    "remind cosine": {"remind.lr_schedule": "cosine"},  # cosine learning rate (constant now)
    "remind all layers": {"remind.layers": "all"},
    "remind all layers lr 3e-4": {"remind.layers": "all", "remind.lr": 3e-4},
    "remind all layers feature kd 10": {"remind.layers": "all", "remind.feature_kd": 10.0},
    "cifar10.yaml stages": {"forget.lr": 1e-4, "remind.lr": 5e-4, "remind.epochs": 16,
                            "remind.lambda_kd": 3.0, "remind.bn_align_images": 256,
                            "restore.grid": [0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95,
                                             1.0]},
}


def add_arguments(parser: argparse.ArgumentParser, default_variants: str) -> None:
    """The config, seeds and variants arguments (shared with bench/remind_trajectory.py)."""
    parser.add_argument("config", help="a config file, or - for the embedded default")
    parser.add_argument("seeds", help="comma-separated seeds, e.g. 11,12")
    parser.add_argument("variants", nargs="?", default=default_variants,
                        help=f"';'-separated, of: {'; '.join(VARIANTS)} (default: " + (
                            "all)" if default_variants == ";".join(VARIANTS)
                            else f"{default_variants})"))


def read_arguments(parser: argparse.ArgumentParser,
                   args: argparse.Namespace) -> tuple[str | None, list[int], list[str]]:
    """The config path (None: the embedded default), the seeds and the variant names, checked."""
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"seeds {args.seeds!r}: expected comma-separated integers, e.g. 11,12")
    names = args.variants.split(";")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"variant {unknown[0]!r}: expected one of {'; '.join(VARIANTS)}")
    return (None if args.config == "-" else args.config), seeds, names


def seeded(seed: int) -> dict[str, int]:
    """The overrides that move the scenario, forget and remind seeds together."""
    return {k: seed for k in ("scenario.seed", "forget.seed", "remind.seed")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, ";".join(VARIANTS))
    config, seeds, names = read_arguments(parser, parser.parse_args())
    torch.set_num_threads(1)
    rows = []
    for seed in seeds:
        prepared = prepare(load_config(config, seeded(seed)), torch.device("cpu"),
                           log=lambda m: None)
        base = prepared.base_metrics
        for name in names:
            cfg = load_config(config, {**seeded(seed), **VARIANTS[name]})
            start = time.time()
            (r,) = unlearn(cfg, ["three_stage"], device=torch.device("cpu"), out_dir=None,
                           prepared=prepared, log=lambda m: None)
            d = r["diagnostics"]
            missed = shortfalls(r, parse_target(cfg.search.target), base)
            row = dict(seed=seed, variant=name, F=r["forget_acc"], R=r["retain_acc"],
                       Z=r["zeroshot_acc"], alpha=r["alpha"], target=not missed,
                       F_after_forget=d["after_forget"]["forget_acc"],
                       F_after_remind=d["after_remind"]["forget_acc"],
                       R_after_remind=d["after_remind"]["retain_acc"],
                       Z_after_forget=d["after_forget"]["zeroshot_acc"],
                       Z_after_remind=d["after_remind"]["zeroshot_acc"],
                       baseF=base["forget_acc"], baseR=base["retain_acc"],
                       baseZ=base["zeroshot_acc"], s=round(time.time() - start))
            rows.append(row)
            print(json.dumps(row, default=float), flush=True)
    print(pd.DataFrame(rows).to_string(index=False, float_format="%.3f"))


if __name__ == "__main__":
    main()
