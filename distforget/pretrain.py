"""``distforget pretrain``: pretrain the small CLIP on a labelled image set (cached), and print
its zero-shot accuracy on the held-out split:

    distforget pretrain                                   # the embedded default's base model
    distforget pretrain --config configs/cifar10.yaml [data.path=../shared/data/cifar10]

The work is ``distforget.pretraining``; this module parses the arguments first and imports
torch and open_clip after, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import shutil


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    from distforget.cli import add_common_arguments, config_from_args, pick_device, run_cli

    parser = argparse.ArgumentParser(
        prog=prog or "python -m distforget.pretrain",
        description="Pretrain the small CLIP on a labelled image set (cached); print its "
                    "zero-shot accuracy on the held-out split.")
    add_common_arguments(parser)
    parser.add_argument("--out", help="also copy the weights to this .safetensors file")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if present)")

    def run(args) -> int:
        from distforget.data.load import load_data
        from distforget.model import input_size
        from distforget.pretraining import ensure_pretrained, pretrained_info
        from distforget.storage import atomic_path
        from distforget.zeroshot import templates_for

        cfg = config_from_args(args)
        device = pick_device(args.device)
        data = load_data(cfg.data, model_size=input_size(cfg.model.name), log=print)
        templates = templates_for(cfg.data.templates, cfg.data.format, data.classes)
        path = ensure_pretrained(cfg.model, cfg.pretrain, data, templates, device,
                                 holdout_fraction=cfg.scenario.holdout_fraction)
        info = pretrained_info(path)
        print(json.dumps({"weights": str(path), **info}, indent=2))
        if args.out:
            with atomic_path(args.out) as tmp:
                shutil.copyfile(path, tmp)
        return 0

    return run_cli(parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
