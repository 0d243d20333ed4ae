"""``python -m distforget.export``: a point of a finished search as an open_clip checkpoint.

    python -m distforget.export --run distforget_runs/embedded-default [--pick RULE | --trial ID]
                                --out exported/

The point is rebuilt from the run folder alone (the base weights, the cached stage outputs and
the point's soup recipe); ``open_clip.create_model_and_transforms(name,
pretrained="exported/model.safetensors")`` then loads it (for distforget's own architectures,
``import distforget`` first, or use ``"local-dir:exported"``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
from safetensors.torch import load as load_safetensors

from distforget import storage
from distforget.checkpoint import write_checkpoint
from distforget.cli import run_cli
from distforget.errors import ConfigError
from distforget.model import ModelSpec
from distforget.objectives import ACCURACIES, METRICS, parse_target, shortfalls, as_test
from distforget.pareto import pick
from distforget.run_folder import RunFolder
from distforget.trial import Recipe, StageCache, recipe_state


def select(run: str, *, rule: str | None = None, trial: str | None = None
           ) -> tuple[pd.Series, str]:
    """The row of ``results.parquet`` a rule picks, or the named trial, and why."""
    folder = RunFolder(run)
    results = folder.read_results()
    if results.empty:
        raise ConfigError(f"run {run!r} has no results yet")
    if trial is not None:
        match = results[results["trial_id"] == trial]
        if match.empty:
            raise ConfigError(f"--trial {trial!r} is not in {run!r} (e.g. "
                              f"{', '.join(results['trial_id'].head(3))})")
        row = match.iloc[0]
        if row["status"] != "ok":
            raise ConfigError(f"trial {trial!r} did not finish: {row.get('error')}")
        return row, f"named by the user (--trial {trial})"
    info = folder.read_info()
    search = info["config"]["search"]
    method_rows = results[results["source"].isin(["trial", "sweep"])]
    return pick(method_rows, rule or search["pick"], target=parse_target(search["target"]),
                base=info["base_metrics"])


def point_record(row: Mapping[str, Any], info: Mapping[str, Any], why: str,
                 confirmation: Mapping[str, Any] | None) -> dict[str, Any]:
    """What ``distforget.json`` says of a point: its validation metrics, its test metrics with
    95% intervals (when the search measured them), the base model's, the target and whether
    the point meets it on validation, and the confirmation seeds."""
    def present(keys):
        return {k: float(row[k]) for k in keys if k in row and pd.notna(row[k])}

    search = info["config"]["search"]
    target = parse_target(search["target"])
    tests = [as_test(m) for m in METRICS]
    missed = shortfalls(row, target, info["base_metrics"])
    return {
        "trial_id": row["trial_id"], "why": why,
        "validation": present(METRICS),
        "test": present(tests + [f"{as_test(m)}_{e}" for m in ACCURACIES
                                 for e in ("lo", "hi")]),
        "base": {"validation": present(f"base_{m}" for m in METRICS),
                 "test": present(f"test_base_{m}" for m in METRICS)},
        "target": {"rule": search["target"], "met_on_validation": not missed,
                   "missed_by": missed},
        "confirmation": dict(confirmation) if confirmation else None,
        "interval": "95% Wilson score interval over the test images",
    }


def export_point(run: str, row: Mapping[str, Any], out: str, why: str = "",
                 confirmation: Mapping[str, Any] | None = None) -> str:
    """Write the checkpoint of one results row to ``out`` (a local path or a URI)."""
    folder = RunFolder(run)
    info = folder.read_info()
    spec = ModelSpec(**{k: tuple(v) if isinstance(v, list) else v
                        for k, v in info["model"].items()})
    full = load_safetensors(storage.read_bytes(folder.base_weights))
    base_visual = {k: v for k, v in full.items() if k.startswith("visual.")}
    recipe = Recipe.from_dict(json.loads(row["recipe"]))
    state = {**full, **recipe_state(base_visual, StageCache(folder.stages),
                                    recipe)}
    record = {"recipe": recipe.to_dict(), **point_record(row, info, why, confirmation),
              "params": json.loads(row["params"]) if row.get("params") else {},
              "config": info["config"], "run": str(run)}
    if not storage.is_remote(out):
        return str(write_checkpoint(Path(out), state, spec, record))
    with tempfile.TemporaryDirectory() as tmp:
        local = write_checkpoint(Path(tmp) / "ckpt", state, spec, record)
        for name in ("model.safetensors", "open_clip_config.json", "distforget.json"):
            storage.write_bytes(storage.join(out, name), (local / name).read_bytes())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m distforget.export",
        description="Export a point of a finished search as an open_clip checkpoint.")
    parser.add_argument("--run", required=True, help="the run folder (<storage>/<name>)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--pick", default=None,
                       help="pick rule, e.g. knee or 'forget_acc<=0.05, max zeroshot_acc' "
                            "(default: the run's search.pick)")
    group.add_argument("--trial", default=None, help="a trial_id from results.parquet")
    parser.add_argument("--out", default=None,
                        help="output folder (default: distforget-export/<trial_id>)")
    parser.add_argument("--debug", action="store_true")

    def run(args) -> int:
        row, why = select(args.run, rule=args.pick, trial=args.trial)
        out = args.out or str(Path("distforget-export") / str(row["trial_id"]).replace("~", "-"))
        path = export_point(args.run, row, out, why)
        print(f"exported {row['trial_id']} ({why}) to {path}: forget_acc "
              f"{row['forget_acc']:.3f} retain_acc {row['retain_acc']:.3f} zeroshot_acc "
              f"{row['zeroshot_acc']:.3f}")
        return 0

    return run_cli(parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
