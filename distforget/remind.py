"""Stage 2, remind: cross-entropy on retained images plus distillation from the base model.

``loss = CE(student, y) + lambda_kd * T^2 * KL(softmax(teacher / T) || softmax(student / T))``
over the zero-shot head (plus, when ``remind.forget_weight`` > 0, that weight times a forget
term on the forget images, so that restoring the retained subgroups does not restore the
forgotten one; 0, the default, is the paper's remind stage). The forget term is one of the
forget stage's losses (``remind.forget_loss`` margin, similarity or ce_away) or ``distill``:
distillation towards the base model's logits for the image with its own class taken out, so the
image moves to where the base model would put it without that class rather than anywhere away.
The distillation set is the retain training images (their teacher logits were computed once,
in ``prepare``) plus, for BatchNorm image towers, optional synthetic images optimised so that
their batch statistics match the BN layers' stored statistics: they stand in for the
pre-training distribution that the stages never see. Optional weight EMA.

With ``remind.feature_kd`` > 0 the retained and synthetic images also take that weight times
``1 - cos(student embedding, base embedding)``: distillation on the whole image embedding, not
only on its few directions that the head's class texts span.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from distforget.config import RemindConfig
from distforget.evaluate import image_features, zero_shot_logits
from distforget.losses import distillation_loss, forget_loss
from distforget.prepare import Prepared
from distforget.synthetic import bn_align_count, bn_aligned_images
from distforget.training import (Parallel, StageHooks, StageOutput, autocast, batch_scale,
                                 device_index, embed, global_batches, lr_schedule, maybe_compile,
                                 run_epochs, set_trainable, sharded_accuracy, snapshotter,
                                 train_mode, visual_state, wrap_ddp)


RETAIN, SYNTHETIC, FORGET = 0, 1, 2  # roles of the images a remind step draws from


@dataclass(frozen=True)
class DistillationSet:
    """What a remind step draws from: images, labels (-1 for synthetic ones), each image's role,
    its teacher logits and, for feature distillation, the base model's embedding of it (zeros
    for forget images, which take no distillation)."""

    images: np.ndarray
    labels: np.ndarray
    roles: np.ndarray
    teacher: np.ndarray
    features: np.ndarray | None = None

    @property
    def synthetic(self) -> int:
        return int((self.roles == SYNTHETIC).sum())


def distillation_set(prepared: Prepared, cfg: RemindConfig, device: torch.device,
                     precision: str = "auto") -> DistillationSet:
    """The retain training images with their teacher logits (computed once, in ``prepare``),
    the BN-aligned synthetic images for BatchNorm towers, and, when ``cfg.forget_weight`` > 0,
    the forget training images with their forget-term targets."""
    prep = prepared.preprocess(device)
    head = prepared.head_tensor(device)
    r = prepared.split("retain_train")
    parts = [(prepared.images[r.indices], r.labels, RETAIN, prepared.teacher_logits)]
    base = prepared.model().visual.to(device)

    def base_logits(batch: np.ndarray) -> np.ndarray:
        return zero_shot_logits(base, batch, prep, head, prepared.logit_scale,
                                precision=precision)

    count = bn_align_count(cfg, base)
    if count and prepared.synthetic_key == (count, cfg.bn_align_steps, cfg.seed):
        parts.append((prepared.synthetic, np.full(count, -1), SYNTHETIC,
                      prepared.synthetic_teacher))
    elif count:  # knobs differ from the run's shared set: make this stage's own
        synth = bn_aligned_images(base, prep, count=count, steps=cfg.bn_align_steps,
                                  seed=cfg.seed, size=prepared.images.shape[1])
        parts.append((synth, np.full(count, -1), SYNTHETIC, base_logits(synth)))
    if cfg.forget_weight:
        f = prepared.split("forget_train")
        forget_images = prepared.images[f.indices]
        if cfg.forget_loss == "distill":
            # The base model's view of the forget images with their own class taken out.
            targets = base_logits(forget_images)
            targets[np.arange(len(f)), f.labels] = -1e4
        else:
            targets = np.zeros((len(f), len(prepared.classes)), np.float32)
        parts.append((forget_images, f.labels, FORGET, targets))
    images = np.concatenate([p[0] for p in parts])
    roles = np.concatenate([np.full(len(p[0]), p[2]) for p in parts])
    features = None
    if cfg.feature_kd:
        kept = roles != FORGET
        feats = image_features(base, images[kept], prep, precision=precision).cpu().numpy()
        features = np.zeros((len(images), feats.shape[1]), np.float32)
        features[kept] = feats
    return DistillationSet(
        images=images,
        labels=np.concatenate([p[1] for p in parts]),
        roles=roles,
        teacher=np.concatenate([p[3] for p in parts]).astype(np.float32),
        features=features)


def run_remind(prepared: Prepared, cfg: RemindConfig, upstream: StageOutput, *,
               device: torch.device, precision: str = "auto", compile: bool = False,
               parallel: Parallel | None = None,
               hooks: StageHooks = StageHooks()) -> StageOutput:
    """Fine-tune the forgotten image tower on retained images with distillation."""
    start = time.perf_counter()
    parallel = parallel or Parallel.current()
    torch.manual_seed(cfg.seed)
    head = prepared.head_tensor(device)
    prep = prepared.preprocess(device)
    kd = distillation_set(prepared, cfg, device, precision)
    kd_images, kd_labels, roles = kd.images, kd.labels, kd.roles

    visual = prepared.model(upstream.state).visual.to(device)
    layers = upstream.meta.get("layers") if cfg.layers == "forget" else None
    layers = set_trainable(visual, layers)
    train_mode(visual)
    module = maybe_compile(wrap_ddp(visual, parallel, device), compile)
    opt = torch.optim.AdamW([p for p in visual.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    sched = lr_schedule(opt, cfg.lr_schedule,
                        cfg.epochs * math.ceil(len(kd_images) / cfg.batch_size))
    ema = (AveragedModel(visual, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay),
                         use_buffers=True) if cfg.ema_decay else None)
    labels_t = torch.tensor(kd_labels, device=device).clamp(min=0)
    roles_t = torch.tensor(roles, device=device)
    teacher_t = torch.tensor(kd.teacher, device=device)
    features_t = torch.tensor(kd.features, device=device) if kd.features is not None else None

    def step(global_batch: np.ndarray) -> torch.Tensor:
        local = parallel.shard(global_batch)
        with autocast(device, precision):
            feats = embed(module, prep(kd_images[local]))
        logits = prepared.logit_scale * feats @ head.T
        idx = device_index(local, device)
        y, role = labels_t[idx], roles_t[idx]
        # Each image's role weighs its terms (weights, not a boolean selection, so the host
        # never waits for the device): retained images take cross-entropy and distillation,
        # synthetic ones distillation only, forget images the forget term.
        distilled = role != FORGET
        ce = (F.cross_entropy(logits, y, reduction="none") * (role == RETAIN)).sum()
        kd_all = distillation_loss(logits, teacher_t[idx], cfg.temperature)
        loss = ce + cfg.lambda_kd * (kd_all * distilled).sum()
        if features_t is not None:
            # Embeddings are unit length, so 1 - <student, teacher> is 1 - cosine.
            drift = 1.0 - (feats * features_t[idx]).sum(-1)
            loss = loss + cfg.feature_kd * (drift * distilled).sum()
        if cfg.forget_weight:
            away = kd_all if cfg.forget_loss == "distill" else forget_loss(
                feats, head, y, prepared.logit_scale, cfg.forget_loss, cfg.forget_margin)
            loss = loss + cfg.forget_weight * (away * (role == FORGET)).sum()
        return loss * batch_scale(parallel, len(global_batch))

    def end_epoch(epoch: int) -> tuple[dict, bool]:
        model = ema.module if ema else visual
        metrics = {}
        for name, role in (("train_retain_acc", RETAIN), ("train_forget_acc", FORGET)):
            rows = roles == role
            if rows.any():
                metrics[name] = sharded_accuracy(model, kd_images[rows], kd_labels[rows], head,
                                                 prep, parallel, precision)
        return metrics, False

    snapshot, restore = snapshotter(visual=visual, optimizer=opt, schedule=sched,
                                    **({"ema": ema} if ema is not None else {}))

    def after_step() -> None:
        sched.step()
        if ema is not None:
            ema.update_parameters(visual)

    record = run_epochs(
        epochs=cfg.epochs,
        batches=lambda e: global_batches(len(kd_images), cfg.batch_size, e, cfg.seed),
        step=step, optimizer=opt, end_epoch=end_epoch, snapshot=snapshot, restore=restore,
        hooks=hooks, parallel=parallel,
        after_step=after_step)
    final = ema.module if ema is not None else visual
    meta = {"stage": "remind", "layers": layers, "synthetic_images": kd.synthetic, **record,
            "wall_s": time.perf_counter() - start}
    return StageOutput(state=visual_state(final), meta=meta)
