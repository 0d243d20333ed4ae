"""Checkpoints that open_clip loads, in open_clip's Hugging Face Hub layout plus distforget's own
record:

- ``open_clip_model.safetensors``: the full open_clip state dict (the Hub layout's weights);
- ``model.safetensors``: the same file (a hard link where the filesystem allows, else a copy),
  the name ``create_model_and_transforms(name, pretrained=".../model.safetensors")`` uses;
- ``open_clip_config.json``: ``model_cfg`` and ``preprocess_cfg``, so
  ``open_clip.create_model("local-dir:DIR")`` (and ``hf-hub:ORG/NAME`` once pushed) works
  without distforget installed;
- ``README.md``: the model card (``distforget.model_card``);
- ``distforget.json``: model name, weights source, soup recipe, metrics, config, sha256.

A checkpoint folder is written beside its destination and renamed into place, so a reader or a
killed run sees the old folder or the new one, never a mix. Files and folders get the process
umask's modes (``storage.temp_dir``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import open_clip
import torch
from safetensors.torch import save_file

from distforget import model_card
from distforget.errors import CheckpointError
from distforget.model import ModelSpec
from distforget.storage import set_default_mode, temp_dir

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
HUB_WEIGHTS = "open_clip_model.safetensors"  # open_clip.constants.HF_SAFE_WEIGHTS_NAME
HUB_CONFIG = "open_clip_config.json"  # open_clip.constants.HF_CONFIG_NAME


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hub_config(spec: ModelSpec) -> dict[str, Any]:
    """``open_clip_config.json``: the architecture and the preprocessing, as open_clip's
    ``local-dir:`` and ``hf-hub:`` loaders read them."""
    model_cfg = open_clip.get_model_config(spec.open_clip_name) or {}
    if spec.quick_gelu:
        model_cfg["quick_gelu"] = True
    return {"model_cfg": model_cfg,
            "preprocess_cfg": {"size": spec.image_size, "mean": list(spec.mean),
                               "std": list(spec.std), "interpolation": "bicubic",
                               "resize_mode": "shortest"}}


def write_checkpoint(out_dir: str | Path, state: Mapping[str, torch.Tensor], spec: ModelSpec,
                     record: Mapping[str, Any]) -> Path:
    """Write a full model state dict and its record to ``out_dir`` (replaced as a whole)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(out_dir.parent, f".{out_dir.name}.tmp-")
    try:
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        save_file(tensors, tmp / HUB_WEIGHTS, metadata={"format": "pt"})
        set_default_mode(tmp / HUB_WEIGHTS)  # safetensors writes 0600
        try:
            os.link(tmp / HUB_WEIGHTS, tmp / WEIGHTS)
        except OSError:  # a filesystem without hard links
            shutil.copyfile(tmp / HUB_WEIGHTS, tmp / WEIGHTS)
        (tmp / HUB_CONFIG).write_text(json.dumps(hub_config(spec), indent=2))
        info = {
            "format_version": FORMAT_VERSION,
            "model": {"name": spec.name, "open_clip_name": spec.open_clip_name,
                      "quick_gelu": spec.quick_gelu, "weights": spec.weights,
                      "image_size": spec.image_size},
            **dict(record),
            "sha256": sha256_file(tmp / WEIGHTS),
        }
        (tmp / "distforget.json").write_text(json.dumps(info, indent=2, default=float))
        (tmp / "README.md").write_text(model_card.render(info, model_card.name_of(info)))
        old = None
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def read_record(ckpt_dir: str | Path, verify: bool = True) -> dict[str, Any]:
    """The checkpoint's ``distforget.json``; with ``verify``, its sha256 is checked against the
    weights file."""
    ckpt_dir = Path(ckpt_dir)
    meta, weights = ckpt_dir / "distforget.json", ckpt_dir / WEIGHTS
    if not meta.is_file() or not weights.is_file():
        raise CheckpointError(f"{str(ckpt_dir)!r} is not a distforget checkpoint: expected "
                              "model.safetensors and distforget.json")
    record = json.loads(meta.read_text())
    if verify:
        hub = ckpt_dir / HUB_WEIGHTS
        files = [weights] + ([hub] if hub.is_file() and not os.path.samefile(hub, weights)
                             else [])
        for path in files:
            actual = sha256_file(path)
            if actual != record.get("sha256"):
                raise CheckpointError(
                    f"{str(path)!r} has sha256 {actual[:16]}..., but distforget.json records "
                    f"{str(record.get('sha256'))[:16]}...: the weights were changed or damaged")
    return record


def load_checkpoint(ckpt_dir: str | Path, device: str | torch.device = "cpu"):
    """The open_clip model of a distforget checkpoint (sha256 checked) and its record."""
    ckpt_dir = Path(ckpt_dir)
    record = read_record(ckpt_dir)
    name = record["model"]["open_clip_name"]
    model = open_clip.create_model(name, pretrained=str(ckpt_dir / WEIGHTS),
                                   device=device,
                                   force_quick_gelu=bool(record["model"].get("quick_gelu")))
    return model.eval(), record
