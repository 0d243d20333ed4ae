"""The method against the baselines at equal budget, under the validation/test protocol.

Per scenario and seed, every method (the three-stage method and the five baselines) gets the
same number of Optuna trials (TPE, constraints from the target, as ``distforget.search`` does)
over its own search space, on the same prepared inputs; each baseline's space also gets the
method's soup handling (``restore.alpha`` searched, the same soup sweep), so a baseline gains
what a soup with the base model gives as the method does. Each method's point is then chosen
on **validation** by the default rule (``target``: meets ``forget_acc<=0.05,
retain_acc>=0.9*base, zeroshot_acc>=0.95*base`` with the best zero-shot accuracy, else the
nearest), and only that point is measured on **test**.

The seed (0, 1, 2 by default) moves everything: the scenario's split seed (which images are
validation and which test, and the k-means subgroups), every stage seed and the sampler's seed.
The table gives, per method, the mean of the chosen points' test metrics over the seeds with a
95% t-interval (t(0.975, n-1) * sd / sqrt(n)), on how many seeds the target holds on test
(thresholds against the base model's test metrics), the points evaluated and the search wall
time; then the three-stage method minus each baseline paired by seed (every method of a seed
sees the same splits and images), mean ± 95% t-interval of the per-seed differences. It
writes its section of ``bench/RESULTS.md`` (and the README's summary table) itself.

    python bench/quality.py                          # embedded scenario, 2 CPU cores
    python bench/quality.py --scenarios all          # every suite scenario (CIFAR-10 ones too)
    python bench/quality.py --scenarios cifar10-styles --section quality-styles
    python bench/quality.py --full --device cuda     # more trials
    python bench/quality.py --paired quality-styles  # paired tables of a written section
    python bench/quality.py --methods three_stage,neggrad --baseline-trials 128 \
        --section quality-time                      # baselines at about the method's wall time

Scenarios are the suite's (``bench/suite.py``): ``--scenarios`` names them, comma-separated,
from ``configs/suite/`` and ``configs/check/`` (a check scenario compares the methods on data no
default was chosen on); each config sets only data, scenario, model, pretrain and output keys, so
every method runs at the package's defaults. A manifest the config reads is built first by the
suite's documented command where it is missing.

Equal trials are the default budget. A three-stage trial trains two stages and costs several
baseline trials of wall time, so ``--baseline-trials`` gives the baselines more trials (the
table gives each method's trials and search wall per seed), and ``--methods`` runs a subset.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import (machine, missing_section, read_section,  # noqa: E402
                          replace_section)
from bench.local_search import local_search  # noqa: E402
from bench.suite import KNOWN, SCENARIOS, config_path, ensure_data  # noqa: E402
from distforget.cli import pick_device  # noqa: E402
from distforget.config import BASELINES, RunConfig, load_config, replace  # noqa: E402
from distforget.objectives import (ACCURACIES, as_test, parse_target, shortfalls,  # noqa: E402
                                   margin_sizes)
from distforget.pareto import pick, usable  # noqa: E402
from distforget.prepare import prepare  # noqa: E402
from distforget.search_space import load_space  # noqa: E402
from distforget.trial import Recipe, StageCache, evaluate_recipes  # noqa: E402

METHODS = ("three_stage", *BASELINES)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}  # t(0.975, n-1) by n-1


def chosen_scenarios(names: str) -> list[str]:
    """``--scenarios``: 'all' (the suite's scenarios), or suite or check names, comma-separated;
    an unknown name is refused with the known ones."""
    if names == "all":
        return list(SCENARIOS)
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in KNOWN]
    if unknown or not chosen:
        raise ValueError(f"--scenarios {names!r}: expected 'all' or names from "
                         f"{', '.join(KNOWN)}")
    return chosen


def seeded(cfg, seed: int):
    """The config with every seed moved to ``seed``: splits, stages, sampler."""
    return replace(cfg, {k: seed for k in ("scenario.seed", "forget.seed", "remind.seed",
                                           "baseline.seed", "search.seed")})


def run_seed(cfg, trials: int, device, methods=METHODS, baseline_trials: int | None = None
             ) -> list[dict]:
    """One seed of one scenario: each method searched, chosen on validation, tested."""
    prepared = prepare(cfg, device, log=lambda m: None)
    base_val = prepared.base_metrics
    target = parse_target(cfg.search.target)
    cache = StageCache()
    method_space = load_space(cfg.search.space, cfg)
    base_test, = evaluate_recipes(prepared, cache, [Recipe("base")], "test", device)
    out = []
    for method in methods:
        space = method_space if method == "three_stage" else \
            load_space(f"baseline-{method}", cfg).with_soups_of(method_space)
        n = trials if method == "three_stage" else (baseline_trials or trials)
        start = time.perf_counter()
        rows = local_search(prepared, cfg, space, trials=n, sampler="tpe",
                            seed=cfg.search.seed, device=device, cache=cache)
        wall = time.perf_counter() - start
        if usable(rows).empty:
            out.append({"method": method, "failed": True, "wall_s": wall, "trials": n})
            continue
        chosen, why = pick(rows, cfg.search.pick, target=target, base=base_val,
                           sizes=margin_sizes(prepared.scenario.summary(),
                                              cfg.search.pick_margin_unit),
                           margin=cfg.search.pick_margin, unit=cfg.search.pick_margin_unit)
        recipe = Recipe.from_dict(json.loads(chosen["recipe"]))
        test, = evaluate_recipes(prepared, cache, [recipe], "test", device)
        base_t = {m: base_test[as_test(m)] for m in ACCURACIES}
        missed = shortfalls({m: test[as_test(m)] for m in ACCURACIES}, target, base_t)
        out.append({"method": method, "failed": False, "points": len(usable(rows)),
                    "trials": n, "wall_s": wall, "val_met": "NOT MET" not in why,
                    "test_met": not missed, **{m: chosen[m] for m in ACCURACIES}, **test,
                    **{f"base_{k}": v for k, v in base_t.items()}})
    return out


def interval(values: list[float]) -> str:
    v = np.array(values, dtype=np.float64)
    if len(v) < 2:
        return f"{v.mean():.3f}"
    half = T975.get(len(v) - 1, 1.96) * v.std(ddof=1) / math.sqrt(len(v))
    return f"{v.mean():.3f} ± {half:.3f}"


PAIRED = ("Three-stage minus each baseline, paired by seed (the same splits and images): mean "
          "± 95% t-interval of the per-seed difference of test values; an interval that "
          "holds 0 does not tell the two apart.")


def paired_table(tests: dict[int, dict[str, dict[str, float]]]) -> list[str]:
    """``tests``: seed -> method -> test accuracy name -> value. The three-stage method minus
    each baseline on the seeds where both have a point: the comparison a shared seed allows
    (its split and images are the same for every method), narrower than the two methods'
    own intervals when the seeds move both alike."""
    methods = [m for m in dict.fromkeys(k for per in tests.values() for k in per)
               if m != "three_stage"]
    lines = [PAIRED, "", "| baseline | seeds | forget_acc | retain_acc | zeroshot_acc |",
             "| --- | --- | --- | --- | --- |"]
    for method in methods:
        seeds = [s for s, per in sorted(tests.items()) if "three_stage" in per and method in per]
        if not seeds:
            continue
        lines.append(f"| {method} | {len(seeds)} | " + " | ".join(
            interval([tests[s]["three_stage"][m] - tests[s][method][m] for s in seeds])
            for m in (as_test(a) for a in ACCURACIES)) + " |")
    return lines + [""]


def read_seed_rows(section: str) -> dict[str, dict[int, dict[str, dict[str, float]]]]:
    """The per-seed test values of a written section, by scenario heading (``### ...``), as
    ``paired_table`` takes them: the figures the tables printed, to three decimals."""
    out: dict[str, dict[int, dict[str, dict[str, float]]]] = {}
    heading = None
    for line in section.splitlines():
        if line.startswith("### "):
            heading = line[4:].strip()
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if heading is None or len(cells) != 7 or not cells[0].isdigit():
            continue
        values = [float(c.split()[0]) for c in cells[3:6]]
        out.setdefault(heading, {}).setdefault(int(cells[0]), {})[cells[1]] = dict(
            zip((as_test(a) for a in ACCURACIES), values))
    return out


def with_paired_tables(section: str) -> str:
    """The section with each scenario's paired table (after its per-seed block) made anew from
    its per-seed rows; an earlier paired table is replaced, nothing else changes."""
    rows = read_seed_rows(section)
    lines = section.splitlines()
    out, heading, i = [], None, 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if line == PAIRED:  # an earlier paired block: its sentence, a blank line, its rows
            if out and not out[-1].strip():
                out.pop()
            i += 1 if i < len(lines) and not lines[i].strip() else 0
            while i < len(lines) and lines[i].startswith("|"):
                i += 1
            continue
        out.append(line)
        if line.startswith("### "):
            heading = line[4:].strip()
        elif line.strip() == "</details>" and heading in rows:
            out += ["", *paired_table(rows[heading])[:-1]]
    return "\n".join(out)


def scenario_table(name: str, runs: dict[int, list[dict]]) -> list[str]:
    seeds = sorted(runs)
    lines = [f"### {name}", "",
             f"Seeds {', '.join(map(str, seeds))}; each method's point chosen on validation "
             "by `target`; test metrics: mean ± 95% t-interval over the seeds.", "",
             "| method | test forget_acc | test retain_acc | test zeroshot_acc | target met on "
             "test (seeds) | trials per seed | points per seed | search s per seed |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    base = {m: [runs[s][0][f"base_{m}"] for s in seeds if not runs[s][0]["failed"]]
            for m in ACCURACIES}
    lines.append("| base model | " + " | ".join(interval(base[m]) for m in ACCURACIES)
                 + " | | | | |")
    for i, first in enumerate(runs[seeds[0]]):
        method = first["method"]
        rs = [runs[s][i] for s in seeds]
        ok = [r for r in rs if not r["failed"]]
        if not ok:
            lines.append(f"| {method} | failed | | | | | | |")
            continue
        lines.append(
            f"| {method} | " + " | ".join(interval([r[as_test(m)] for r in ok])
                                          for m in ACCURACIES)
            + f" | {sum(r['test_met'] for r in ok)}/{len(rs)} | {first['trials']} | "
            f"{np.mean([r['points'] for r in ok]):.0f} | "
            f"{np.mean([r['wall_s'] for r in rs]):.0f} |")
    lines.append("")
    per_seed = ["| seed | method | val F / R / Z | test F [95% Wilson] | test R | test Z | "
                "target on test |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for s in seeds:
        for r in runs[s]:
            if r["failed"]:
                continue
            per_seed.append(
                f"| {s} | {r['method']} | " + " / ".join(f"{r[m]:.3f}" for m in ACCURACIES)
                + " | " + " | ".join(
                    f"{r[as_test(m)]:.3f} [{r[as_test(m) + '_lo']:.3f}, "
                    f"{r[as_test(m) + '_hi']:.3f}]" for m in ACCURACIES)
                + f" | {'met' if r['test_met'] else 'missed'} |")
    tests = {s: {r["method"]: {as_test(m): r[as_test(m)] for m in ACCURACIES}
                 for r in runs[s] if not r["failed"]} for s in seeds}
    return lines + ["<details><summary>per seed</summary>", "", *per_seed, "", "</details>",
                    "", *paired_table(tests)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=None,
                        help="per method and seed (default: search.num_trials, the default "
                             "search's budget; 24 with --full)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--device", default=None)
    parser.add_argument("--scenarios", default="embedded",
                        help="'all' (the suite's scenarios), or names from configs/suite/ and "
                             "configs/check/, comma-separated")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated, from " + ", ".join(METHODS))
    parser.add_argument("--baseline-trials", type=int, default=None,
                        help="trials per baseline and seed (default: --trials)")
    parser.add_argument("--section", default=None,
                        help="write between this name's markers in bench/RESULTS.md instead "
                             "of 'quality', and leave the README alone")
    parser.add_argument("--no-write", action="store_true",
                        help="print only; leave bench/RESULTS.md and the README alone")
    parser.add_argument("--paired", metavar="SECTION", default=None,
                        help="run nothing: add (or make anew) the paired tables in this "
                             "written section of bench/RESULTS.md from its per-seed rows")
    args = parser.parse_args()
    os.chdir(ROOT)  # the suite's configs name their data relative to the project's root
    if args.paired:
        results = ROOT / "bench" / "RESULTS.md"
        if missing_section(results, args.paired):
            parser.error(missing_section(results, args.paired))
        body = read_section(results, args.paired)
        if not read_seed_rows(body):
            parser.error(f"--paired {args.paired}: its section holds no per-seed rows")
        body = with_paired_tables(body)
        print(body)
        if not args.no_write:
            replace_section(results, args.paired, body)
        return
    for flag, value in (("--seeds", args.seeds), ("--trials", args.trials),
                        ("--baseline-trials", args.baseline_trials)):
        if value is not None and value < 1:
            parser.error(f"{flag} {value}: expected a whole number of at least 1")
    try:
        names = chosen_scenarios(args.scenarios)
    except ValueError as err:
        parser.error(str(err))
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        parser.error(f"--methods {args.methods!r}: expected names from {', '.join(METHODS)}")
    if "three_stage" not in methods:
        parser.error("--methods must include three_stage (the summary and the method's space)")
    methods = ("three_stage",) + tuple(m for m in methods if m != "three_stage")
    # Where the tables go, checked before any work: a section of bench/RESULTS.md, and with the
    # default section the README's summary too.
    section = args.section or "quality"
    targets = [] if args.no_write else [ROOT / "bench" / "RESULTS.md"] + (
        [] if args.section else [ROOT / "README.md"])
    for path in targets:
        if missing_section(path, section):
            parser.error(missing_section(path, section))
    trials = args.trials or (24 if args.full else RunConfig().search.num_trials)
    baseline_trials = args.baseline_trials or trials
    device = pick_device(args.device)
    start = time.perf_counter()
    command = (f"python bench/quality.py --trials {trials} --seeds {args.seeds} --scenarios "
               f"{args.scenarios}")
    if methods != METHODS:
        command += f" --methods {','.join(methods)}"
    budget = f"{trials} TPE trials per method and seed (equal budgets; "
    if baseline_trials != trials:
        command += f" --baseline-trials {baseline_trials}"
        budget = (f"{trials} TPE trials for the three-stage method and {baseline_trials} per "
                  "baseline, per seed (")
    header = (f"`{command}` on {machine()}: {budget}baselines searched over their own spaces "
              "with the method's soups), validation chooses, test reports.")
    print(header, flush=True)
    lines = [header, ""]
    summary = []
    for scenario in names:
        ensure_data(scenario)
        name = KNOWN[scenario][0]
        # The suite config's own storage and name; the search here runs in-process and writes
        # no run folder.
        base_cfg = load_config(str(config_path(scenario)))
        runs = {}
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            runs[seed] = run_seed(seeded(base_cfg, seed), trials, device, methods,
                                  baseline_trials)
            print(f"  {name}, seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
        table = scenario_table(name, runs)
        print("\n".join(table), flush=True)
        lines += table
        three = [r[0] for r in runs.values() if not r[0]["failed"]]
        summary.append(f"| {name} | " + " / ".join(
            interval([r[as_test(m)] for r in three]) for m in ACCURACIES)
            + f" | {sum(r['test_met'] for r in three)}/{len(runs)} |")
    lines.append(f"Wall time: {time.perf_counter() - start:.0f} s.")
    print(lines[-1])
    if targets:
        replace_section(ROOT / "bench" / "RESULTS.md", section, "\n".join(lines))
    if len(targets) == 2:
        replace_section(ROOT / "README.md", section, "\n".join([
            "| scenario | three-stage test F / R / Z (mean ± 95% t-interval, "
            f"{args.seeds} seeds) | target met on test |", "| --- | --- | --- |", *summary]))


if __name__ == "__main__":
    main()
