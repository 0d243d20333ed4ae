"""Baselines in the same harness as the three-stage method: same splits, data path, loop and
evaluation; each is one fine-tuning stage of the whole image tower.

- ``ft``: fine-tune on the retain set (cross-entropy over the zero-shot head);
- ``ga``: gradient ascent on the forget set's cross-entropy;
- ``rl``: random labels: cross-entropy towards a random *other* class on forget images, plus
  cross-entropy on retain images;
- ``neggrad``: NegGrad+: ``(1 - w) * CE(retain) - w * CE(forget)``;
- ``salun``: SalUn-style: RL restricted to the weights whose forget-loss gradient is largest in
  magnitude (the ``salun_sparsity`` fraction of the tower, one global threshold);
- ``base``: the untouched base model (no stage).
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from distforget.config import BASELINES, BaselineConfig
from distforget.prepare import Prepared
from distforget.training import (Parallel, StageHooks, StageOutput, autocast, device_index,
                                 embed, global_batches, maybe_compile, run_epochs,
                                 set_trainable, sharded_accuracy, snapshotter, train_mode,
                                 visual_state, wrap_ddp)


def random_other_labels(labels: np.ndarray, num_classes: int, seed: int, epoch: int) -> np.ndarray:
    """A random label different from the true one, per image, fixed for an epoch."""
    shift = np.random.default_rng([seed, epoch, 7]).integers(1, num_classes, size=len(labels))
    return (labels + shift) % num_classes


def saliency_masks(visual, head, prep, images: np.ndarray, labels: np.ndarray, scale: float,
                   sparsity: float, parallel: Parallel, precision: str,
                   batch_size: int = 128) -> dict[str, torch.Tensor]:
    """Masks of the weights with the largest |d CE(forget) / d w| (the ``sparsity`` fraction)."""
    params = dict(visual.named_parameters())
    visual.zero_grad(set_to_none=True)
    idx = parallel.shard(np.arange(len(images)))
    y = torch.tensor(labels, device=prep.device)
    for i in range(0, len(idx), batch_size):
        sel = idx[i:i + batch_size]
        with autocast(prep.device, precision):
            feats = embed(visual, prep(images[sel]))
        F.cross_entropy(scale * feats @ head.T, y[sel], reduction="sum").backward()
    grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().abs()
             for n, p in params.items()}
    for g in grads.values():
        parallel.all_reduce(g)
    visual.zero_grad(set_to_none=True)
    flat = torch.cat([g.flatten().float() for g in grads.values()])
    keep = max(1, int(round(sparsity * flat.numel())))
    threshold = torch.topk(flat, keep, sorted=False).values.min()
    return {n: (g.float() >= threshold).to(params[n].dtype) for n, g in grads.items()}


def baseline_batches(method: str, nf: int, nr: int, batch_size: int, epoch: int, seed: int
                     ) -> list[np.ndarray]:
    """One epoch's global batches as rows of [forget images, retain images]: FT draws retain
    images only, GA forget images only, the others pair every forget batch with a retain batch
    (cycling the retain batches)."""
    fb = global_batches(nf, batch_size, epoch, seed) if method != "ft" else []
    rb = global_batches(nr, batch_size, epoch, seed + 1) if method != "ga" else []
    if method == "ft":
        return [b + nf for b in rb]
    if method == "ga":
        return fb
    return [np.concatenate([b, rb[i % len(rb)] + nf]) for i, b in enumerate(fb)]


def baseline_loss(method: str, ce_forget: torch.Tensor, ce_retain: torch.Tensor,
                  cfg: BaselineConfig) -> torch.Tensor:
    """FT: CE on retain; GA: -CE on forget; NegGrad+: (1 - w) CE(retain) - w CE(forget);
    RL and SalUn: CE on both (the forget images carry random other labels)."""
    if method == "ft":
        return ce_retain
    if method == "ga":
        return -ce_forget
    if method == "neggrad":
        return (1 - cfg.neggrad_weight) * ce_retain - cfg.neggrad_weight * ce_forget
    return ce_forget + ce_retain


def run_baseline(prepared: Prepared, method: str, cfg: BaselineConfig, *, device: torch.device,
                 precision: str = "auto", compile: bool = False,
                 parallel: Parallel | None = None,
                 hooks: StageHooks = StageHooks()) -> StageOutput:
    """Run one baseline (``ft``, ``ga``, ``rl``, ``neggrad`` or ``salun``) on the whole tower."""
    if method not in BASELINES:
        raise ValueError(f"unknown baseline {method!r}; expected one of {BASELINES}")
    start = time.perf_counter()
    parallel, visual, head, prep = prepared.stage_start(device, cfg.seed, parallel)
    f, r = prepared.split("forget_train"), prepared.split("retain_train")
    nf, nr = len(f), len(r)
    images = np.concatenate([prepared.images[f.indices], prepared.images[r.indices]])
    labels = np.concatenate([f.labels, r.labels])
    is_forget = np.arange(nf + nr) < nf
    num_classes = len(prepared.classes)
    scale = prepared.logit_scale
    set_trainable(visual, None)
    masks = None
    if method == "salun":
        masks = saliency_masks(visual, head, prep, images[:nf], f.labels, scale,
                               cfg.salun_sparsity, parallel, precision)
        for name, p in visual.named_parameters():
            p.register_hook(lambda g, m=masks[name]: g * m)
    train_mode(visual)
    module = maybe_compile(wrap_ddp(visual, parallel, device), compile)
    opt = torch.optim.AdamW(visual.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    uses_forget = method != "ft"
    labels_t = torch.tensor(labels, device=device)
    is_forget_t = torch.tensor(is_forget, device=device)
    current = {"labels": labels_t}

    def batches(epoch: int) -> list[np.ndarray]:
        if method in ("rl", "salun"):  # this epoch's random other labels for forget images
            other = random_other_labels(labels, num_classes, cfg.seed, epoch)
            current["labels"] = torch.as_tensor(np.where(is_forget, other, labels), device=device)
        return baseline_batches(method, nf, nr, cfg.batch_size, epoch, cfg.seed)

    def step(global_batch: np.ndarray) -> torch.Tensor:
        local = parallel.shard(global_batch)
        n_forget = max(1, int(is_forget[global_batch].sum()))
        n_retain = max(1, int((~is_forget[global_batch]).sum()))
        with autocast(device, precision):
            feats = embed(module, prep(images[local]))
        logits = scale * feats @ head.T
        idx = device_index(local, device)
        ce = F.cross_entropy(logits, current["labels"][idx], reduction="none")
        is_f = is_forget_t[idx].float()
        ce_forget = (ce * is_f).sum() / n_forget
        ce_retain = (ce * (1 - is_f)).sum() / n_retain
        return baseline_loss(method, ce_forget, ce_retain, cfg) * parallel.world_size

    def end_epoch(epoch: int) -> tuple[dict, bool]:
        acc = sharded_accuracy(visual, images[:nf], f.labels, head, prep, parallel, precision)
        return {"train_forget_acc": acc}, uses_forget and acc <= cfg.target_acc

    snapshot, restore = snapshotter(visual=visual, optimizer=opt)
    record = run_epochs(epochs=cfg.epochs, batches=batches, step=step, optimizer=opt,
                        end_epoch=end_epoch, snapshot=snapshot, restore=restore, hooks=hooks,
                        parallel=parallel)
    meta = {"stage": "baseline", "method": method, **record,
            "salun_kept": None if masks is None else
            float(sum(m.sum().item() for m in masks.values()) /
                  sum(m.numel() for m in masks.values())),
            "wall_s": time.perf_counter() - start}
    return StageOutput(state=visual_state(visual), meta=meta)
