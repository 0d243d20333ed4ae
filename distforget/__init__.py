"""distforget: targeted forgetting of image subgroups in CLIP models, searched with Ray Tune and
Optuna.

Importing the package registers distforget's own open_clip architectures (``DF-RN-Tiny-32``,
``DF-ViT-Tiny-32``, from ``model_configs/``) with open_clip: at once when open_clip is already
imported, else as soon as it is. The package itself imports neither torch nor open_clip, so the
commands parse their arguments (and answer ``--help``) in well under a second.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"


def register_architectures(open_clip_module) -> None:
    """Add ``model_configs/`` to open_clip's architecture registry (once)."""
    if MODEL_CONFIG_DIR not in open_clip_module.factory._MODEL_CONFIG_PATHS:
        open_clip_module.add_model_config(MODEL_CONFIG_DIR)


class _RegisterWhenImported(importlib.abc.MetaPathFinder):
    """Finds nothing itself; when ``open_clip`` is first imported, it wraps that module's loader
    so the architectures are registered right after open_clip's own code has run."""

    def find_spec(self, name, path=None, target=None):
        if name != "open_clip":
            return None
        sys.meta_path.remove(self)  # one shot; also keeps the lookup below from recursing
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


class _RegisteringLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        register_architectures(module)

    def __getattr__(self, name):  # resource readers, get_data, ... of the real loader
        return getattr(self._loader, name)


if "open_clip" in sys.modules:
    register_architectures(sys.modules["open_clip"])
elif not any(isinstance(f, _RegisterWhenImported) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenImported())
