"""Images per second of one stage: distforget's trial loop against a plain PyTorch loop on the
same device, in the same run, and the ratio.

The stage is fine-tuning of the whole image tower with cross-entropy over a zero-shot head (the
``ft`` stage): uint8 images move to the device per batch and are resized and normalised there,
as in every distforget stage. The plain loop does the same computation with nothing around it.
With ``--ray`` the stage runs as a Ray Train ``TorchTrainer`` (one worker) and its steady
throughput is read from the stage's own per-epoch timings; the end-to-end time, TorchTrainer
start included, is printed too.

    python bench/throughput.py                      # CPU: DF-ViT-Tiny-32, batch 64, with Ray Train
    python bench/throughput.py --full --no-ray --compile both   # GPU: ViT-B-32, batch 256, bf16
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, now, steady_throughput, sync, synthetic_prepared  # noqa: E402
from distforget.cli import pick_device  # noqa: E402
from distforget.baselines import run_baseline  # noqa: E402
from distforget.config import BaselineConfig, RunConfig, from_dict  # noqa: E402
from distforget.training import (autocast, device_index, maybe_compile,  # noqa: E402
                                 train_mode)


def plain_loop(prepared, *, device, batch: int, steps: int, warmup: int, precision: str,
               compile: bool) -> float:
    """A bare training loop over the same images, model, head and loss; returns img/s."""
    torch.manual_seed(0)
    visual = prepared.model().visual.to(device)
    train_mode(visual)  # as every stage: BatchNorm on its stored statistics
    module = maybe_compile(visual, compile)
    opt = torch.optim.AdamW(visual.parameters(), lr=1e-5)
    head = prepared.head_tensor(device)
    mean = torch.tensor(prepared.spec.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(prepared.spec.std, device=device).view(1, 3, 1, 1)
    r = prepared.split("retain_train")
    images, labels = prepared.images[r.indices], torch.as_tensor(r.labels, device=device)
    rng = np.random.default_rng(0)
    size = prepared.spec.image_size
    start = None
    for step in range(warmup + steps):
        if step == warmup:
            sync(device)
            start = now()
        idx = rng.choice(len(images), batch, replace=False)
        x = torch.from_numpy(images[idx])
        x = (x.pin_memory().to(device, non_blocking=True) if device.type == "cuda"
             else x.to(device))
        x = x.permute(0, 3, 1, 2).float().div_(255)
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
        x = (x.clamp_(0, 1) - mean) / std
        with autocast(device, precision):
            feats = F.normalize(module(x).float(), dim=-1)
        loss = F.cross_entropy(prepared.logit_scale * feats @ head.T,
                               labels[device_index(idx, device)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return steps * batch / (now() - start)


def stage_cfg(batch: int, epochs: int) -> BaselineConfig:
    # target_acc below 0: never stop early, so every epoch is timed.
    return BaselineConfig(lr=1e-5, epochs=epochs, batch_size=batch, target_acc=0.0)


def trial_loop(prepared, *, device, batch: int, epochs: int, precision: str,
               compile: bool) -> float:
    out = run_baseline(prepared, "ft", stage_cfg(batch, epochs), device=device,
                       precision=precision, compile=compile)
    return steady_throughput(out.meta["history"])


def ray_stage(prepared, *, batch: int, epochs: int, precision: str, compile: bool,
              cpus: float, gpus: float) -> tuple[float, float]:
    """The same stage as a Ray Train TorchTrainer; (steady img/s, end-to-end seconds)."""
    import ray

    from distforget.config import ResourcesConfig
    from distforget.distributed.cluster import TRAIN_ENV
    from distforget.distributed.train import ray_launcher
    from distforget.trial import StageCache, StageTask, stage_key

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": dict(TRAIN_ENV)})
    root = tempfile.mkdtemp(prefix="distforget-bench-")
    cache = StageCache(os.path.join(root, "stages"))
    cfg = from_dict({**RunConfig().to_dict(), "method": "ft",
                     "model": {**RunConfig().model.__dict__, "precision": precision,
                               "compile": compile},
                     "baseline": stage_cfg(batch, epochs).__dict__})
    key = stage_key(prepared.fingerprint, "baseline", "ft", {}, None, precision)
    resources = ResourcesConfig(workers=1, cpus_per_worker=cpus, gpus_per_worker=gpus)
    launch = ray_launcher(ray.put(prepared), cache, resources, os.path.join(root, "train"), "bench")
    start = now()
    out = launch(cfg, [StageTask("baseline", key, None)])[key]
    return steady_throughput(out.meta["history"]), now() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true",
                        help="GPU size: ViT-B-32 at batch 256 (with --model to change it)")
    parser.add_argument("--model", default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--images", type=int, default=None, help="training images per epoch")
    parser.add_argument("--epochs", type=int, default=4, help="timed: all but the first")
    parser.add_argument("--device", default=None)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--compile", choices=["off", "on", "both"], default="off")
    parser.add_argument("--ray", dest="ray", action="store_true", default=None)
    parser.add_argument("--no-ray", dest="ray", action="store_false")
    args = parser.parse_args()
    device = pick_device(args.device)
    model = args.model or ("ViT-B-32" if args.full else "DF-ViT-Tiny-32")
    batch = args.batch or (256 if args.full else 64)
    n = args.images or (batch * 24 if args.full else batch * 8)
    use_ray = (device.type == "cpu") if args.ray is None else args.ray
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]

    prepared = synthetic_prepared(model, n_retain=n)
    print(f"# {machine()}")
    print(f"# {model}, batch {batch}, {n} images per epoch, {args.epochs} epochs (first is "
          f"warm-up), precision {args.precision}, device {device}")
    print("| model | compile | plain loop img/s | trial loop img/s | ratio |"
          + (" Ray Train img/s | ratio | Ray end-to-end s |" if use_ray else ""))
    print("| --- | --- | --- | --- | --- |" + (" --- | --- | --- |" if use_ray else ""))
    steps = (args.epochs - 1) * max(1, n // batch)
    for comp in compiles:
        plain = plain_loop(prepared, device=device, batch=batch, steps=steps,
                           warmup=max(3, n // batch), precision=args.precision, compile=comp)
        trial = trial_loop(prepared, device=device, batch=batch, epochs=args.epochs,
                           precision=args.precision, compile=comp)
        row = f"| {model} | {comp} | {plain:,.0f} | {trial:,.0f} | {trial / plain:.3f} |"
        if use_ray:
            cpus = float(os.cpu_count() or 1) if device.type == "cpu" else 4.0
            gpus = 1.0 if device.type == "cuda" else 0.0
            ray_tp, wall = ray_stage(prepared, batch=batch, epochs=args.epochs,
                                     precision=args.precision, compile=comp, cpus=cpus, gpus=gpus)
            row += f" {ray_tp:,.0f} | {ray_tp / plain:.3f} | {wall:.1f} |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
