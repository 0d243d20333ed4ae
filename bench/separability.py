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

    python bench/separability.py                          # the embedded default
    python bench/separability.py - configs/suite/cifar10-hierarchy.yaml --seeds 3

Figures go into bench/RESULTS.md's separability section (``--no-write``: print only).
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine, replace_section  # noqa: E402
from distforget.config import load_config  # noqa: E402
from distforget.evaluate import image_features, zero_shot_logits  # noqa: E402
from distforget.prepare import prepare  # noqa: E402
from distforget.report import markdown_table  # noqa: E402

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


def measure(config: str | None, seed: int) -> dict:
    cfg = load_config(config, {"scenario.seed": seed})
    device = torch.device("cpu")
    prepared = prepare(cfg, device, log=lambda m: None)
    visual = prepared.model().visual
    prep = prepared.preprocess(device)

    def feats(split: str) -> torch.Tensor:
        return image_features(visual, prepared.images[prepared.split(split).indices], prep)

    w, b = fit_probe(feats("forget_train"), feats("retain_train"))
    threshold = torch.quantile(feats("val_forget") @ w + b, 1 - FLAGGED)
    test_forget = (feats("test_forget") @ w + b) >= threshold
    retain = prepared.split("test_retain")
    retain_scores = feats("test_retain") @ w + b
    logits = zero_shot_logits(visual, prepared.images[retain.indices], prep,
                              prepared.head_tensor(device), prepared.logit_scale)
    correct = torch.as_tensor(np.asarray(logits).argmax(1) == retain.labels)
    kept = retain_scores < threshold
    base = prepared.base_metrics
    return {"scenario": Path(config).stem if config else "embedded", "seed": seed,
            "forget_flagged": float(test_forget.float().mean()),
            "retain_kept": float(kept.float().mean()),
            "reachable_retain_acc": float((kept & correct).float().mean()),
            "base_retain_acc": float(correct.float().mean()),
            "target_retain_acc": 0.9 * base["retain_acc"],
            "n_test": f"{len(test_forget)}/{len(retain.indices)}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", default=["-"],
                        help="scenario configs; - is the embedded default (the default)")
    parser.add_argument("--seeds", type=int, default=3, help="scenario seeds 0..N-1")
    parser.add_argument("--no-write", dest="write", action="store_false")
    parser.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for config in args.configs:
        for seed in range(args.seeds):
            rows.append(measure(None if config == "-" else config, seed))
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    summary = table.groupby("scenario", sort=False).agg(
        seeds=("seed", "count"), forget_flagged=("forget_flagged", "mean"),
        retain_kept=("retain_kept", "mean"), reachable_min=("reachable_retain_acc", "min"),
        reachable_max=("reachable_retain_acc", "max"),
        target_retain_acc=("target_retain_acc", "mean")).reset_index()
    text = markdown_table(summary, list(summary.columns))
    print(text)
    if args.write:
        command = " ".join(["python bench/separability.py", *args.configs,
                            f"--seeds {args.seeds}"])
        body = (f"`{command}` ({date.today()}; {machine()}). Test split; "
                f"the threshold flags {FLAGGED:.0%} of the validation forget images. "
                "`reachable` = test retain images the base model classifies correctly and the "
                "rule keeps (min and max over seeds); `target_retain_acc` = 0.9 x base retain "
                f"accuracy on validation (mean over seeds).\n\n{text}\n\nPer seed:\n\n"
                f"{markdown_table(table, list(table.columns))}\n")
        replace_section(Path(args.results), "separability", body)


if __name__ == "__main__":
    main()
