"""Contrastive pretraining of a small CLIP on a labelled image set, cached on disk.

The embedded default's base model comes from here: an open_clip architecture of distforget's
own (``DF-RN-Tiny-32``, a small ModifiedResNet CLIP) trained from scratch with a contrastive
loss on captions of the training split ("a photo of a red circle."), never on the held-out
split. The same code gives a small CLIP for any labelled image set, the CIFAR-10 Parquet copy
included (the command is ``distforget pretrain``, in ``distforget.pretrain``).

The result is cached under ``<cache>/models/`` keyed by the architecture, the pretraining knobs,
the stored image size and the content hash of the images and their labels, with a JSON sidecar that records the zero-shot
accuracy on the held-out split.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from distforget.config import ModelConfig, PretrainConfig
from distforget.data.scenario import held_out_mask
from distforget.data.sources import ImageTable, default_cache_dir
from distforget.data.transforms import DevicePreprocess
from distforget.evaluate import accuracy, image_features
from distforget.model import ModelSpec, create, input_size
from distforget.storage import atomic_path
from distforget.zeroshot import build_head, prompt_name

PRETRAIN_VERSION = "2"


def caption(class_name: str, subgroup: str | None, templates, rng: np.random.Generator
            ) -> tuple[str, str | None]:
    """A caption for one image and the subgroup it names: a template around the class name,
    with the subgroup label in front of it in half of the captions when the data has one
    ("a photo of a red circle.")."""
    name = prompt_name(class_name)
    named = None
    if subgroup and rng.random() < 0.5:
        name, named = f"{prompt_name(subgroup)} {name}", subgroup
    return templates[rng.integers(len(templates))].format(name), named


def caption_targets(classes: np.ndarray, subgroups: np.ndarray, named: np.ndarray
                    ) -> torch.Tensor:
    """Which captions of a batch are true of which image: caption j describes image i when it
    names i's class and names either no subgroup or i's subgroup. Rows sum to 1.

    With few classes, a batch holds many images that a caption describes equally well; CLIP's
    one-positive loss would push them apart as negatives and learns slowly. This multi-positive
    target keeps the contrastive form and drops those false negatives.
    """
    same_class = classes[:, None] == classes[None, :]
    subgroup_ok = np.array([[n is None or n == s for n in named] for s in subgroups])
    t = torch.from_numpy((same_class & subgroup_ok).astype(np.float32))
    return t / t.sum(dim=1, keepdim=True)


def contrastive_loss(image_f: torch.Tensor, text_f: torch.Tensor, scale: torch.Tensor,
                     targets: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy of CLIP with multi-positive targets (image i, caption j)."""
    logits = scale * image_f @ text_f.T
    to_text = -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()
    t = targets.T / targets.T.sum(dim=1, keepdim=True)
    to_image = -(t * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    return 0.5 * (to_text + to_image)


def spec_for(name: str, weights: str) -> ModelSpec:
    cfg = open_clip.get_model_config(name)
    return ModelSpec(name=name, quick_gelu=bool(cfg.get("quick_gelu", False)),
                     image_size=input_size(name),
                     mean=tuple(open_clip.OPENAI_DATASET_MEAN),
                     std=tuple(open_clip.OPENAI_DATASET_STD), weights=weights)


def split_rows(data: ImageTable, holdout_fraction: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Training and held-out rows, by the one hold-out rule scenario building uses
    (``distforget.data.scenario.held_out_mask``), so pretraining never sees a validation or
    test image."""
    held = held_out_mask(data, holdout_fraction)
    if data.has_splits:
        train = (data.table["split"] == "train").to_numpy()
        return np.flatnonzero(train & ~held), np.flatnonzero(held)
    return np.flatnonzero(~held), np.flatnonzero(held)


def pretrain_clip(data: ImageTable, rows: np.ndarray, *, name: str, cfg: PretrainConfig,
                  templates, device: torch.device, log: Callable[[str], None] = print
                  ) -> torch.nn.Module:
    """Train ``name`` from scratch on ``rows`` of ``data`` with the CLIP loss."""
    torch.manual_seed(cfg.seed)
    spec = spec_for(name, "pretraining")
    model = create(spec).to(device).train()
    tokenizer = open_clip.get_tokenizer(name)
    prep = DevicePreprocess(spec.image_size, spec.mean, spec.std, device)
    def decays(name: str, p: torch.Tensor) -> bool:  # matrices, not embeddings or gains
        return p.ndim >= 2 and "embedding" not in name

    decay = [p for n, p in model.named_parameters() if decays(n, p)]
    no_decay = [p for n, p in model.named_parameters() if not decays(n, p)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    steps_per_epoch = max(1, len(rows) // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    warmup = max(1, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup
        else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))
    rng = np.random.default_rng(cfg.seed)
    classes = data.table["class_name"].to_numpy()
    # None for images without a subgroup (pandas stores them as NaN in a string column).
    subgroups = (data.table["subgroup"].to_numpy(dtype=object, na_value=None)
                 if "subgroup" in data.table else np.full(len(data.table), None, dtype=object))
    step = 0
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        order = rows[rng.permutation(len(rows))]
        for b in range(steps_per_epoch):
            idx = np.sort(order[b * cfg.batch_size:(b + 1) * cfg.batch_size])
            caps, named = zip(*(caption(classes[i], subgroups[i], templates, rng) for i in idx))
            texts = tokenizer(list(caps))
            targets = caption_targets(classes[idx], np.asarray(subgroups, dtype=object)[idx],
                                      np.asarray(named, dtype=object)).to(device)
            flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
            image_f = model.encode_image(prep(data.images[idx], flip=flip), normalize=True)
            text_f = model.encode_text(texts.to(device), normalize=True)
            loss = contrastive_loss(image_f, text_f, model.logit_scale.exp(), targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():  # as in CLIP: the temperature stays at most 100
                model.logit_scale.clamp_(0, math.log(100))
            step += 1
        elapsed = time.perf_counter() - start
        seen = step * cfg.batch_size
        threads = torch.get_num_threads()
        log(f"pretrain epoch {epoch + 1}/{cfg.epochs}: loss {loss.item():.3f}, "
            f"{seen / elapsed:.0f} images/s, {elapsed:.0f}s elapsed, about "
            f"{elapsed / (epoch + 1) * (cfg.epochs - epoch - 1):.0f}s left "
            f"({threads} thread{'s' if threads > 1 else ''})")
    return model.eval()


@torch.no_grad()
def zeroshot_accuracy(model, name: str, data: ImageTable, rows: np.ndarray, templates,
                      device: torch.device) -> float:
    """Top-1 over all classes of the data on ``rows``, with the template head."""
    spec = spec_for(name, "")
    classes = data.classes
    head = build_head(model, open_clip.get_tokenizer(name), classes, templates, device)
    prep = DevicePreprocess(spec.image_size, spec.mean, spec.std, device)
    feats = image_features(model.visual, data.images[rows], prep)
    labels = torch.as_tensor([classes.index(c) for c in data.table["class_name"].to_numpy()[rows]],
                             device=device)
    return accuracy(model.logit_scale.exp() * feats @ head.T, labels)


def cache_key(model: ModelConfig, cfg: PretrainConfig, data: ImageTable, rows: np.ndarray,
              templates) -> str:
    """Hash of every input that changes the weights: the architecture, the pretraining knobs,
    the templates, the stored image size (``data.image_size``, or the generated size), the
    data's fingerprint (every image's content and labels) and the training rows."""
    h = hashlib.sha256(f"v{PRETRAIN_VERSION}|{model.name}|{cfg}|{tuple(templates)}|"
                       f"{tuple(data.images.shape[1:])}|{data.fingerprint}".encode())
    table = data.table.iloc[rows]
    for sha, c, s in zip(table["sha"], table["class_name"], table["subgroup"]):
        h.update(f"{sha}:{c}:{s};".encode())
    return h.hexdigest()[:32]


def ensure_pretrained(model: ModelConfig, cfg: PretrainConfig, data: ImageTable, templates,
                      device: torch.device, cache_dir: Path | None = None,
                      log: Callable[[str], None] = print,
                      exclude: np.ndarray | None = None, holdout_fraction: float = 0.25
                      ) -> Path:
    """The cached pretrained weights for this data and these knobs, training them if absent.

    ``exclude``: a boolean mask of rows left out of the training images (the retrain reference
    leaves out the forget subgroup); the held-out images stay as they are.
    ``holdout_fraction`` is ``scenario.holdout_fraction`` (data without a split column).
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    train_rows, held_rows = split_rows(data, holdout_fraction)
    left_out = 0
    if exclude is not None:
        left_out = int(np.asarray(exclude)[train_rows].sum())
        train_rows = train_rows[~np.asarray(exclude)[train_rows]]
    key = cache_key(model, cfg, data, train_rows, templates)
    path = cache_dir / "models" / f"{model.name}-{key}.safetensors"
    if path.is_file():
        return path
    log(f"pretraining {model.name} on {len(train_rows)} images "
        + (f"({left_out} left out) " if exclude is not None else "")
        + f"({cfg.epochs} epochs; cached at {path})")
    start = time.perf_counter()
    clip = pretrain_clip(data, train_rows, name=model.name, cfg=cfg, templates=templates,
                         device=device, log=log)
    wall = time.perf_counter() - start
    acc = zeroshot_accuracy(clip, model.name, data, held_rows, templates, device) \
        if len(held_rows) else float("nan")
    log(f"pretrained {model.name} in {wall:.0f}s; zero-shot accuracy on {len(held_rows)} "
        f"held-out images: {acc:.3f}")
    state = {k: v.detach().cpu().contiguous() for k, v in clip.state_dict().items()}
    info = {"model": model.name, "pretrain": cfg.__dict__, "train_images": int(len(train_rows)),
            "heldout_images": int(len(held_rows)), "zeroshot_acc": acc, "wall_s": wall,
            **({"excluded_images": left_out} if exclude is not None else {})}
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(info, indent=2))
    with atomic_path(path) as tmp:  # the weights last: their presence marks the cache entry
        save_file(state, str(tmp), metadata={"distforget": json.dumps(info)})
    return path


def pretrained_info(path: Path) -> dict:
    side = Path(path).with_suffix(".json")
    return json.loads(side.read_text()) if side.is_file() else {}
