"""How a trial's cost grows with data size and with workers per trial, measured on the CPU.

1. Data size: one three-stage trial (forget, remind, calibration sweep, evaluation) on real
   CIFAR-10 with the small CIFAR-10 CLIP, at forget/retain set sizes 10x apart.
2. Workers: the same stage as a Ray Train TorchTrainer with 1 worker and with 2 workers at the
   same global batch, steady training throughput and end-to-end time.

    python bench/scaling.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine, steady_throughput, synthetic_prepared  # noqa: E402
from distforget.config import load_config  # noqa: E402
from distforget.prepare import prepare  # noqa: E402
from distforget.trial import StageCache, local_evaluator, local_launcher, run_trial  # noqa: E402


def data_size(data_path: str, device: torch.device) -> None:
    print("| forget / retain training images | forget s | remind s | whole trial s | "
          "trials per hour (one at a time) |\n| --- | --- | --- | --- | --- |")
    for forget, retain in ((100, 200), (1000, 2000)):
        cfg = load_config(ROOT / "configs" / "cifar10.yaml",
                          {"data.path": data_path, "scenario.max_forget": forget,
                           "scenario.max_retain": retain, "forget.target_acc": 0.0,
                           "forget.epochs": 4})
        prepared = prepare(cfg, device, log=lambda m: None)
        cache = StageCache()
        start = time.perf_counter()
        result = run_trial(prepared, cfg, launch=local_launcher(prepared, cache, device),
                           cache=cache, evaluate=local_evaluator(prepared, cache, device, "auto"))
        wall = time.perf_counter() - start
        n_f, n_r = len(prepared.split("forget_train")), len(prepared.split("retain_train"))
        print(f"| {n_f} / {n_r} | {result.stages['forget']['wall_s']:.1f} | "
              f"{result.stages['remind']['wall_s']:.1f} | {wall:.1f} | {3600 / wall:.0f} |",
              flush=True)


def workers(epochs: int) -> None:
    import ray

    from distforget.config import BaselineConfig, ResourcesConfig, RunConfig, from_dict
    from distforget.distributed.cluster import TRAIN_ENV
    from distforget.distributed.train import ray_launcher
    from distforget.trial import StageTask, stage_key

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": dict(TRAIN_ENV)})
    prepared = synthetic_prepared("DF-ViT-Tiny-32", n_retain=1024)
    ref = ray.put(prepared)
    cfg = from_dict({**RunConfig().to_dict(), "method": "ft",
                     "baseline": BaselineConfig(lr=1e-5, epochs=epochs, batch_size=64,
                                                target_acc=0.0).__dict__})
    cores = os.cpu_count() or 1
    print("\n| workers x CPUs | steady img/s | end-to-end s (TorchTrainer start included) |"
          "\n| --- | --- | --- |")
    for n in (1, 2):
        root = tempfile.mkdtemp(prefix="distforget-scaling-")
        cache = StageCache(os.path.join(root, "stages"))
        key = stage_key(prepared.fingerprint, "baseline", "ft", {"n": n}, None, "auto")
        res = ResourcesConfig(workers=n, cpus_per_worker=cores / n)
        launch = ray_launcher(ref, cache, res, os.path.join(root, "train"), f"w{n}")
        start = time.perf_counter()
        out = launch(cfg, [StageTask("baseline", key, None)])[key]
        print(f"| {n} x {cores / n:g} | {steady_throughput(out.meta['history']):,.0f} | "
              f"{time.perf_counter() - start:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    print(f"# {machine()}\n# bench/scaling.py\n")
    data_size(args.data, torch.device("cpu"))
    workers(args.epochs)


if __name__ == "__main__":
    main()
