"""``distforget export``: a point of a finished search as an open_clip checkpoint.

    distforget export --run distforget_runs/embedded-default [--pick RULE | --trial ID]
                      --out exported/ [--push-to-hub ORG/NAME]

The point is rebuilt from the run folder alone (the base weights, the cached stage outputs and
the point's soup recipe). The folder is in open_clip's Hugging Face Hub layout
(``open_clip_model.safetensors``, ``open_clip_config.json``, a ``README.md`` model card) plus
``model.safetensors`` and ``distforget.json``: ``open_clip.create_model_and_transforms(
"local-dir:exported")`` loads it with open_clip alone, and ``pretrained=
"exported/model.safetensors"`` with the architecture's name (for distforget's own
architectures, ``import distforget`` first). ``--push-to-hub`` uploads it with open_clip's own
helper (``open_clip.push_to_hf_hub``), after which ``"hf-hub:ORG/NAME"`` loads it.
"""

from __future__ import annotations

import importlib
import importlib.util
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
    from distforget.confirm import choose, run_config
    from distforget.run_folder import RunFolder

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
    row, why = choose(results, run_config(info, rule), info)
    if row is None:
        raise ConfigError(f"run {run!r} has no finished trial to pick from")
    return row, why


def point_record(row: Mapping[str, Any], info: Mapping[str, Any], why: str,
                 confirmation: Mapping[str, Any] | None) -> dict[str, Any]:
    """What ``distforget.json`` says of a point: its validation metrics, its test metrics with
    95% intervals (when the search measured them), the base model's, the target and whether
    the point meets it on validation, and the confirmation seeds."""
    from distforget.objectives import ACCURACIES, METRICS, as_test, parse_target, shortfalls

    def present(keys):
        return {k: float(row[k]) for k in keys if k in row and row[k] is not None
                and row[k] == row[k]}

    search = info["config"]["search"]
    target = parse_target(search["target"])
    missed = shortfalls(row, target, info["base_metrics"])
    return {
        "trial_id": row["trial_id"], "why": why,
        "validation": present(METRICS),
        "test": present([as_test(m) for m in METRICS]
                        + [f"{as_test(m)}_{e}" for m in ACCURACIES for e in ("lo", "hi")]),
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
    from safetensors.torch import load as load_safetensors

    from distforget.checkpoint import write_checkpoint
    from distforget.model import ModelSpec
    from distforget.run_folder import RunFolder
    from distforget.trial import Recipe, StageCache, recipe_state

    folder = RunFolder(run)
    info = folder.read_info()
    spec = ModelSpec(**{k: tuple(v) if isinstance(v, list) else v
                        for k, v in info["model"].items()})
    full = load_safetensors(storage.read_bytes(folder.base_weights))
    base_visual = {k: v for k, v in full.items() if k.startswith("visual.")}
    recipe = Recipe.from_dict(json.loads(row["recipe"]))
    state = {**full, **recipe_state(base_visual, StageCache(folder.stages), recipe)}
    record = {"recipe": recipe.to_dict(), **point_record(row, info, why, confirmation),
              "params": json.loads(row["params"]) if row.get("params") else {},
              "config": info["config"], "run": str(run)}
    if not storage.is_remote(out):
        return str(write_checkpoint(Path(out), state, spec, record))
    with tempfile.TemporaryDirectory() as tmp:
        local = write_checkpoint(Path(tmp) / "ckpt", state, spec, record)
        for path in sorted(local.iterdir()):
            storage.write_bytes(storage.join(out, path.name), path.read_bytes())
    return out


def _hub_module():
    """open_clip's Hub helper module, or an error that says what to install."""
    hub = importlib.import_module("open_clip.push_to_hf_hub")
    missing = [name for name in ("transformers",) if importlib.util.find_spec(name) is None]
    if not getattr(hub, "_has_hf_hub", False) or missing:
        try:
            from importlib.metadata import version
            installed = f"huggingface_hub {version('huggingface_hub')}"
        except Exception:  # not installed at all
            installed = "no huggingface_hub"
        reason = (f"{', '.join(missing)} is not installed" if missing and hub._has_hf_hub
                  else f"open_clip's Hub helper cannot use {installed}")
        raise ConfigError(f"--push-to-hub: {reason}; expected huggingface_hub<2 and "
                          "transformers: pip install 'distforget[hub]'")
    return hub


def push_to_hub(folder: str | Path, repo_id: str, *, private: bool = False,
                commit_message: str = "Add distforget export") -> Any:
    """Upload an exported folder to the Hugging Face Hub with open_clip's own helper
    (``open_clip.push_to_hf_hub.push_to_hf_hub``), its model card included. The token comes
    from ``HF_TOKEN`` or ``hf auth login``, as for any Hub upload."""
    hub = _hub_module()
    import open_clip

    from distforget import model_card
    from distforget.checkpoint import HUB_CONFIG, read_record

    folder = Path(folder)
    record = read_record(folder)
    model = open_clip.create_model(f"local-dir:{folder}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    model_cfg = json.loads((folder / HUB_CONFIG).read_text())["model_cfg"]
    return hub.push_to_hf_hub(model, tokenizer, model_cfg, repo_id,
                              commit_message=commit_message, private=private,
                              model_card=model_card.card(record), safe_serialization=True)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = command_parser(
        "export", prog=prog,
        description="Export a point of a finished search as an open_clip checkpoint (open_clip's "
                    "Hub layout), and optionally push it to the Hub.")
    parser.add_argument("--run", required=True, help="the run folder (<storage>/<name>)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--pick", default=None,
                       help="pick rule, e.g. knee or 'forget_acc<=0.05, max zeroshot_acc' "
                            "(default: the run's search.pick)")
    group.add_argument("--trial", default=None, help="a trial_id from results.parquet")
    parser.add_argument("--out", default=None,
                        help="output folder (default: distforget-export/<trial_id>)")
    parser.add_argument("--push-to-hub", default=None, metavar="ORG/NAME",
                        help="also upload the folder to this Hugging Face Hub repository "
                             "(needs pip install 'distforget[hub]' and a Hub token)")
    parser.add_argument("--private", action="store_true",
                        help="with --push-to-hub: create the repository as private")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of input errors")

    def run(args) -> int:
        if args.out is not None:
            storage.check_writable_folder(args.out, "--out")
        if args.push_to_hub is not None:
            if args.out is not None and storage.is_remote(args.out):
                raise ConfigError(f"--push-to-hub uploads a local folder: --out {args.out!r} "
                                  "is remote; expected a local path")
            _hub_module()  # refuse before the export when the upload cannot work
        row, why = select(args.run, rule=args.pick, trial=args.trial)
        out = args.out or str(Path("distforget-export") / str(row["trial_id"]).replace("~", "-"))
        path = export_point(args.run, row, out, why)
        print(f"exported {row['trial_id']} ({why}) to {path}: forget_acc "
              f"{row['forget_acc']:.3f} retain_acc {row['retain_acc']:.3f} zeroshot_acc "
              f"{row['zeroshot_acc']:.3f}")
        if args.push_to_hub is not None:
            push_to_hub(path, args.push_to_hub, private=args.private)
            print(f"pushed {path} to the Hugging Face Hub as {args.push_to_hub}; load it with "
                  f"open_clip.create_model_and_transforms('hf-hub:{args.push_to_hub}')")
        return 0

    return run_cli(parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
