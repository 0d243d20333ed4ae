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
from typing import TYPE_CHECKING, Any, Mapping

from distforget import storage
from distforget.cli import command_parser, run_cli
from distforget.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd


def select(run: str, *, rule: str | None = None, trial: str | None = None
           ) -> tuple["pd.Series", str]:
    """The row of ``results.parquet`` a rule picks, or the named trial, and why."""
    from distforget.pareto import pick
    from distforget.report import read_run_info
    from distforget.results import read_results

    results = read_results(storage.join(run, "results.parquet"))
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
    rule = rule or read_run_info(run)["config"]["search"]["pick"]
    method_rows = results[results["source"].isin(["trial", "sweep"])]
    return pick(method_rows, rule)


def export_point(run: str, row: Mapping[str, Any], out: str, why: str = "") -> str:
    """Write the checkpoint of one results row to ``out`` (a local path or a URI)."""
    import pandas as pd
    from safetensors.torch import load as load_safetensors

    from distforget.checkpoint import write_checkpoint
    from distforget.model import ModelSpec
    from distforget.report import read_run_info
    from distforget.trial import Recipe, StageCache, recipe_state

    info = read_run_info(run)
    spec = ModelSpec(**{k: tuple(v) if isinstance(v, list) else v
                        for k, v in info["model"].items()})
    full = load_safetensors(storage.read_bytes(storage.join(run, "base.safetensors")))
    base_visual = {k: v for k, v in full.items() if k.startswith("visual.")}
    recipe = Recipe.from_dict(json.loads(row["recipe"]))
    state = {**full, **recipe_state(base_visual, StageCache(storage.join(run, "stages")),
                                    recipe)}
    metric_keys = [k for k in row.keys() if k.endswith(("_acc", "_sim", "_auc"))]
    record = {"recipe": recipe.to_dict(), "trial_id": row["trial_id"], "why": why,
              "metrics": {k: float(row[k]) for k in metric_keys if pd.notna(row[k])},
              "params": json.loads(row["params"]) if row.get("params") else {},
              "config": info["config"], "run": str(run)}
    if not storage.is_remote(out):
        return str(write_checkpoint(Path(out), state, spec, record))
    with tempfile.TemporaryDirectory() as tmp:
        local = write_checkpoint(Path(tmp) / "ckpt", state, spec, record)
        for name in ("model.safetensors", "open_clip_config.json", "distforget.json"):
            storage.write_bytes(storage.join(out, name), (local / name).read_bytes())
    return out


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = command_parser(
        "export", prog=prog,
        description="Export a point of a finished search as an open_clip checkpoint.")
    parser.add_argument("--run", required=True, help="the run folder (<storage>/<name>)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--pick", default=None,
                       help="pick rule, e.g. knee or 'forget_acc<=0.05, max zeroshot_acc' "
                            "(default: the run's search.pick)")
    group.add_argument("--trial", default=None, help="a trial_id from results.parquet")
    parser.add_argument("--out", default=None,
                        help="output folder (default: distforget-export/<trial_id>)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of input errors")

    def run(args) -> int:
        if args.out is not None:
            storage.check_writable_folder(args.out, "--out")
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
