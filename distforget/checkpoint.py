"""Checkpoints that open_clip loads: ``model.safetensors`` (the full open_clip state dict),
``distforget.json`` (model name, weights source, soup recipe, metrics, config, sha256) and
``open_clip_config.json`` (so ``open_clip.create_model("local-dir:DIR")`` works without
distforget installed).

A checkpoint folder is written beside its destination and renamed into place, so a reader or a
killed run sees the old folder or the new one, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import open_clip
import torch
from safetensors.torch import save_file

from distforget.errors import CheckpointError
from distforget.model import ModelSpec

FORMAT_VERSION = 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_checkpoint(out_dir: str | Path, state: Mapping[str, torch.Tensor], spec: ModelSpec,
                     record: Mapping[str, Any]) -> Path:
    """Write a full model state dict and its record to ``out_dir`` (replaced as a whole)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        model_cfg = open_clip.get_model_config(spec.open_clip_name) or {}
        if spec.quick_gelu:
            model_cfg["quick_gelu"] = True
        (tmp / "open_clip_config.json").write_text(json.dumps({
            "model_cfg": model_cfg,
            "preprocess_cfg": {"size": spec.image_size, "mean": list(spec.mean),
                               "std": list(spec.std), "interpolation": "bicubic",
                               "resize_mode": "shortest"}}, indent=2))
        info = {
            "format_version": FORMAT_VERSION,
            "model": {"name": spec.name, "open_clip_name": spec.open_clip_name,
                      "quick_gelu": spec.quick_gelu, "weights": spec.weights,
                      "image_size": spec.image_size},
            **dict(record),
            "sha256": sha256_file(tmp / "model.safetensors"),
        }
        (tmp / "distforget.json").write_text(json.dumps(info, indent=2, default=float))
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
    meta, weights = ckpt_dir / "distforget.json", ckpt_dir / "model.safetensors"
    if not meta.is_file() or not weights.is_file():
        raise CheckpointError(f"{str(ckpt_dir)!r} is not a distforget checkpoint: expected "
                              "model.safetensors and distforget.json")
    record = json.loads(meta.read_text())
    if verify:
        actual = sha256_file(weights)
        if actual != record.get("sha256"):
            raise CheckpointError(f"{str(weights)!r} has sha256 {actual[:16]}..., but "
                                  f"distforget.json records {str(record.get('sha256'))[:16]}...: "
                                  "the weights were changed or damaged")
    return record


def load_checkpoint(ckpt_dir: str | Path, device: str | torch.device = "cpu"):
    """The open_clip model of a distforget checkpoint (sha256 checked) and its record."""
    ckpt_dir = Path(ckpt_dir)
    record = read_record(ckpt_dir)
    name = record["model"]["open_clip_name"]
    model = open_clip.create_model(name, pretrained=str(ckpt_dir / "model.safetensors"),
                                   device=device,
                                   force_quick_gelu=bool(record["model"].get("quick_gelu")))
    return model.eval(), record
