"""How fast each Optuna sampler finds a good front: hypervolume after N trials for TPE, NSGA-II,
GP and random search on the same scenario and search space, over several seeds, and the number
of trials each needs to reach 95% of the best hypervolume seen in any run.

Each trial's soup sweep counts towards the front, as in ``python -m distforget.search``. Every
run (sampler, seed) is its own search with its own stage cache, so wall times compare.

    python bench/search_efficiency.py                     # embedded default, 16 trials, 3 seeds
    python bench/search_efficiency.py --config configs/cifar10.yaml --trials 32 --full \
        data.path=../shared/data/cifar10   # the local Parquet copy, no download
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402
from bench.local_search import local_search  # noqa: E402
from distforget.cli import pick_device  # noqa: E402
from distforget.config import load_config  # noqa: E402
from distforget.pareto import normalized_hypervolume  # noqa: E402
from distforget.prepare import prepare  # noqa: E402
from distforget.search_space import load_space  # noqa: E402
from distforget.trial import StageCache  # noqa: E402

SAMPLERS = ("tpe", "nsga2", "gp", "random")


def curve(rows, base, trials: int) -> list[float]:
    """Normalised hypervolume after each trial (its sweep points included)."""
    return [normalized_hypervolume(rows[rows["order"] <= i], base) for i in range(trials)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="run config (default: embedded)")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="5 seeds")
    parser.add_argument("--device", default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    seeds = 5 if args.full else args.seeds
    device = pick_device(args.device)
    cfg = load_config(args.config, args.overrides)
    space = load_space(cfg.search.space, cfg)
    prepared = prepare(cfg, device, log=lambda m: None)
    base = prepared.base_metrics
    curves: dict[str, list[list[float]]] = {}
    walls: dict[str, float] = {}
    for sampler in SAMPLERS:
        start = time.perf_counter()
        for seed in range(seeds):
            rows = local_search(prepared, cfg, space, trials=args.trials, sampler=sampler,
                                seed=seed, device=device, cache=StageCache())
            curves.setdefault(sampler, []).append(curve(rows, base, args.trials))
        walls[sampler] = time.perf_counter() - start
    best = max(max(c[-1] for c in runs) for runs in curves.values())
    target = 0.95 * best
    print(f"# {machine()}\n# bench/search_efficiency.py: {cfg.output.name} scenario, space "
          f"{space.source}, {args.trials} trials x {seeds} seeds per sampler, device {device}")
    marks = [n for n in (4, 8, 16, 32, 64) if n <= args.trials]
    print(f"# best normalised hypervolume seen: {best:.3f}; target 95% = {target:.3f}\n")
    print("| sampler | " + " | ".join(f"HV after {n}" for n in marks)
          + " | trials to 95% (median; runs reaching it) | wall s |")
    print("| --- |" + " --- |" * len(marks) + " --- | --- |")
    for sampler, runs in curves.items():
        arr = np.array(runs)
        cells = [f"{arr[:, n - 1].mean():.3f} ± {arr[:, n - 1].std():.3f}" for n in marks]
        reach = [int(np.argmax(c >= target)) + 1 for c in arr if (c >= target).any()]
        med = f"{np.median(reach):.0f} ({len(reach)}/{len(runs)})" if reach else \
            f"not reached (0/{len(runs)})"
        print(f"| {sampler} | " + " | ".join(cells) + f" | {med} | {walls[sampler]:.0f} |")


if __name__ == "__main__":
    main()
