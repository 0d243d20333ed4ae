"""The scenario suite: ``python -m distforget.search`` on every suite scenario, over seeds.

Scenarios (``configs/suite/*.yaml``; each sets only data, scenario, model, pretrain and output
keys, so the stage knobs and the search space are the package defaults): the embedded shapes;
CIFAR-10 as a class hierarchy (forget animal/dog); a CIFAR-10 k-means subgroup (airplane k0);
the whole CIFAR-10 cat class; style subgroups (sketches of airplanes). Check scenarios
(``configs/check/*.yaml``, named in ``--scenarios``; not in the default suite) are labelled
style subgroups and a second CIFAR-10 hierarchy (vehicle/automobile), drawn at random after the
defaults were fixed (each config says how), and never used to choose anything: they say whether
the defaults carry to data nobody tuned on. Each runs as a separate ``python -m
distforget.search --config ... scenario.seed=S search.seed=S <stage>.seed=S output.storage=...
output.name=<scenario>-s<S>`` process (the default budget unless ``--num-trials``), and, where
the base model is distforget's own, ``python -m distforget.unlearn --method retrain`` with the
same overrides for the retrain reference.

Per scenario it prints the chosen point's metrics (``best/distforget.json``) over the seeds:
test values with their 95% intervals (``test_<name>``, ``_lo``/``_hi``) where the run has them,
else the held-out evaluation values (said so in the table's note); whether the target
``forget_acc <= 0.05, retain_acc >= 0.9 x base, zeroshot_acc >= 0.95 x base`` holds on each
seed; the gap to retrain (mean absolute difference of forget, retain and zero-shot accuracy)
and whether the retrain reference itself meets the target (where it does not, the two measures
pull apart); and the wall time. The tables go into bench/RESULTS.md's suite section
(``--no-write``: print only). A finished run folder is reused (its recorded wall time too);
``--fresh`` runs again. A reused run searched with ``--no-retrain`` gets its retrain reference
added by a later call without that flag (the search is kept).

    python bench/suite.py                # every scenario, 3 seeds, default budget (hours on 2 cores)
    python bench/suite.py --smoke        # embedded only, 2 trials, 1 seed, no baselines
    python bench/suite.py --scenarios embedded,cifar10-hierarchy --seeds 1
    python bench/suite.py --no-run       # the tables from the finished runs only
    python bench/suite.py --scenarios check-automobile-cartoon,check-deer-grayscale --no-retrain
    python bench/suite.py --scenarios check-bird-painting --no-retrain   # the third check
    python bench/suite.py --scenarios check-vehicle-automobile   # the hierarchy check
    python bench/suite.py --scenarios check-cat-sketch --no-retrain      # the fourth style check
    python bench/suite.py --scenarios check-cat-cartoon --no-retrain     # the fifth style check
    python bench/suite.py --scenarios cifar10-cat --seed 1 --seed 2 --no-retrain  # beside a call
        # on --seed 0 with the same --storage: two streams on two cores; a last call without
        # --no-retrain adds the retrain reference to seeds 1 and 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distforget.report import markdown_table  # noqa: E402

STYLES = ("data/cifar10-styles.parquet",
          ["-m", "distforget.data.styles", "--input", "../shared/data/cifar10",
           "--out", "data/cifar10-styles.parquet", "--styles",
           "photo,sketch,cartoon,grayscale,painting", "--per-class", "500", "--seed", "0"])
SCENARIOS = {  # name -> (title, manifest the config reads, command that builds it)
    "embedded": ("embedded: red circles", None, None),
    "cifar10-hierarchy": ("CIFAR-10 hierarchy: animal/dog", "data/cifar10-hierarchy.parquet",
                          ["-m", "distforget.data.hierarchy", "--input", "../shared/data/cifar10",
                           "--out", "data/cifar10-hierarchy.parquet"]),
    "cifar10-kmeans": ("CIFAR-10: airplane k-means k0", None, None),
    "cifar10-cat": ("CIFAR-10: the whole cat class", None, None),
    "cifar10-styles": ("CIFAR-10 styles: airplane sketches", *STYLES),
}
# Check scenarios (configs/check/): drawn at random after the defaults were fixed and never used
# to choose them; run only when named in --scenarios.
CHECKS = {
    "check-automobile-cartoon": ("check: automobile cartoons", *STYLES),
    "check-deer-grayscale": ("check: deer grayscale", *STYLES),
    "check-bird-painting": ("check: bird paintings", *STYLES),
    "check-cat-sketch": ("check: cat sketches", *STYLES),
    "check-cat-cartoon": ("check: cat cartoons", *STYLES),
    "check-vehicle-automobile": ("check: vehicle/automobile", "data/cifar10-vehicles.parquet",
                                 ["-m", "distforget.data.hierarchy", "--input",
                                  "../shared/data/cifar10", "--out",
                                  "data/cifar10-vehicles.parquet", "--group",
                                  "vehicle=airplane,automobile,ship,truck", "--per-class", "1000",
                                  "--seed", "0"]),
}
KNOWN = {**SCENARIOS, **CHECKS}
ACCURACIES = ("forget_acc", "retain_acc", "zeroshot_acc")
TARGET = {"forget_acc": 0.05, "retain_acc": 0.90, "zeroshot_acc": 0.95}  # absolute, x base, x base
SEED_KEYS = ("scenario.seed", "search.seed", "forget.seed", "remind.seed", "baseline.seed")
BEGIN, END = "<!-- suite:begin -->", "<!-- suite:end -->"


# --- reading a finished run (pure functions, tested) -------------------------------------------

def config_path(name: str) -> Path:
    """A scenario's config: configs/suite/ for the suite, configs/check/ for a check scenario."""
    return ROOT / "configs" / ("check" if name in CHECKS else "suite") / f"{name}.yaml"


def run_dir(storage: Path, name: str, seed: int) -> Path:
    """Where the suite puts one scenario's run at one seed."""
    return Path(storage) / f"{name}-s{seed}"


def value(metrics: dict, name: str) -> tuple[float, float | None, float | None, bool]:
    """A metric's test value and 95% interval where the run has them, else the held-out
    evaluation value; the last item says whether it is a test value."""
    if f"test_{name}" in metrics:
        return (float(metrics[f"test_{name}"]), metrics.get(f"test_{name}_lo"),
                metrics.get(f"test_{name}_hi"), True)
    return float(metrics[name]), None, None, False


def meets_target(metrics: dict) -> bool:
    """The quality target on the chosen point (test values where present)."""
    f, *_ = value(metrics, "forget_acc")
    r, *_ = value(metrics, "retain_acc")
    z, *_ = value(metrics, "zeroshot_acc")
    base_r, *_ = value(metrics, "base_retain_acc")
    base_z, *_ = value(metrics, "base_zeroshot_acc")
    eps = 1e-9  # 0.9 x 0.8 is 0.7200000000000001 in floating point
    return (f <= TARGET["forget_acc"] + eps and r >= TARGET["retain_acc"] * base_r - eps
            and z >= TARGET["zeroshot_acc"] * base_z - eps)


def retrain_meets_target(metrics: dict, reference: dict) -> bool:
    """The same target on the retrain reference's accuracies, against the run's own base model
    (test values where the reference has them): whether retraining does what the target asks."""
    keys = [*ACCURACIES, *(f"test_{k}" for k in ACCURACIES)]
    return meets_target({**metrics, **{k: reference[k] for k in keys if k in reference}})


def chosen_metrics(exported: dict) -> dict:
    """One flat dict from ``best/distforget.json``: the chosen point's validation values
    (``forget_acc``, ...), its test values with intervals (``test_forget_acc``, ``_lo``/``_hi``)
    and the base model's (``base_*`` on validation, ``test_base_*`` on test)."""
    base = exported.get("base", {})
    return {**exported.get("validation", {}), **exported.get("test", {}),
            **base.get("validation", {}), **base.get("test", {})}


def gap(metrics: dict, reference: dict | None) -> float | None:
    if reference is None:
        return None
    from distforget.retrain import gap_to_retrain

    return gap_to_retrain(metrics, reference)


def fmt(v: float, lo: float | None = None, hi: float | None = None) -> str:
    return f"{v:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else "")


def seed_rows(runs: list[dict]) -> pd.DataFrame:
    """One row per (scenario, seed) run: the chosen point's accuracies, base, target, gap."""
    rows = []
    for run in runs:
        m = run.get("metrics")
        row: dict[str, Any] = {"scenario": run["scenario"], "seed": run["seed"]}
        if m:
            for name in ACCURACIES:
                v, lo, hi, is_test = value(m, name)
                row[name] = fmt(v, lo, hi)
                row["test"] = is_test
            row["base F / R / Z"] = " / ".join(f"{value(m, f'base_{k}')[0]:.3f}"
                                               for k in ACCURACIES)
            row["target"] = "yes" if meets_target(m) else "no"
            g = gap(m, run.get("retrain"))
            row["gap_to_retrain"] = "-" if g is None else f"{g:.3f}"
            ref = run.get("retrain") or {}
            row["retrain F / R / Z"] = (" / ".join(f"{value(ref, k)[0]:.3f}" for k in ACCURACIES)
                                        if ref else "-")
            row["retrain target"] = ("-" if not ref else
                                     "yes" if retrain_meets_target(m, ref) else "no")
        row.update({"search_s": round(run["wall_s"]),
                    "retrain_s": (round(run["retrain_wall_s"]) if "retrain_wall_s" in run
                                  else "-"), "status": run["status"]})
        rows.append(row)
    return pd.DataFrame(rows)


def scenario_rows(runs: list[dict]) -> pd.DataFrame:
    """One row per scenario: mean and range over seeds, target met on how many seeds, wall."""
    rows = []
    for name in dict.fromkeys(r["scenario"] for r in runs):
        mine = [r for r in runs if r["scenario"] == name]
        done = [r for r in mine if r.get("metrics")]
        row: dict[str, Any] = {"scenario": KNOWN.get(name, (name,))[0], "seeds": len(mine)}
        for k in ACCURACIES:
            vals = [value(r["metrics"], k)[0] for r in done]
            row[k] = (f"{sum(vals) / len(vals):.3f} ({min(vals):.3f}-{max(vals):.3f})"
                      if vals else "-")
        # The base model's values, mean over seeds (each seed splits its held-out images anew).
        row["base F / R / Z"] = (" / ".join(
            f"{sum(value(r['metrics'], f'base_{k}')[0] for r in done) / len(done):.3f}"
            for k in ACCURACIES) if done else "-")
        met = sum(meets_target(r["metrics"]) for r in done)
        row["target met"] = f"{met}/{len(mine)}" + (" (every seed)" if met == len(mine) else "")
        gaps = [g for g in (gap(r["metrics"], r.get("retrain")) for r in done) if g is not None]
        row["gap to retrain"] = f"{sum(gaps) / len(gaps):.3f}" if gaps else "-"
        refs = [r for r in done if r.get("retrain")]
        row["retrain meets target"] = (
            f"{sum(retrain_meets_target(r['metrics'], r['retrain']) for r in refs)}/{len(refs)}"
            if refs else "-")
        row["wall per seed"] = f"{sum(r['wall_s'] for r in mine) / len(mine) / 60:.1f} min"
        rows.append(row)
    return pd.DataFrame(rows)


def clip_rows(runs: list[dict], storage: Path) -> pd.DataFrame:
    """One row per scenario: the small CLIP it pretrained (its first run's ``run.json``) and its
    retrain reference's pretraining time (the first run that pretrained it, not a cache hit)."""
    rows = []
    for name in dict.fromkeys(r["scenario"] for r in runs):
        mine = [r for r in runs if r["scenario"] == name]
        info_path = run_dir(storage, name, mine[0]["seed"]) / "run.json"
        info = json.loads(info_path.read_text()).get("prepared", {}).get("pretrain") \
            if info_path.is_file() else None
        if not info:
            continue
        retrain = max((r.get("retrain", {}).get("retrain_pretrain_s", 0.0) for r in mine),
                      default=0.0)
        rows.append({"scenario": name, "train images": info["train_images"],
                     "epochs": info["pretrain"]["epochs"],
                     "zero-shot (held-out)": f"{info['zeroshot_acc']:.3f}",
                     "held-out images": info["heldout_images"],
                     "pretrain_s": round(info["wall_s"]),
                     "retrain pretrain_s": round(retrain) if retrain else "-"})
    return pd.DataFrame(rows)


COMPARED_SECTIONS = ("method", "forget", "remind", "restore", "baseline", "search")
ABSENT = "absent"  # a key the run's config does not hold (a run made before the key existed)


def config_difference(ours: dict, theirs: dict) -> dict[str, tuple[Any, Any]]:
    """``section.key -> (ours, theirs)`` for every stage or search key whose value differs
    between two resolved run configs (``run.json``'s ``config``), seeds excepted."""
    diff = {}
    for section in COMPARED_SECTIONS:
        a, b = ours.get(section, {}), theirs.get(section, {})
        if not isinstance(a, dict) or not isinstance(b, dict):
            if a != b:
                diff[section] = (a, b)
            continue
        for key in sorted(set(a) | set(b)):
            if key != "seed" and a.get(key, ABSENT) != b.get(key, ABSENT):
                diff[f"{section}.{key}"] = (a.get(key, ABSENT), b.get(key, ABSENT))
    return diff


def comparison_rows(runs: list[dict], earlier: list[dict]) -> pd.DataFrame:
    """Per scenario, this suite's runs beside earlier runs of the same scenario and seeds: the
    chosen point's mean accuracies (test where present) and the seeds that meet the target."""
    rows = []
    for name in dict.fromkeys(r["scenario"] for r in runs):
        pairs = {"now": [r for r in runs if r["scenario"] == name and r.get("metrics")],
                 "before": [r for r in earlier if r["scenario"] == name and r.get("metrics")]}
        row: dict[str, Any] = {"scenario": KNOWN.get(name, (name,))[0]}
        for when, done in pairs.items():
            row[f"F / R / Z {when}"] = (" / ".join(
                f"{sum(value(r['metrics'], k)[0] for r in done) / len(done):.3f}"
                for k in ACCURACIES) if done else "-")
            row[f"target met {when}"] = (f"{sum(meets_target(r['metrics']) for r in done)}"
                                         f"/{len(done)}")
        rows.append(row)
    return pd.DataFrame(rows)


def run_seeds(count: int, chosen: list[int] | None) -> list[int] | str:
    """The suite's seeds: ``--seed`` values when given, else 0..``--seeds``-1; or what is
    wrong with them."""
    if chosen:
        if min(chosen) < 0 or len(set(chosen)) != len(chosen):
            return f"--seed {chosen}: expected distinct seeds, each 0 or more"
        return list(chosen)
    if count < 1:
        return f"--seeds {count}: expected a count of 1 or more"
    return list(range(count))


def earlier_runs(storage: Path, names: list[str], seeds: list[int]) -> list[dict]:
    """The finished runs (``suite.json``) of the named scenarios and seeds under ``storage``."""
    found = []
    for name in names:
        for seed in seeds:
            path = run_dir(storage, name, seed) / "suite.json"
            if path.is_file():
                found.append(json.loads(path.read_text()))
    return found


def recorded_info(storage: Path, run: dict) -> dict:
    """A finished run's ``run.json`` (its resolved config, its search space's text, ...)."""
    path = run_dir(storage, run["scenario"], run["seed"]) / "run.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def space_difference(ours: str | None, theirs: str | None) -> dict[str, tuple[Any, Any]]:
    """``space.<block>.<key> -> (ours, theirs)`` for every entry of two search space files'
    texts (``run.json``'s ``space_text``) whose value differs; comments do not count."""
    a, b = yaml.safe_load(ours or "") or {}, yaml.safe_load(theirs or "") or {}
    diff = {}
    for block in sorted(set(a) | set(b)):
        x, y = a.get(block, ABSENT), b.get(block, ABSENT)
        if isinstance(x, dict) or isinstance(y, dict):  # a missing block lists no entries
            x, y = ({} if v == ABSENT else v for v in (x, y))
        if isinstance(x, dict) and isinstance(y, dict):
            diff.update({f"space.{block}.{k}": (x.get(k, ABSENT), y.get(k, ABSENT))
                         for k in sorted(set(x) | set(y)) if x.get(k, ABSENT) != y.get(k, ABSENT)})
        elif x != y:
            diff[f"space.{block}"] = (x, y)
    return diff


def markdown(df: pd.DataFrame) -> str:
    return markdown_table(df, list(df.columns))


def write_section(path: Path, body: str) -> None:
    """Replace the suite section of bench/RESULTS.md (between its markers), or append one."""
    from bench.common import replace_section

    text = path.read_text() if path.is_file() else "# distforget benchmark results\n"
    if BEGIN in text and END in text:
        replace_section(path, "suite", body.rstrip())
        return
    path.write_text(text.rstrip() + "\n\n## 7. The scenario suite (`bench/suite.py`)\n\n"
                    + f"{BEGIN}\n{body.rstrip()}\n{END}\n")


# --- running -----------------------------------------------------------------------------------

def recorded_minutes(runs: list[dict]) -> float:
    """The search and retrain wall times the runs recorded, added up, in minutes."""
    return sum(r.get("wall_s", 0.0) + r.get("retrain_wall_s", 0.0) for r in runs) / 60


def run_one(name: str, seed: int, args) -> dict:
    """Search one scenario at one seed (and its retrain reference); the run's summary."""
    storage = Path(args.storage)
    folder = run_dir(storage, name, seed)
    run_name = folder.name
    summary_path = folder / "suite.json"
    log = folder.parent / f"{run_name}.log"
    if args.fresh and folder.exists():
        shutil.rmtree(folder)
    if summary_path.is_file():
        print(f"{run_name}: reusing {summary_path}", flush=True)
        result = json.loads(summary_path.read_text())
        if args.run and args.retrain and result.get("status") == "ok" and "retrain" not in result:
            # A run searched with --no-retrain: add its retrain reference, keep the search.
            add_retrain(result, folder, log)
            summary_path.write_text(json.dumps(result, indent=2, default=float))
        return {**result, "reused": True}
    overrides = [f"{k}={seed}" for k in SEED_KEYS] + [f"output.storage={storage}",
                                                      f"output.name={run_name}"]
    if args.num_trials:
        overrides.append(f"search.num_trials={args.num_trials}")
    if args.no_baselines:
        overrides.append("search.baselines=[]")
    config = str(config_path(name))
    log.parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"scenario": name, "seed": seed, "config": config,
                              "overrides": overrides, "status": "ok"}
    start = time.perf_counter()
    with open(log, "w") as out:
        print(f"{run_name}: python -m distforget.search --config {config} "
              f"{' '.join(overrides)}  (log: {log})", flush=True)
        proc = subprocess.run([sys.executable, "-m", "distforget.search", "--config", config,
                               *overrides], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    result["wall_s"] = time.perf_counter() - start
    best = folder / "best" / "distforget.json"
    if proc.returncode != 0 or not best.is_file():
        result.update(status=f"search failed (exit {proc.returncode}; see {log})")
        print(f"{run_name}: {result['status']}", flush=True)
        return result
    chosen = json.loads(best.read_text())
    result.update(metrics=chosen_metrics(chosen), why=chosen.get("why"),
                  trial_id=chosen.get("trial_id"))
    if args.retrain:
        add_retrain(result, folder, log)
    summary_path.write_text(json.dumps(result, indent=2, default=float))
    return result


def add_retrain(result: dict[str, Any], folder: Path, log: Path) -> None:
    """The run's retrain reference (``distforget unlearn --method retrain`` with the run's own
    config and overrides), into ``result``; its console goes to the end of ``log``."""
    start = time.perf_counter()
    print(f"{folder.name}: retrain reference (log: {log})", flush=True)
    with open(log, "a") as out:
        proc = subprocess.run([sys.executable, "-m", "distforget.unlearn", "--config",
                               result["config"], "--method", "retrain", "--out", "",
                               *result["overrides"]],
                              cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    result["retrain_wall_s"] = time.perf_counter() - start
    records = folder / "unlearn.json"
    if proc.returncode == 0 and records.is_file():
        result["retrain"] = json.loads(records.read_text())[0]
        result.pop("retrain_status", None)
    else:
        result["retrain_status"] = f"failed (exit {proc.returncode}; see {log})"


def ensure_data(name: str) -> None:
    _, manifest, command = KNOWN[name]
    if manifest is None or (ROOT / manifest).is_file():
        return
    print(f"building {manifest}: python {' '.join(command)}", flush=True)
    subprocess.run([sys.executable, *command], cwd=ROOT, check=True)


def comparison(runs: list[dict], names: list[str], args) -> list[str]:
    """The section's lines that set these runs beside the earlier ones in ``args.compare``."""
    pairs = {(r["scenario"], r["seed"]) for r in runs}
    seeds = sorted({seed for _, seed in pairs})
    earlier = [e for e in earlier_runs(Path(args.compare), names, seeds)
               if (e["scenario"], e["seed"]) in pairs]
    if not earlier:
        return ["", f"No finished runs of these scenarios under {args.compare} to compare with."]
    diff: dict[str, tuple[Any, Any]] = {}
    for run in (r for r in runs if r.get("metrics")):
        twin = next((e for e in earlier if (e["scenario"], e["seed"]) ==
                     (run["scenario"], run["seed"])), None)
        if twin is not None:
            ours, theirs = (recorded_info(Path(args.storage), run),
                            recorded_info(Path(args.compare), twin))
            diff.update(config_difference(ours.get("config", {}), theirs.get("config", {})))
            diff.update(space_difference(ours.get("space_text"), theirs.get("space_text")))
    return ["", f"Now beside before: the runs under `{args.compare}` of the same scenarios and "
                f"seeds (only those this suite has; {difference_text(diff)}):", "",
            markdown(comparison_rows(runs, earlier))]


def difference_text(diff: dict[str, tuple[Any, Any]]) -> str:
    """How two sets of runs differ, in words: keys both hold at different values, then keys
    the earlier runs predate (a key added since is not by itself a change of behaviour, so it
    is named apart, with the value the runs now hold)."""
    changed = [f"`{k}` {a} (before: {b})" for k, (a, b) in sorted(diff.items()) if b != ABSENT]
    added = [f"`{k}` {a}" for k, (a, b) in sorted(diff.items()) if b == ABSENT]
    text = ("they differ in " + ", ".join(changed) if changed else
            "they differ in no stage or search key and no search-space entry")
    if added:
        text += "; the earlier runs predate " + ", ".join(added)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated, of {', '.join(SCENARIOS)} (default: all), or "
                             f"the check scenarios {', '.join(CHECKS)}")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--seed", type=int, action="append", metavar="S",
                        help="this seed instead of 0..N-1 (repeatable: --seed 1 --seed 2; two "
                             "calls on different seeds can share one --storage)")
    parser.add_argument("--num-trials", type=int, default=None,
                        help="search.num_trials (default: the package default)")
    parser.add_argument("--no-baselines", action="store_true", help="search.baselines=[]")
    parser.add_argument("--no-retrain", dest="retrain", action="store_false",
                        help="skip the retrain reference")
    parser.add_argument("--smoke", action="store_true",
                        help="embedded only, 2 trials, 1 seed, no baselines: end to end quickly")
    parser.add_argument("--storage", default=str(ROOT / "bench" / "out" / "suite"),
                        help="where the run folders go")
    parser.add_argument("--fresh", action="store_true", help="run again over finished runs")
    parser.add_argument("--no-run", dest="run", action="store_false",
                        help="tabulate the finished runs only (a seed with none is left out)")
    parser.add_argument("--no-write", dest="write", action="store_false",
                        help="do not write bench/RESULTS.md")
    parser.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    parser.add_argument("--section", metavar="NAME",
                        help="write the tables between the markers <!-- NAME:begin --> and "
                             "<!-- NAME:end --> of the results file instead of the suite's own "
                             "section (for a run of some scenarios or seeds beside the full one)")
    parser.add_argument("--compare", default=None, metavar="STORAGE",
                        help="earlier suite runs (their --storage) to set beside these, with "
                             "the stage and search keys in which the runs differ")
    args = parser.parse_args(argv)
    if args.smoke:
        args.scenarios, args.seeds, args.num_trials, args.no_baselines = "embedded", 1, 2, True
        args.seed = None
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in names if n not in KNOWN]
    if unknown:
        parser.error(f"--scenarios: {unknown[0]!r} is not one of {', '.join(KNOWN)}")
    seeds = run_seeds(args.seeds, args.seed)
    if isinstance(seeds, str):
        parser.error(seeds)

    from bench.common import machine, missing_section, replace_section

    if args.section and args.write:
        missing = missing_section(Path(args.results), args.section)
        if missing:  # said before hours of searching, not after
            parser.error(f"--section {args.section!r}: {missing}")
    start = time.perf_counter()
    runs = []
    if args.compare and not Path(args.compare).is_dir():
        parser.error(f"--compare: {args.compare!r} is not a folder (expected the --storage "
                     "of an earlier suite)")
    if args.fresh and not args.run:
        parser.error("--fresh runs every run again; --no-run runs none: choose one")
    for name in names:
        if args.run:
            ensure_data(name)
        for seed in seeds:
            if args.run or (run_dir(args.storage, name, seed) / "suite.json").is_file():
                runs.append(run_one(name, seed, args))
    if not runs:
        parser.error(f"--no-run: no finished runs of {', '.join(names)} under {args.storage}")
    wall = time.perf_counter() - start

    per_seed, per_scenario = seed_rows(runs), scenario_rows(runs)
    tested = bool(per_seed.get("test", pd.Series(dtype=bool)).fillna(False).all()) \
        if "test" in per_seed else False
    budget = (f"{args.num_trials} trials" if args.num_trials else "the default budget") + \
        (", no baselines" if args.no_baselines else "")
    note = ("test-split values with 95% intervals" if tested else
            "held-out evaluation values: the runs have no `test_*` columns (the validation/test "
            "protocol of issue 14 has not landed), so the figures are the ones the search "
            "chose on, not an independent test")
    body = "\n".join([
        f"`python bench/suite.py{' --smoke' if args.smoke else ''}` ({date.today()}; "
        f"{machine()}; {os.cpu_count()} cores; OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}): {len(names)} scenario(s) x "
        f"{len(seeds)} seed(s) ({len(runs)} runs), {budget}; suite wall time "
        f"{wall / 60:.1f} min"
        + (f" ({reused} of {len(runs)} runs reused from earlier calls; the runs' recorded "
           f"search and retrain times add up to {recorded_minutes(runs):.1f} min)"
           if (reused := sum(bool(r.get("reused")) for r in runs)) else "") + ".",
        "",
        "Smoke run: the pipeline end to end, not the suite's figures." if args.smoke else "",
        f"Chosen point per scenario, mean (min-max) over seeds; {note}. Target "
        "`forget_acc <= 0.05, retain_acc >= 0.9 x base, zeroshot_acc >= 0.95 x base`; gap to "
        "retrain: mean |difference| of forget, retain and zero-shot accuracy to the model "
        "pretrained without the forget subgroup; retrain meets target: the same target on "
        "that model's accuracies, against each run's base.",
        "",
        markdown(per_scenario),
        "",
        "Per seed:",
        "",
        markdown(per_seed.drop(columns=[c for c in ("test",) if c in per_seed])),
    ] + ([
        "",
        "The small CLIPs (cached by content, so later runs reuse them; `pretrain_s`: the wall "
        "time the pretraining recorded, under whatever else ran then):",
        "",
        markdown(clips),
    ] if len(clips := clip_rows(runs, Path(args.storage))) else []) + (
        comparison(runs, names, args) if args.compare else []))
    print("\n" + body)
    if args.write:
        if args.section:
            replace_section(Path(args.results), args.section, body)
        else:
            write_section(Path(args.results), body)
        print(f"\nwrote the {args.section or 'suite'} section of {args.results}")
    return 0 if all(r["status"] == "ok" for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
