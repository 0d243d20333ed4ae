"""Every stage once on a device, timed: forget (plain and LoRA), remind (EMA), a baseline, and
the soup evaluations, on synthetic prepared inputs (random-init model, random images).

It checks the stage code paths on a device (autocast, pinned transfers, LoRA on attention
weights, EMA) and prints each stage's wall time and steady training throughput.

    python bench/stages.py                       # CPU, DF-ViT-Tiny-32
    python bench/stages.py --full                # GPU, ViT-B-32 at batch 256
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, now, steady_throughput, synthetic_prepared  # noqa: E402
from distforget.cli import pick_device  # noqa: E402
from distforget.baselines import run_baseline  # noqa: E402
from distforget.config import BaselineConfig, ForgetConfig, RemindConfig  # noqa: E402
from distforget.forget import run_forget  # noqa: E402
from distforget.remind import run_remind  # noqa: E402
from distforget.trial import Recipe, StageCache, evaluate_recipes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device = pick_device(args.device)
    model = args.model or ("ViT-B-32" if args.full else "DF-ViT-Tiny-32")
    batch = 256 if args.full else 32
    prepared = synthetic_prepared(model, n_retain=batch * 8, n_forget=batch * 4)
    print(f"# {machine()}\n# {model}, batch {batch}, device {device}")
    print("| stage | wall s | steps | steady img/s |\n| --- | --- | --- | --- |")
    cache = StageCache()
    runs = [
        ("forget", lambda: run_forget(prepared, ForgetConfig(epochs=3, batch_size=batch, top_k=3,
                                                             lr=1e-5, fisher_samples=32),
                                      device=device)),
        ("forget+LoRA", lambda: run_forget(prepared, ForgetConfig(
            epochs=3, batch_size=batch, top_k=3, lr=1e-4, lora_rank=8, fisher_samples=32),
            device=device)),
        ("remind+EMA", lambda: run_remind(prepared, RemindConfig(
            epochs=3, batch_size=batch, lr=1e-5, ema_decay=0.99, bn_align_images=0),
            cache.get("forget", "f"), device=device)),
        ("baseline rl", lambda: run_baseline(prepared, "rl", BaselineConfig(
            epochs=3, batch_size=batch, target_acc=0.0), device=device)),
    ]
    for name, fn in runs:
        start = now()
        out = fn()
        if name == "forget":
            cache.put("forget", "f", out)
        if name == "remind+EMA":
            cache.put("remind", "r", out)
        print(f"| {name} | {now() - start:.1f} | {out.meta['steps']} | "
              f"{steady_throughput(out.meta['history']):,.0f} |", flush=True)
    recipes = [Recipe("three_stage", (("forget", "f"), ("remind", "r")), a) for a in
               (0.0, 0.25, 0.5, 0.75, 1.0)]
    start = now()
    metrics = evaluate_recipes(prepared, cache, recipes, "val", device)
    n_images = sum(len(prepared.split(s)) for s in ("val_forget", "val_retain",
                                                    "val_zeroshot", "forget_train"))
    wall = now() - start
    print(f"| 5 soups evaluated | {wall:.1f} | - | {5 * n_images / wall:,.0f} (eval) |")
    assert all(0.0 <= m["forget_acc"] <= 1.0 for m in metrics)


if __name__ == "__main__":
    main()
