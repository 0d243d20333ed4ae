"""distforget: targeted forgetting of image subgroups in CLIP models, searched with Ray Tune and
Optuna. Importing the package registers distforget's own open_clip architectures
(``DF-RN-Tiny-32``, ``DF-ViT-Tiny-32``)."""

from distforget import model as _model  # noqa: F401  (registers the architectures)

__version__ = "0.1.0"
