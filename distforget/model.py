"""Model layer: open_clip models by name with weights from a tag or a local file.

distforget registers its own small architectures (``model_configs/*.json``: ``DF-ViT-Tiny-32``,
``DF-RN-Tiny-32``) with open_clip when it is imported, so ``open_clip.create_model`` builds
them like any other name. No function here picks a device: callers pass one.
"""

from __future__ import annotations

import difflib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import open_clip
import torch

from distforget.errors import CheckpointError, ConfigError

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
if MODEL_CONFIG_DIR not in open_clip.factory._MODEL_CONFIG_PATHS:
    open_clip.add_model_config(MODEL_CONFIG_DIR)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """What any process needs to rebuild the architecture (weights travel separately)."""

    name: str
    quick_gelu: bool
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights: str  # where the base weights came from: a tag, a file, or the embedded pretraining

    @property
    def open_clip_name(self) -> str:
        """The name under which open_clip builds this architecture with its activation."""
        if self.quick_gelu and not self.name.endswith("-quickgelu"):
            candidate = f"{self.name}-quickgelu"
            if candidate in open_clip.list_models():
                return candidate
        return self.name


def check_model_name(name: str) -> None:
    if name.startswith(("hf-hub:", "local-dir:")):
        return
    known = open_clip.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"model.name {name!r} is not an open_clip architecture{hint}")


def input_size(name: str) -> int | None:
    """The image size an open_clip architecture takes, from its config (no weights built);
    None where open_clip has no local config for the name (``hf-hub:``, ``local-dir:``)."""
    if name.startswith(("hf-hub:", "local-dir:")):
        return None
    cfg = open_clip.get_model_config(name)
    size = (cfg or {}).get("vision_cfg", {}).get("image_size")
    if size is None:
        return None
    return int(size if isinstance(size, int) else size[0])


def is_local_file(pretrained: str) -> bool:
    return pretrained.endswith((".safetensors", ".pt", ".pth", ".bin")) or os.path.sep in pretrained


def quick_gelu_for(name: str, pretrained: str | None, override: bool | None) -> bool:
    """QuickGELU as open_clip users expect: forced when asked, else what the weights were
    trained with (the ``openai`` tags), else what the architecture name says."""
    if override is not None:
        return override
    if name.endswith("-quickgelu"):
        return True
    if pretrained and not is_local_file(pretrained):
        tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
        if tag_cfg:
            return bool(tag_cfg.get("quick_gelu", False))
    return bool((open_clip.get_model_config(name) or {}).get("quick_gelu", False))


def create(spec: ModelSpec, state: Mapping[str, Any] | None = None) -> torch.nn.Module:
    """Build the architecture on the CPU in fp32, optionally loading a state dict."""
    with _quiet_open_clip():
        model = open_clip.create_model(spec.name, pretrained=None, force_quick_gelu=spec.quick_gelu)
    if state is not None:
        load_state(model, state, source="state dict")
    return model.eval()


def load_state(model: torch.nn.Module, state: Mapping[str, Any], source: str) -> None:
    """Load a full state dict strictly; a mismatch names the keys and the source."""
    tensors = {k: torch.from_numpy(np.array(v)) if isinstance(v, np.ndarray) else v
               for k, v in state.items()}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})")
        raise CheckpointError(f"checkpoint {source} does not match the architecture: "
                              f"{' and '.join(parts)} keys")
    bad = [k for k, v in tensors.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if bad:
        k = bad[0]
        raise CheckpointError(f"checkpoint {source} does not match the architecture: {k!r} has "
                              f"shape {tuple(tensors[k].shape)}, expected "
                              f"{tuple(expected[k].shape)}")
    model.load_state_dict(tensors, strict=True)


class _quiet_open_clip:
    """open_clip logs a warning for every randomly initialised model; we load weights after."""

    def __enter__(self):
        self._level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)

    def __exit__(self, *exc):
        logging.getLogger().setLevel(self._level)


def load_pretrained(name: str, pretrained: str, quick_gelu: bool | None = None,
                    cache_dir: str | None = None) -> tuple[torch.nn.Module, ModelSpec]:
    """An open_clip model with weights from a tag (downloaded by open_clip) or a local file
    (safetensors, or a torch state dict read with ``weights_only=True``)."""
    check_model_name(name)
    qg = quick_gelu_for(name, pretrained, quick_gelu)
    if is_local_file(pretrained):
        path = Path(pretrained)
        if not path.is_file():
            raise CheckpointError(f"model.pretrained {pretrained!r}: no such file")
        with _quiet_open_clip():
            model = open_clip.create_model(name, pretrained=None, force_quick_gelu=qg)
        try:
            state = open_clip.factory.load_state_dict(str(path), weights_only=True)
        except Exception as exc:  # safetensors / pickle errors
            raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: {exc}") from None
        state = open_clip.factory.convert_state_dict(model, state)
        load_state(model, state, source=repr(str(path)))
    else:
        if not open_clip.get_pretrained_cfg(name, pretrained):
            tags = open_clip.list_pretrained_tags_by_model(name)
            raise ConfigError(f"model.pretrained {pretrained!r} is neither a local file nor a "
                              f"pretrained tag of {name!r} (tags: {', '.join(tags) or 'none'})")
        try:
            model = open_clip.create_model(name, pretrained=pretrained, force_quick_gelu=qg,
                                           cache_dir=cache_dir)
        except RuntimeError as exc:
            raise CheckpointError(f"weights {pretrained!r} for {name!r} could not be loaded: "
                                  f"{exc}") from None
    pp = open_clip.get_model_preprocess_cfg(model)
    size = pp["size"]
    spec = ModelSpec(name=name, quick_gelu=qg,
                     image_size=int(size if isinstance(size, int) else size[0]),
                     mean=tuple(float(v) for v in pp["mean"]),
                     std=tuple(float(v) for v in pp["std"]),
                     weights=str(pretrained))
    return model.eval(), spec


def tokenizer_for(spec: ModelSpec):
    return open_clip.get_tokenizer(spec.name)


def state_to_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """A state dict as contiguous numpy arrays (fp32 for floats): shareable without copies."""
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if v.is_floating_point():
            v = v.float()
        out[k] = v.numpy().copy()  # ascontiguousarray would turn 0-d tensors into 1-d
    return out
