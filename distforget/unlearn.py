"""``distforget unlearn``: one run of the method or a baseline, without a search.

With no arguments it runs the three-stage method and every baseline once on the embedded
default, prints a table and writes ``unlearn.json`` (one record per method: every validation
metric and its test twin) and each method's checkpoint under ``unlearn/<method>/``, both in the
run's output folder ``<output.storage>/<output.name>/`` (so two configs run from one folder keep
their own results; a search may share the folder). ``--method all,retrain`` adds the retrain
reference and each method's gap to it. Stages run in this process on one device; no Ray is
involved.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from distforget.cli import (add_common_arguments, command_parser, config_from_args, pick_device,
                            run_cli)
from distforget.config import BASELINES, METHODS, RunConfig, replace, small_clip_settings_note
from distforget.errors import ConfigError

if TYPE_CHECKING:
    import torch

SHOWN = ("method", "forget_acc", "retain_acc", "zeroshot_acc", "test_forget_acc",
         "test_retain_acc", "test_zeroshot_acc", "mia_auc", "alpha", "gap_to_retrain",
         "wall_s")
ALL = ("three_stage", *BASELINES, "base")  # what --method all runs


def parse_methods(text: str) -> list[str]:
    """``--method``: one method, ``all``, or a comma-separated list (``all,retrain``)."""
    methods: list[str] = []
    for name in (n.strip() for n in text.split(",")):
        if name != "all" and name not in METHODS:
            raise ConfigError(f"--method {name!r}: expected one of {', '.join(METHODS)} or all "
                              "(several: comma-separated)")
        methods += [m for m in (ALL if name == "all" else (name,)) if m not in methods]
    return methods


def output_paths(cfg: RunConfig, json_path: str | None, out: str | None
                 ) -> tuple[Path, Path | None]:
    """Where ``unlearn.json`` and the checkpoints go: the given paths, else the run's output
    folder (``out=''`` writes no checkpoints)."""
    from distforget import storage

    if (json_path is None or out is None) and storage.is_remote(cfg.output.storage):
        raise ConfigError(f"output.storage {cfg.output.storage!r}: unlearn writes to a local "
                          "folder; set a local output.storage, or --json and --out")
    run = Path(cfg.output.storage).absolute() / cfg.output.name
    json_path = Path(json_path) if json_path is not None else run / "unlearn.json"
    out_dir = run / "unlearn" if out is None else (Path(out) if out else None)
    return json_path, out_dir


def write_json_atomic(path: Path, data) -> None:
    from distforget.storage import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=float))


def unlearn(cfg: RunConfig, methods: list[str], *, device: torch.device, out_dir: Path | None,
            log=print, prepared=None) -> list[dict]:
    """Run each method on one set of prepared inputs (made from ``cfg`` unless given); returns
    one record per method."""
    from distforget.checkpoint import write_checkpoint
    from distforget.objectives import weak_base
    from distforget.prepare import prepare
    from distforget.trial import (Recipe, StageCache, local_evaluator, local_launcher,
                                  recipe_state, run_trial)

    note = small_clip_settings_note(cfg)
    if note:  # before prepare, which may load or pretrain a model for minutes
        log(note)
    prepared = prepared if prepared is not None else prepare(cfg, device, log=log)
    log(f"scenario: forget {cfg.scenario.forget_class}/{cfg.scenario.forget_subgroup}; "
        f"splits {prepared.info['splits']}")
    weak = weak_base(prepared.base_metrics, len(prepared.head))
    if weak:
        log(f"note: {weak}")
    cache = StageCache()
    evaluate = local_evaluator(prepared, cache, device, cfg.model.precision)
    base_test, = evaluate([Recipe("base")], "test")
    test_base = {f"test_base_{k[len('test_'):]}": v for k, v in base_test.items()}
    records = []
    for method in methods:
        run_cfg = replace(cfg, {"method": method})
        if method == "retrain":
            records.append({**_retrain_record(prepared, run_cfg, device, out_dir, log),
                            **test_base})
            continue
        result = run_trial(prepared, run_cfg, launch=local_launcher(prepared, cache, device),
                           cache=cache, evaluate=evaluate, diagnose=True)
        # Nothing is chosen across methods here (each runs at its config's settings; alpha is
        # chosen on the calibration set), so each run's test metrics are read right after it.
        test, = evaluate([result.recipe], "test")
        record = {**result.record(), **test, **test_base}
        if result.diagnostics:
            record["diagnostics"] = result.diagnostics
            for line in diagnostics_lines(result.diagnostics):
                log(line)
        if out_dir is not None and method != "base":
            state = {**prepared.model().state_dict(),
                     **recipe_state(prepared.base_visual_state(), cache, result.recipe)}
            path = write_checkpoint(out_dir / method, state, prepared.spec, {
                "recipe": result.recipe.to_dict(), "metrics": record,
                "config": run_cfg.to_dict()})
            record["checkpoint"] = str(path)
        records.append(record)
        log(f"{method}: validation forget_acc {record['forget_acc']:.3f}  retain_acc "
            f"{record['retain_acc']:.3f}  zeroshot_acc {record['zeroshot_acc']:.3f}; test "
            f"{record['test_forget_acc']:.3f} / {record['test_retain_acc']:.3f} / "
            f"{record['test_zeroshot_acc']:.3f}  ({record['wall_s']:.1f}s)")
    reference = next((r for r in records if r["method"] == "retrain"), None)
    if reference is not None:
        from distforget.retrain import gap_to_retrain
        for r in records:
            r["gap_to_retrain"] = gap_to_retrain(r, reference)
    return records


def diagnostics_lines(d: dict) -> list[str]:
    """The three-stage method stage by stage, as printed lines (validation metrics)."""
    def row(label: str, m: dict) -> str:
        calib = (f"   calib F {m['calib_forget_acc']:.3f} R {m['calib_retain_acc']:.3f}"
                 if "calib_forget_acc" in m else "")
        return (f"  {label:<22} {m['forget_acc']:>7.3f} {m['retain_acc']:>7.3f} "
                f"{m['zeroshot_acc']:>8.3f}{calib}")

    lines = [f"  {'three_stage, by stage':<22} {'forget':>7} {'retain':>7} {'zeroshot':>8}",
             row("after forget", d["after_forget"]), row("after remind", d["after_remind"])]
    for s in d["soups"]:
        mark = " <- chosen" if (s["alpha"], s["beta"]) == (d["alpha"], d["beta"]) else ""
        label = f"soup alpha {s['alpha']:g}" + (f" beta {s['beta']:g}" if s["beta"] else "")
        lines.append(row(label, s) + mark)
    lines.append(f"  chosen: {d['why']}")
    lines += [f"  note: {n}" for n in d["notes"]]
    return lines


def _retrain_record(prepared, cfg: RunConfig, device: torch.device, out_dir: Path | None,
                    log) -> dict:
    from distforget.checkpoint import write_checkpoint
    from distforget.model import ModelSpec
    from distforget.retrain import retrain, target_note

    state, record, weights = retrain(prepared, cfg, device=device, log=log)
    record["target_note"] = target_note(record, cfg.search.target)
    if out_dir is not None:
        spec = ModelSpec(**{**prepared.spec.__dict__, "weights": f"retrain:{Path(weights).name}"})
        record["checkpoint"] = str(write_checkpoint(out_dir / "retrain", state, spec, {
            "recipe": {"method": "retrain"}, "metrics": dict(record),
            "config": cfg.to_dict()}))
    log(f"retrain: validation forget_acc {record['forget_acc']:.3f}  retain_acc "
        f"{record['retain_acc']:.3f}  zeroshot_acc {record['zeroshot_acc']:.3f}; test "
        f"{record['test_forget_acc']:.3f} / {record['test_retain_acc']:.3f} / "
        f"{record['test_zeroshot_acc']:.3f}  ({record['wall_s']:.1f}s; "
        f"{record['retrain_excluded']} training images of the forget subgroup left out)")
    if record["target_note"]:
        log(f"note: {record['target_note']}")
    return record


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = command_parser(
        "unlearn", prog=prog, takes_config=True,
        description="Run the three-stage method or a baseline once (no search) and write "
                    "the metrics and checkpoints.")
    add_common_arguments(parser)
    parser.add_argument("--method", default="all",
                        help=f"one of {', '.join(METHODS)}, or 'all' (default: the method, "
                             "every baseline and the base model), or several, comma-separated "
                             "(e.g. all,retrain)")
    parser.add_argument("--json", default=None, help="where the records go (default: "
                        "<output.storage>/<output.name>/unlearn.json)")
    parser.add_argument("--out", default=None,
                        help="folder for checkpoints, one per method ('' for none; default: "
                             "<output.storage>/<output.name>/unlearn/)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if present)")

    def run(args) -> int:
        methods = parse_methods(args.method)
        cfg = config_from_args(args)
        if "retrain" in methods:
            from distforget.retrain import check_retrain
            check_retrain(cfg)
        json_path, out_dir = output_paths(cfg, args.json, args.out)
        from distforget.storage import check_writable_folder

        check_writable_folder(json_path.parent, "--json folder")
        if out_dir is not None:
            check_writable_folder(out_dir, "--out")
        import pandas as pd

        records = unlearn(cfg, methods, device=pick_device(args.device), out_dir=out_dir)
        table = pd.DataFrame(records)
        print(table[[c for c in SHOWN if c in table]].to_string(index=False,
                                                                 float_format="%.3f"))
        write_json_atomic(json_path, records)
        print(f"wrote {json_path}")
        return 0

    return run_cli(parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
