"""``distforget unlearn``: one run of the method or a baseline, without a search.

With no arguments it runs the three-stage method and every baseline once on the embedded
default, prints a table and writes ``unlearn.json`` (one record per method, every metric) in the
current folder, and each method's checkpoint under ``unlearn/<method>/``. Stages run in this
process on one device; no Ray is involved.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from distforget.cli import (add_common_arguments, command_parser, config_from_args, pick_device,
                            run_cli)
from distforget.config import BASELINES, METHODS, RunConfig, replace
from distforget.errors import ConfigError

if TYPE_CHECKING:
    import torch

SHOWN = ("method", "forget_acc", "retain_acc", "zeroshot_acc", "test_forget_acc",
         "test_retain_acc", "test_zeroshot_acc", "mia_auc", "alpha", "wall_s")


def write_json_atomic(path: Path, data) -> None:
    from distforget.storage import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=float))


def unlearn(cfg: RunConfig, methods: list[str], *, device: torch.device, out_dir: Path | None,
            log=print, prepared=None) -> list[dict]:
    """Run each method on one set of prepared inputs (made from ``cfg`` unless given); returns
    one record per method."""
    from distforget.checkpoint import write_checkpoint
    from distforget.prepare import prepare
    from distforget.trial import (Recipe, StageCache, local_evaluator, local_launcher,
                                  recipe_state, run_trial)

    prepared = prepared if prepared is not None else prepare(cfg, device, log=log)
    log(f"scenario: forget {cfg.scenario.forget_class}/{cfg.scenario.forget_subgroup}; "
        f"splits {prepared.info['splits']}")
    cache = StageCache()
    evaluate = local_evaluator(prepared, cache, device, cfg.model.precision)
    base_test, = evaluate([Recipe("base")], "test")
    records = []
    for method in methods:
        run_cfg = replace(cfg, {"method": method})
        result = run_trial(prepared, run_cfg, launch=local_launcher(prepared, cache, device),
                           cache=cache, evaluate=evaluate)
        # Nothing is chosen across methods here (each runs at its config's settings; alpha is
        # chosen on the calibration set), so each run's test metrics are read right after it.
        test, = evaluate([result.recipe], "test")
        record = {**result.record(), **test,
                  **{f"test_base_{k[len('test_'):]}": v for k, v in base_test.items()}}
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
    return records


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = command_parser(
        "unlearn", prog=prog, takes_config=True,
        description="Run the three-stage method or a baseline once (no search) and write "
                    "the metrics and checkpoints.")
    add_common_arguments(parser)
    parser.add_argument("--method", default="all",
                        help=f"one of {', '.join(METHODS)}, or 'all' (default)")
    parser.add_argument("--json", default="unlearn.json", help="where the records go")
    parser.add_argument("--out", default="unlearn",
                        help="folder for checkpoints, one per method ('' for none)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if present)")

    def run(args) -> int:
        if args.method != "all" and args.method not in METHODS:
            raise ConfigError(f"--method {args.method!r}: expected one of "
                              f"{', '.join(METHODS)} or all")
        cfg = config_from_args(args)
        from distforget.storage import check_writable_folder

        check_writable_folder(Path(args.json).parent, "--json folder")
        if args.out:
            check_writable_folder(args.out, "--out")
        import pandas as pd

        methods = ["three_stage", *BASELINES, "base"] if args.method == "all" else [args.method]
        records = unlearn(cfg, methods, device=pick_device(args.device),
                          out_dir=Path(args.out) if args.out else None)
        table = pd.DataFrame(records)
        print(table[[c for c in SHOWN if c in table]].to_string(index=False,
                                                                 float_format="%.3f"))
        write_json_atomic(Path(args.json), records)
        print(f"wrote {args.json}")
        return 0

    return run_cli(parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
