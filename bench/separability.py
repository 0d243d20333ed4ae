"""How far apart the base model already holds the forget subgroup and the retained images.

A scenario whose forget subgroup shares its class text with retained subgroups (forget dogs, keep
the other animals, all named "animal") asks the unlearned model to tell the subgroup apart from
its class-mates. This benchmark measures how well the *base* model's image features already do
that: a logistic regression on the base features of the training forget and retain images
(``forget_train`` against ``retain_train``), its threshold set on validation so that 95% of the
validation forget images are flagged (the target's ``forget_acc <= 0.05``), then applied to the
test images. It reports, on test, the forget images flagged and the retained images kept, and
the retain accuracy that a model keeping the base features could reach at that threshold (test
retain images the base model classifies correctly and the rule does not flag), beside the
target's ``0.9 x base`` retain accuracy.

A low figure says the method must learn new features to meet the target (which fine-tuning a few
layers for a few epochs may not do); a high one says the base features suffice. Validation sets
the threshold, test reports it; nothing here feeds a search.

With ``--finetune N`` the probe is not fitted on frozen features: the whole image tower trains
with it for N epochs (AdamW, mirrored images, the two sets weighted equally), from the base
weights, on the same training images. That asks what the stages could reach at best if they
spent all their freedom on telling the subgroup apart (no distillation, no zero-shot head to
keep): a figure below the target's there says the target is out of reach of fine-tuning this
tower on these images, not only of the stages' settings. ``reachable`` still counts only test
retain images the *base* model classifies correctly.

    python bench/separability.py                          # the embedded default
    python bench/separability.py - configs/suite/cifar10-hierarchy.yaml --seeds 3
    python bench/separability.py configs/suite/cifar10-hierarchy.yaml --finetune 15
    python bench/separability.py configs/check/check-vehicle-automobile.yaml --section NAME
    python bench/separability.py CONFIG --set pretrain.epochs=30 --section NAME  # a variant

Figures go into bench/RESULTS.md's separability section, or its ``separability-finetune``
section with ``--finetune``, or between the markers that ``--section NAME`` names (checked
before any work; ``--no-write``: print only).
"""

from __future__ import annotations

import argparse
import functools
import sys
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine, missing_section, replace_section  # noqa: E402
from distforget.config import load_config, parse_overrides  # noqa: E402
from distforget.errors import ConfigError  # noqa: E402
from distforget.evaluate import image_features, zero_shot_logits  # noqa: E402
from distforget.prepare import prepare  # noqa: E402
from distforget.report import markdown_table  # noqa: E402
from distforget.training import embed, global_batches, set_trainable, train_mode  # noqa: E402

FLAGGED = 0.95  # share of validation forget images the rule must flag (forget_acc <= 0.05)


def fit_probe(forget: torch.Tensor, retain: torch.Tensor, l2: float = 1e-4
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic regression forget (1) against retain (0), classes weighted equally."""
    x = torch.cat([forget, retain])
    y = torch.cat([torch.ones(len(forget)), torch.zeros(len(retain))])
    weight = torch.where(y == 1, 0.5 / len(forget), 0.5 / len(retain))
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (F.binary_cross_entropy_with_logits(x @ w + b, y, reduction="none") * weight
                ).sum() + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def finetune_probe(visual: torch.nn.Module, prepared, prep, epochs: int, seed: int,
                   lr: float = 3e-4, batch_size: int = 128
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Train the whole image tower and a linear probe on its embeddings, forget (1) against
    retain (0) training images, classes weighted equally; the tower is changed in place."""
    forget = prepared.split("forget_train").indices
    retain = prepared.split("retain_train").indices
    rows = np.concatenate([forget, retain])
    y = torch.cat([torch.ones(len(forget)), torch.zeros(len(retain))])
    weight = torch.where(y == 1, 0.5 / len(forget), 0.5 / len(retain)) * len(rows)
    w = torch.zeros(np.asarray(prepared.head).shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    set_trainable(visual, None)
    train_mode(visual)
    opt = torch.optim.AdamW([*visual.parameters(), w, b], lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        total = 0.0
        for batch in global_batches(len(rows), batch_size, epoch, seed):
            flip = torch.rand(len(batch), generator=gen) < 0.5
            x = embed(visual, prep(prepared.images[rows[batch]], flip=flip))
            idx = torch.as_tensor(batch)
            # The probe reads the unit embedding, scaled as the zero-shot head's logits are.
            loss = (F.binary_cross_entropy_with_logits(prepared.logit_scale * (x @ w) + b,
                                                       y[idx], reduction="none")
                    * weight[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(batch)
        print(f"  finetune epoch {epoch + 1}/{epochs}: loss {total / len(rows):.4f}", flush=True)
    visual.eval()
    return prepared.logit_scale * w.detach(), b.detach()


def measure(config: str | None, seed: int, finetune: int = 0,
            overrides: dict | None = None) -> dict:
    cfg = load_config(config, {**(overrides or {}), "scenario.seed": seed})
    device = torch.device("cpu")
    prepared = prepare(cfg, device, log=lambda m: None)
    prep = prepared.preprocess(device)
    base_visual = prepared.model().visual
    retain = prepared.split("test_retain")
    logits = zero_shot_logits(base_visual, prepared.images[retain.indices], prep,
                              prepared.head_tensor(device), prepared.logit_scale)
    correct = torch.as_tensor(np.asarray(logits).argmax(1) == retain.labels)

    def rule(visual: torch.nn.Module, probe=None) -> dict:
        """The threshold rule on ``visual``'s features, with ``probe`` (w, b) or a logistic
        regression fitted on them."""
        @functools.cache  # forget_train is read twice: for the fit and for the last column
        def feats(split: str) -> torch.Tensor:
            with torch.no_grad():
                return image_features(visual, prepared.images[prepared.split(split).indices],
                                      prep)

        w, b = probe or fit_probe(feats("forget_train"), feats("retain_train"))
        threshold = torch.quantile(feats("val_forget") @ w + b, 1 - FLAGGED)
        kept = (feats("test_retain") @ w + b) < threshold
        return {"forget_flagged": float(((feats("test_forget") @ w + b) >= threshold
                                         ).float().mean()),
                "retain_kept": float(kept.float().mean()),
                "reachable_retain_acc": float((kept & correct).float().mean()),
                "train_flagged_at_threshold": float(((feats("forget_train") @ w + b)
                                                     >= threshold).float().mean())}

    frozen = rule(base_visual)
    label = " ".join([Path(config).stem if config else "embedded",
                      *(f"{k}={v}" for k, v in (overrides or {}).items())])
    row = {"scenario": label, "seed": seed}
    if finetune:
        visual = prepared.model().visual
        row.update(rule(visual, finetune_probe(visual, prepared, prep, finetune, seed)))
        row.update({"frozen_retain_kept": frozen["retain_kept"],
                    "frozen_reachable": frozen["reachable_retain_acc"]})
    else:
        row.update(frozen)
    return {**row, "base_retain_acc": float(correct.float().mean()),
            "target_retain_acc": 0.9 * prepared.base_metrics["retain_acc"],
            "n_test": f"{len(prepared.split('test_forget').indices)}/{len(retain.indices)}"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", default=["-"],
                        help="scenario configs; - is the embedded default (the default)")
    parser.add_argument("--seeds", type=int, default=3, help="scenario seeds 0..N-1")
    parser.add_argument("--finetune", type=int, default=0, metavar="EPOCHS",
                        help="train the whole image tower with the probe for this many epochs "
                             "(0: a probe on the frozen base features)")
    parser.add_argument("--no-write", dest="write", action="store_false")
    parser.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="a config override for every scenario (repeatable), e.g. "
                             "pretrain.epochs=30; the table names it beside the scenario")
    parser.add_argument("--section", metavar="NAME",
                        help="write between the markers <!-- NAME:begin/end --> of the results "
                             "file (default: separability, or separability-finetune with "
                             "--finetune)")
    args = parser.parse_args(argv)
    section = args.section or ("separability-finetune" if args.finetune else "separability")
    problem = args.write and missing_section(Path(args.results), section)
    if problem:  # said before any work
        parser.error(f"--section {section!r}: {problem}")
    try:  # said before any work, after the section
        overrides = parse_overrides(args.overrides)
        for config in args.configs:
            load_config(None if config == "-" else config, overrides)
    except (ConfigError, OSError) as exc:
        parser.error(str(exc))
    torch.manual_seed(0)
    rows = []
    for config in args.configs:
        for seed in range(args.seeds):
            rows.append(measure(None if config == "-" else config, seed, args.finetune,
                                overrides))
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    summary = table.groupby("scenario", sort=False).agg(
        seeds=("seed", "count"), forget_flagged=("forget_flagged", "mean"),
        retain_kept=("retain_kept", "mean"), reachable_min=("reachable_retain_acc", "min"),
        reachable_max=("reachable_retain_acc", "max"),
        target_retain_acc=("target_retain_acc", "mean"),
        **({"frozen_retain_kept": ("frozen_retain_kept", "mean")} if args.finetune else {})
    ).reset_index()
    text = markdown_table(summary, list(summary.columns))
    print(text)
    if args.write:
        command = " ".join(["python bench/separability.py", *args.configs,
                            f"--seeds {args.seeds}",
                            *([f"--finetune {args.finetune}"] if args.finetune else []),
                            *(f"--set {o}" for o in args.overrides),
                            *([f"--section {args.section}"] if args.section else [])])
        body = (f"`{command}` ({date.today()}; {machine()}). Test split; "
                f"the threshold flags {FLAGGED:.0%} of the validation forget images. "
                "`reachable` = test retain images the base model classifies correctly and the "
                "rule keeps (min and max over seeds); `target_retain_acc` = 0.9 x base retain "
                f"accuracy on validation (mean over seeds).\n\n{text}\n\nPer seed:\n\n"
                f"{markdown_table(table, list(table.columns))}\n")
        replace_section(Path(args.results), section, body)


if __name__ == "__main__":
    main()
