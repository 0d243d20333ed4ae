"""Synthetic images for BatchNorm image towers: seeded noise optimised until each BN layer's
batch statistics match its stored running statistics. The remind stage distils on them as a
stand-in for the pre-training distribution that the stages never see; ``synthesize`` makes the
run's shared set once (in ``prepare``) with the base model's logits for them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from distforget.config import RemindConfig
from distforget.errors import ConfigError
from distforget.evaluate import zero_shot_logits

AUTO_BN_ALIGN_IMAGES = 256


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


def synthesize(visual, prep, head: torch.Tensor, logit_scale: float, cfg: RemindConfig,
               precision: str, size: int | None = None
               ) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """The remind stage's BN-aligned images and their teacher logits, made once per run at
    ``size``, the stored images' size (default: the model's input size)."""
    size = prep.size if size is None else int(size)
    count = bn_align_count(cfg, visual)
    key = (count, cfg.bn_align_steps, cfg.seed)
    if not count:
        return (np.zeros((0, size, size, 3), np.uint8),
                np.zeros((0, head.shape[0]), np.float32), key)
    images = bn_aligned_images(visual, prep, count=count, steps=cfg.bn_align_steps,
                               seed=cfg.seed, size=size)
    return images, zero_shot_logits(visual, images, prep, head, logit_scale,
                                    precision=precision), key
