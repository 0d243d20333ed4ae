"""Optuna's time per suggestion as the study grows, up to 5,000 trials: the driver-side cost
that every trial of a search pays once, however many GPUs run the trials.

The study is the search's own: the embedded space's distributions, the three objectives
(``forget_acc`` down, ``retain_acc`` and ``zeroshot_acc`` up), the default target as Optuna
constraints on every trial. It is filled with N completed trials of random values (the
sampler's cost depends on how many trials it reads, not on what they hold), then the next
few suggestions are timed (``study.ask`` with the space, as Ray Tune's ``OptunaSearch`` asks,
followed by ``tell``). A search adds 1 + len(sweep) study trials per Tune trial (the embedded
space: 5), so a study of N trials is N / 5 trials of that search.

    python bench/sampler_growth.py            # writes the table into bench/scaling.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine, replace_section  # noqa: E402
from distforget.objectives import DEFAULT_TARGET, DIRECTIONS, parse_target  # noqa: E402
from distforget.search_space import load_space  # noqa: E402
from distforget.study import Steering, make_sampler  # noqa: E402

SIZES = (100, 500, 1000, 2000, 5000)
SAMPLERS = ("tpe", "nsga2", "random")


def random_trials(n: int, distributions: dict, rng: np.random.Generator, target
                  ) -> list[optuna.trial.FrozenTrial]:
    trials = []
    for _ in range(n):
        params = {}
        for key, dist in distributions.items():
            if isinstance(dist, optuna.distributions.CategoricalDistribution):
                params[key] = dist.choices[rng.integers(len(dist.choices))]
            elif isinstance(dist, optuna.distributions.IntDistribution):
                params[key] = int(rng.integers(dist.low, dist.high + 1))
            else:
                params[key] = float(rng.uniform(dist.low, dist.high))
        metrics = {"forget_acc": float(rng.uniform()), "retain_acc": float(rng.uniform()),
                   "zeroshot_acc": float(rng.uniform()), "base_forget_acc": 1.0,
                   "base_retain_acc": 0.8, "base_zeroshot_acc": 0.6}
        trials.append(optuna.trial.create_trial(
            params=params, distributions=distributions,
            values=[metrics["forget_acc"], metrics["retain_acc"], metrics["zeroshot_acc"]],
            constraints=Steering(target).values(metrics)))
    return trials


def time_asks(sampler_name: str, n: int, distributions: dict, asks: int, seed: int
              ) -> float:
    """Median seconds per suggestion with ``n`` completed trials in the study."""
    rng = np.random.default_rng(seed)
    target = parse_target(DEFAULT_TARGET)
    study = optuna.create_study(directions=DIRECTIONS,
                                sampler=make_sampler(sampler_name, seed, n))
    study.add_trials(random_trials(n, distributions, rng, target))
    times = []
    for _ in range(asks):
        start = time.perf_counter()
        trial = study.ask(distributions)
        times.append(time.perf_counter() - start)
        values = [float(v) for v in rng.uniform(size=3)]
        metrics = dict(zip(("forget_acc", "retain_acc", "zeroshot_acc"), values),
                       base_forget_acc=1.0, base_retain_acc=0.8, base_zeroshot_acc=0.6)
        for key, value in Steering(target).values(metrics).items():
            trial.set_constraint(key, value)
        study.tell(trial, values)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--asks", type=int, default=3)
    parser.add_argument("--write", type=Path, default=ROOT / "bench" / "scaling.md")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = load_space("embedded").params

    wall = time.perf_counter()
    rows = []
    for n in args.sizes:
        cells = []
        for name in SAMPLERS:
            cells.append(time_asks(name, n, distributions, args.asks, seed=n))
            print(f"{n} trials, {name}: {cells[-1] * 1e3:.1f} ms per suggestion", flush=True)
        rows.append((n, cells))
    wall = time.perf_counter() - wall

    lines = [f"Measured with `bench/sampler_growth.py` on {machine()} "
             f"({time.strftime('%Y-%m-%d')}; optuna {optuna.__version__}; median of "
             f"{args.asks} suggestions per cell; {wall:.0f} s wall):", "",
             "| completed study trials | " + " | ".join(f"{s} ms per suggestion"
                                                      for s in SAMPLERS) + " |",
             "| --- |" + " --- |" * len(SAMPLERS)]
    for n, cells in rows:
        lines.append(f"| {n:,} | " + " | ".join(f"{c * 1e3:,.1f}" for c in cells) + " |")
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        replace_section(args.write, "sampler-growth", body)


if __name__ == "__main__":
    main()
