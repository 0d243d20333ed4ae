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
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from distforget.config import RemindConfig
from distforget.errors import ConfigError
from distforget.evaluate import image_features
from distforget.forget import forget_loss
from distforget.prepare import Prepared
from distforget.training import (Parallel, StageHooks, StageOutput, autocast, batch_scale,
                                 device_index,
                                 global_batches, snapshotter, run_epochs,
                                 set_trainable, sharded_accuracy, train_mode, visual_state,
                                 wrap_ddp, maybe_compile)


AUTO_BN_ALIGN_IMAGES = 256
RETAIN, SYNTHETIC, FORGET = 0, 1, 2  # roles of the images a remind step draws from


def batchnorm_layers(visual: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in visual.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def bn_align_count(cfg: RemindConfig, visual: torch.nn.Module) -> int:
    """How many BN-aligned images the remind stage distils on (``null`` = auto)."""
    if cfg.bn_align_images is None:
        return AUTO_BN_ALIGN_IMAGES if batchnorm_layers(visual) else 0
    if cfg.bn_align_images and not batchnorm_layers(visual):
        raise ConfigError("remind.bn_align_images needs an image tower with BatchNorm layers "
                          "(an RN model); this model has none: set it to 0 or null")
    return cfg.bn_align_images


def bn_aligned_images(visual: torch.nn.Module, prep, *, count: int, steps: int, seed: int,
                      lr: float = 0.1, size: int | None = None) -> np.ndarray:
    """Synthetic uint8 images whose per-layer batch statistics match the stored BN statistics.

    Starts from seeded noise in normalised input space and minimises, over ``steps`` Adam steps,
    the squared distance between each BN layer's input mean/variance and its running mean/
    variance (plus a small total-variation prior for smoothness). ``size`` is the side of the
    returned images (default: the model's input size): the stored images' size, so that they
    join the stored images in one array; they are resized to the model's input on the way in,
    as the stored images are.
    """
    bns = batchnorm_layers(visual)
    visual.eval()
    device = prep.device
    size = prep.size if size is None else int(size)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(count, 3, size, size, generator=gen).to(device).requires_grad_(True)

    def model_input(x: torch.Tensor) -> torch.Tensor:
        if size == prep.size:
            return x
        return F.interpolate(x, size=(prep.size, prep.size), mode="bicubic",
                             align_corners=False, antialias=size > prep.size)
    stats: list[torch.Tensor] = []

    def hook(module, inputs, _output):
        inp = inputs[0].float()
        mean = inp.mean(dim=(0, 2, 3))
        var = inp.var(dim=(0, 2, 3), unbiased=False)
        stats.append((mean - module.running_mean).pow(2).sum()
                     + (var - module.running_var).pow(2).sum())

    handles = [bn.register_forward_hook(hook) for bn in bns]
    opt = torch.optim.Adam([x], lr=lr)
    params = list(visual.parameters())
    saved = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        for _ in range(steps):
            stats.clear()
            visual(model_input(x))
            tv = ((x[..., 1:, :] - x[..., :-1, :]).abs().mean()
                  + (x[..., 1:] - x[..., :-1]).abs().mean())
            loss = torch.stack(stats).sum() + 1e-3 * tv
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        for h in handles:
            h.remove()
        for p, s in zip(params, saved):
            p.requires_grad_(s)
    with torch.no_grad():
        img = x.detach() * prep.std + prep.mean
        img = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    return img.cpu().numpy()


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float
                      ) -> torch.Tensor:
    """Per-image ``T^2 * KL(softmax(teacher/T) || softmax(student/T))``."""
    t = temperature
    kl = F.kl_div(F.log_softmax(student / t, dim=-1), F.log_softmax(teacher / t, dim=-1),
                  log_target=True, reduction="none").sum(-1)
    return t * t * kl


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
    r = prepared.split("retain_train")
    images = [prepared.images[r.indices]]
    labels = [r.labels]
    teacher = [prepared.teacher_logits]
    roles = [np.full(len(r), RETAIN)]

    base = prepared.model().visual
    count = bn_align_count(cfg, base)

    def base_logits(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            feats = image_features(base.to(device), batch, prep, precision=precision)
        return (prepared.logit_scale * feats @ head.T).float().cpu().numpy()

    if count and prepared.synthetic_key == (count, cfg.bn_align_steps, cfg.seed):
        synth, synth_teacher = prepared.synthetic, prepared.synthetic_teacher
    elif count:  # knobs differ from the run's shared set: make this stage's own
        synth = bn_aligned_images(base.to(device), prep, count=count,
                                  steps=cfg.bn_align_steps, seed=cfg.seed,
                                  size=prepared.images.shape[1])
        synth_teacher = base_logits(synth)
    synthetic = count
    if count:
        images.append(synth)
        labels.append(np.full(len(synth), -1))
        teacher.append(synth_teacher)
        roles.append(np.full(len(synth), SYNTHETIC))
    if cfg.forget_weight:
        f = prepared.split("forget_train")
        images.append(prepared.images[f.indices])
        labels.append(f.labels)
        if cfg.forget_loss == "distill":
            # The base model's view of the forget images with their own class taken out.
            away = base_logits(prepared.images[f.indices])
            away[np.arange(len(f)), f.labels] = -1e4
            teacher.append(away)
        else:
            teacher.append(np.zeros((len(f), teacher[0].shape[1]), np.float32))
        roles.append(np.full(len(f), FORGET))
    base = None  # the base tower is not needed while training
    kd_images, kd_labels, roles = (np.concatenate(images), np.concatenate(labels),
                                   np.concatenate(roles))

    visual = prepared.model(upstream.state).visual.to(device)
    layers = upstream.meta.get("layers") if cfg.layers == "forget" else None
    layers = set_trainable(visual, layers)
    train_mode(visual)
    module = maybe_compile(wrap_ddp(visual, parallel, device), compile)
    opt = torch.optim.AdamW([p for p in visual.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    ema = (AveragedModel(visual, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay),
                         use_buffers=True) if cfg.ema_decay else None)
    labels_t = torch.tensor(kd_labels, device=device).clamp(min=0)
    roles_t = torch.tensor(roles, device=device)
    teacher_t = torch.tensor(np.concatenate(teacher), device=device)

    def step(global_batch: np.ndarray) -> torch.Tensor:
        local = parallel.shard(global_batch)
        with autocast(device, precision):
            feats = F.normalize(module(prep(kd_images[local])).float(), dim=-1)
        logits = prepared.logit_scale * feats @ head.T
        idx = device_index(local, device)
        y, role = labels_t[idx], roles_t[idx]
        # Each image's role weighs its terms (weights, not a boolean selection, so the host
        # never waits for the device): retained images take cross-entropy and distillation,
        # synthetic ones distillation only, forget images the forget term.
        ce = (F.cross_entropy(logits, y, reduction="none") * (role == RETAIN)).sum()
        kd_all = distillation_loss(logits, teacher_t[idx], cfg.temperature)
        kd = (kd_all * (role != FORGET)).sum()
        loss = ce + cfg.lambda_kd * kd
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

    snapshot, restore = snapshotter(visual=visual, optimizer=opt,
                                    **({"ema": ema} if ema is not None else {}))

    record = run_epochs(
        epochs=cfg.epochs,
        batches=lambda e: global_batches(len(kd_images), cfg.batch_size, e, cfg.seed),
        step=step, optimizer=opt, end_epoch=end_epoch, snapshot=snapshot, restore=restore,
        hooks=hooks, parallel=parallel,
        after_step=(lambda: ema.update_parameters(visual)) if ema is not None else None)
    final = ema.module if ema is not None else visual
    meta = {"stage": "remind", "layers": layers, "synthetic_images": synthetic, **record,
            "wall_s": time.perf_counter() - start}
    return StageOutput(state=visual_state(final), meta=meta)
