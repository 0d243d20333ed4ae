"""Stage 1, forget: relative-Fisher layer selection, then fine-tuning away from the class text.

Relative Fisher information of layer l: ``I_l = F_l(D_f) / F_l(D_r)``, where
``F_l(D) = mean over images x in D of mean over l's parameters of (d s(x, t_y) / d theta)^2``
and ``s(x, t_y)`` is the cosine similarity between the image embedding and the zero-shot head
row of its class. Layers with a high ratio matter more to the forget subgroup than to the
retained images; only the top-k of them are fine-tuned (optionally through LoRA adapters,
merged back into the weights at the end), with a loss that pushes forget images away from
their class text.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from distforget.config import ForgetConfig
from distforget.losses import forget_loss
from distforget.prepare import Prepared
from distforget.training import (Parallel, StageHooks, StageOutput, autocast, batch_scale,
                                 device_index, embed, eval_mode, global_batches, image_layers,
                                 maybe_compile, run_epochs, set_trainable, sharded_accuracy,
                                 snapshotter, train_mode, visual_state, wrap_ddp)


def relative_fisher(visual: nn.Module, head: torch.Tensor, prep, images: np.ndarray,
                    forget: tuple[np.ndarray, np.ndarray], retain: tuple[np.ndarray, np.ndarray],
                    *, samples: int, parallel: Parallel, precision: str) -> dict[str, float]:
    """``I_l`` for every layer of the image tower (see the module docstring).

    Per-image gradients (batch of one, tower in eval mode); the first ``samples`` images of each
    split are used, shared across the group and summed.
    """
    layers = image_layers(visual)
    params = dict(visual.named_parameters())
    sizes = {l: sum(params[n].numel() for n in names) for l, names in layers.items()}
    saved = {n: p.requires_grad for n, p in params.items()}
    for p in params.values():
        p.requires_grad_(True)

    def fisher(rows: np.ndarray, labels: np.ndarray) -> torch.Tensor:
        n = min(samples, len(rows))
        acc = torch.zeros(len(layers), dtype=torch.float64, device=prep.device)
        for i in parallel.shard(np.arange(n)):
            visual.zero_grad(set_to_none=True)
            with autocast(prep.device, precision):
                feat = embed(visual, prep(images[rows[i:i + 1]]))
            (feat[0] @ head[int(labels[i])]).backward()
            for j, (layer, names) in enumerate(layers.items()):
                sq = sum(params[k].grad.double().pow(2).sum() for k in names
                         if params[k].grad is not None)
                acc[j] += sq / sizes[layer]
        parallel.all_reduce(acc)
        return acc / max(1, n)

    with eval_mode(visual):
        f_forget = fisher(*forget)
        f_retain = fisher(*retain)
    visual.zero_grad(set_to_none=True)
    for n, p in params.items():
        p.requires_grad_(saved[n])
    eps = 1e-12 * float(f_retain.max().clamp(min=1e-30))
    ratio = (f_forget / (f_retain + eps)).cpu().tolist()
    return dict(zip(layers, ratio))


def select_layers(scores: dict[str, float], top_k: int) -> list[str]:
    """The ``top_k`` layers by score (all layers when top_k is 0), highest first."""
    ranked = sorted(scores, key=lambda l: (-scores[l], l))
    return ranked if top_k == 0 else ranked[:top_k]


class LoRA(nn.Module):
    """``W + (alpha / rank) * B @ A`` on a weight of two or more dims; B starts at zero, so
    training starts from W exactly."""

    def __init__(self, weight: torch.Tensor, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        out_f, in_f = weight.shape[0], int(np.prod(weight.shape[1:]))
        a = torch.randn(rank, in_f, generator=generator) / math.sqrt(in_f)
        self.A = nn.Parameter(a.to(weight.device, weight.dtype))
        self.B = nn.Parameter(torch.zeros(out_f, rank, device=weight.device, dtype=weight.dtype))
        self.scale = alpha / rank

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (self.B @ self.A).view_as(weight) * self.scale


def add_lora(visual: nn.Module, layers: list[str], rank: int, alpha: float, seed: int) -> int:
    """Put LoRA adapters on every weight of two or more dims in ``layers``; freeze the rest.
    Returns the number of adapted weights."""
    groups = image_layers(visual)
    wanted = {n for l in layers for n in groups[l]}
    for p in visual.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    count = 0
    for name in sorted(wanted):
        module_name, _, attr = name.rpartition(".")
        module = visual.get_submodule(module_name) if module_name else visual
        weight = getattr(module, attr)
        if weight.ndim < 2:
            continue
        parametrize.register_parametrization(module, attr, LoRA(weight, rank, alpha, gen))
        getattr(module.parametrizations, attr).original.requires_grad_(False)
        count += 1
    return count


def merge_lora(visual: nn.Module) -> None:
    """Fold every LoRA adapter into its weight, leaving plain parameters."""
    for module in list(visual.modules()):
        if parametrize.is_parametrized(module):
            for attr in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, attr, leave_parametrized=True)


def run_forget(prepared: Prepared, cfg: ForgetConfig, *, device: torch.device,
               precision: str = "auto", compile: bool = False,
               parallel: Parallel | None = None,
               hooks: StageHooks = StageHooks()) -> StageOutput:
    """Select layers by relative Fisher information and fine-tune them on the forget set."""
    start = time.perf_counter()
    parallel, visual, head, prep = prepared.stage_start(device, cfg.seed, parallel)
    images = prepared.images
    f, r = prepared.split("forget_train"), prepared.split("retain_train")

    if hooks.resume is not None and "fisher" in hooks.resume:
        scores = hooks.resume["fisher"]
    else:
        scores = relative_fisher(visual, head, prep, images, (f.indices, f.labels),
                                 (r.indices, r.labels), samples=cfg.fisher_samples,
                                 parallel=parallel, precision=precision)
    layers = select_layers(scores, cfg.top_k)
    set_trainable(visual, layers)
    if cfg.lora_rank:
        add_lora(visual, layers, cfg.lora_rank, cfg.lora_alpha, cfg.seed)
    train_mode(visual)
    module = maybe_compile(wrap_ddp(visual, parallel, device), compile)
    trainable = [p for p in visual.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    forget_images = images[f.indices]
    # torch.tensor copies: arrays from the Ray object store are read-only.
    labels = torch.tensor(f.labels, device=device)

    def step(global_batch: np.ndarray) -> torch.Tensor:
        local = parallel.shard(global_batch)
        with autocast(device, precision):
            feats = embed(module, prep(forget_images[local]))
        loss = forget_loss(feats, head, labels[device_index(local, device)],
                           prepared.logit_scale, cfg.loss, cfg.margin)
        return loss.sum() * batch_scale(parallel, len(global_batch))

    def end_epoch(epoch: int) -> tuple[dict, bool]:
        acc = sharded_accuracy(visual, forget_images, f.labels, head, prep, parallel, precision)
        return {"train_forget_acc": acc}, acc <= cfg.target_acc

    state_of, restore = snapshotter(visual=visual, optimizer=opt)

    def snapshot() -> dict:
        return {**state_of(), "fisher": scores}

    record = run_epochs(
        epochs=cfg.epochs, batches=lambda e: global_batches(len(f), cfg.batch_size, e, cfg.seed),
        step=step, optimizer=opt, end_epoch=end_epoch, snapshot=snapshot, restore=restore,
        hooks=hooks, parallel=parallel)
    merge_lora(visual)
    meta = {"stage": "forget", "layers": layers, "fisher": scores, **record,
            "wall_s": time.perf_counter() - start}
    return StageOutput(state=visual_state(visual), meta=meta)
