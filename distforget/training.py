"""What every training stage shares: the data-parallel group, batches, precision, layers.

A stage runs the same code on one process or on many: ``Parallel`` says where this process sits
in its group (torch.distributed, set up by whoever launched it). Each step draws the *global*
batch from a generator seeded by the stage seed and the step, and rank r takes every
world_size-th image of it, so the batches (and, up to floating-point reduction order, the
weights) do not depend on the number of workers. Per-rank losses are sums scaled by
world_size / global batch, so DDP's gradient mean equals the mean over the global batch even
when it does not divide evenly.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Parallel:
    """This process's place in its data-parallel group."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> "Parallel":
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` across the group in place (a no-op on one process)."""
        if self.world_size > 1:
            dist.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def shard(self, global_indices: np.ndarray) -> np.ndarray:
        return global_indices[self.rank::self.world_size]


def global_batches(n: int, batch_size: int, epoch: int, seed: int) -> list[np.ndarray]:
    """The global batches of one epoch over ``n`` items: a seeded permutation, cut in order."""
    if n == 0:
        return []
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def lr_schedule(optimizer: torch.optim.Optimizer, kind: str,
                total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The stage's learning-rate schedule over ``total_steps`` optimizer steps: ``constant``,
    or ``cosine`` from the optimizer's learning rate down to 0 at the last step."""
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    if kind == "cosine":
        total = max(1, total_steps)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total) / total)))
    raise ValueError(f"lr schedule {kind!r}: expected 'constant' or 'cosine'")


def cycle_batches(n: int, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    """Endless global batches over ``n`` items (a fresh permutation each pass)."""
    epoch = 0
    while True:
        yield from global_batches(n, batch_size, epoch, seed)
        epoch += 1


def autocast(device: torch.device, precision: str):
    """Autocast context for a stage: bf16/fp16 on CUDA as configured, fp32 otherwise.

    ``auto`` is bf16 on a GPU that supports it and plain fp32 on the CPU (CPU bf16 autocast
    is slower than fp32 on most CPUs).
    """
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext()
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        if precision == "fp32":
            return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def device_index(rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """Row numbers as an index tensor on ``device``, copied without stalling the host: a
    blocking copy, or a boolean mask that needs the device's answer, would make the CPU wait
    for the GPU every step."""
    t = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t


def batch_scale(parallel: Parallel, global_size: int) -> float:
    """Multiply a per-rank *sum* of losses by this to get DDP's mean over the global batch."""
    return parallel.world_size / max(1, global_size)


# --- layers of the image tower -------------------------------------------------------------------

_BLOCK_PATTERNS = (
    re.compile(r"^(transformer\.resblocks\.\d+)\."),  # ViT blocks
    re.compile(r"^(layer\d+\.\d+)\."),                 # ModifiedResNet bottlenecks
    re.compile(r"^(trunk\.blocks\.\d+)\."),            # timm ViTs
    re.compile(r"^(trunk\.stages\.\d+\.blocks\.\d+)\."),
)


def layer_of(param_name: str) -> str:
    """The layer a parameter of the image tower belongs to.

    Layers are the tower's blocks (transformer blocks, ResNet bottlenecks); parameters outside
    any block form one layer per top-level module (``stem`` for the patch or conv stem and
    its norms and embeddings, ``head`` for the final norm, pooling and projection).
    """
    for pattern in _BLOCK_PATTERNS:
        m = pattern.match(param_name)
        if m:
            return m.group(1)
    top = param_name.split(".")[0]
    stem = {"conv1", "conv2", "conv3", "bn1", "bn2", "bn3", "class_embedding",
            "positional_embedding", "ln_pre", "patch_embed", "stem"}
    return "stem" if top in stem or top.startswith("trunk") and "embed" in param_name else "head"


def image_layers(visual: torch.nn.Module) -> dict[str, list[str]]:
    """Layer name -> parameter names of the image tower, in module order."""
    layers: dict[str, list[str]] = {}
    for name, _ in visual.named_parameters():
        layers.setdefault(layer_of(name), []).append(name)
    return layers


def set_trainable(visual: torch.nn.Module, layers: list[str] | None) -> list[str]:
    """Freeze the image tower except ``layers`` (all layers when None); returns the names."""
    groups = image_layers(visual)
    chosen = list(groups) if layers is None else list(layers)
    unknown = [l for l in chosen if l not in groups]
    if unknown:
        raise ValueError(f"unknown image-tower layer {unknown[0]!r}; layers: {', '.join(groups)}")
    names = {n for l in chosen for n in groups[l]}
    for n, p in visual.named_parameters():
        p.requires_grad_(n in names)
    return chosen


def freeze_batchnorm(visual: torch.nn.Module) -> None:
    """Keep BatchNorm layers on their stored statistics while the rest trains.

    CLIP's BN backbones are fine-tuned with small, skewed batches here (one subgroup); letting
    them update running statistics would both damage the model and make the result depend on
    how the batch is split across workers.
    """
    for m in visual.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def train_mode(visual: torch.nn.Module) -> None:
    """Training mode for fine-tuning: dropout etc. on, BatchNorm on its stored statistics."""
    visual.train()
    freeze_batchnorm(visual)


@contextlib.contextmanager
def eval_mode(visual: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Evaluation mode for the block, then back to ``train_mode`` if the tower was training."""
    was_training = visual.training
    visual.eval()
    try:
        yield visual
    finally:
        if was_training:
            train_mode(visual)


def embed(visual: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """L2-normalised image embeddings in fp32: the one expression every stage and metric uses
    (call it under ``autocast``; it keeps gradients when the caller does)."""
    return torch.nn.functional.normalize(visual(pixels).float(), dim=-1)


def wrap_ddp(module: torch.nn.Module, parallel: Parallel, device: torch.device):
    """DDP over ``module`` when the group has more than one process."""
    if parallel.world_size == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, math.ceil(n / batch_size))


# --- the loop every stage shares ------------------------------------------------------------------

@dataclass
class StageOutput:
    """What a stage returns: the image tower's new state ("visual." keys) and a JSON record."""

    state: dict[str, torch.Tensor]
    meta: dict


@dataclass(frozen=True)
class StageHooks:
    """How a launcher observes, checkpoints and resumes a stage.

    ``on_epoch(epoch, metrics, snapshot)`` runs on every rank after each epoch; ``snapshot()``
    returns the state to resume from (weights, optimizer, epoch). ``resume`` is such a snapshot.
    """

    on_epoch: Callable[[int, dict, Callable[[], dict]], None] | None = None
    resume: dict | None = None


def run_epochs(*, epochs: int, batches: Callable[[int], list[np.ndarray]],
               step: Callable[[np.ndarray], torch.Tensor], optimizer: torch.optim.Optimizer,
               end_epoch: Callable[[int], tuple[dict, bool]], snapshot: Callable[[], dict],
               restore: Callable[[dict], None], hooks: StageHooks, parallel: Parallel,
               after_step: Callable[[], None] | None = None) -> dict:
    """Train for up to ``epochs`` epochs; ``step`` returns the rank's (already scaled) loss for
    one global batch, ``end_epoch`` returns (metrics, stop). Returns a JSON record."""
    start_epoch, steps, history, stopped = 0, 0, [], False
    if hooks.resume is not None:
        restore(hooks.resume)
        start_epoch = int(hooks.resume["epoch"]) + 1
        steps = int(hooks.resume.get("steps", 0))
        history = list(hooks.resume.get("history", []))
        stopped = bool(hooks.resume.get("stopped", False))
    state = {"epoch": start_epoch - 1, "steps": steps, "history": history, "stopped": stopped}
    for epoch in range(start_epoch, epochs):
        if stopped:
            break
        loss_sum = None
        epoch_start = time.perf_counter()
        epoch_images = 0
        for global_batch in batches(epoch):
            # Every rank sees the same global batch, so all agree on skipping a last batch too
            # small to give each rank an image (DDP needs every rank in every backward).
            if len(global_batch) < parallel.world_size:
                continue
            loss = step(global_batch)
            epoch_images += len(global_batch)
            loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step()
            steps += 1
        if loss_sum is not None:
            # Checked once an epoch, on the group's sum, so every rank raises together.
            check = parallel.all_reduce(loss_sum.float().reshape(1).clone())
            if not torch.isfinite(check).all():
                raise FloatingPointError(f"the loss became {check.item()} in epoch {epoch}: "
                                         "lower the learning rate")
        if loss_sum is not None and loss_sum.is_cuda:  # so train_s measures the work
            torch.cuda.synchronize(loss_sum.device)
        train_s = time.perf_counter() - epoch_start
        metrics, stopped = end_epoch(epoch)
        metrics = {**metrics, "train_s": train_s, "images": epoch_images,
                   "epoch_s": time.perf_counter() - epoch_start}
        history.append({"epoch": epoch, **metrics})
        state = {"epoch": epoch, "steps": steps, "history": history, "stopped": stopped}
        if hooks.on_epoch is not None:
            hooks.on_epoch(epoch, metrics, lambda: {**snapshot(), **state})
    return {"steps": steps, "epochs_run": state["epoch"] + 1, "stopped_early": stopped,
            "history": history}


def maybe_compile(module: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """``torch.compile`` the module when asked (the weights stay shared with the original)."""
    return torch.compile(module) if enabled else module


def snapshotter(**parts) -> tuple[Callable[[], dict], Callable[[dict], None]]:
    """``snapshot()`` and ``restore(snapshot)`` for modules and optimizers: their state dicts,
    copied to the CPU (a stage's resumable state)."""
    def snapshot() -> dict:
        return {name: optimizer_state_to_cpu(obj.state_dict()) for name, obj in parts.items()}

    def restore(snap: dict) -> None:
        for name, obj in parts.items():
            if name in snap:
                obj.load_state_dict(snap[name])
    return snapshot, restore


def optimizer_state_to_cpu(state: dict) -> dict:
    def move(v):
        if torch.is_tensor(v):
            return v.detach().cpu().clone()
        if isinstance(v, dict):
            return {k: move(x) for k, x in v.items()}
        if isinstance(v, list):
            return [move(x) for x in v]
        return v
    return move(state)


def visual_state(visual: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The image tower's state dict with the model's "visual." prefix, on the CPU in fp32."""
    out = {}
    for k, v in visual.state_dict().items():
        v = v.detach().cpu()
        out[f"visual.{k}"] = (v.float() if v.is_floating_point() else v).clone()
    return out


@torch.no_grad()
def sharded_accuracy(visual: torch.nn.Module, images: np.ndarray, labels: np.ndarray, head,
                     prep, parallel: Parallel, precision: str, batch_size: int = 512) -> float:
    """Top-1 over the zero-shot head on ``images``, split across the group and summed."""
    idx = parallel.shard(np.arange(len(images)))
    correct = torch.zeros(2, device=prep.device, dtype=torch.float64)
    with eval_mode(visual), autocast(prep.device, precision):
        for i in range(0, len(idx), batch_size):
            sel = idx[i:i + batch_size]
            pred = (embed(visual, prep(images[sel])) @ head.T).argmax(-1).cpu().numpy()
            correct[0] += float((pred == labels[sel]).sum())
            correct[1] += len(sel)
    parallel.all_reduce(correct)
    return (correct[0] / correct[1].clamp(min=1)).item()
