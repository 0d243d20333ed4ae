"""The zero-shot head: normalised text embeddings of prompt templates x class names.

``logits = logit_scale * normalize(image_features) @ head.T``. The head is built once per
(model, classes, templates) with open_clip's own ``build_zero_shot_classifier`` and then held
fixed: no stage trains the text tower.
"""

from __future__ import annotations

from typing import Sequence

import torch
from open_clip import build_zero_shot_classifier
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from distforget.errors import ConfigError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")

# Written for distforget: small photographs of everyday objects and animals.
CIFAR10_TEMPLATES = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a low resolution photo of a {}.",
    "a small photo of the {}.",
    "a close-up photo of a {}.",
    "a pixelated photo of the {}.",
    "a photo of the {}, seen from afar.",
    "a cropped photo of a {}.",
)

# For the generated shapes: the forms the small CLIP was pretrained on, without a colour.
GENERATED_TEMPLATES = ("a photo of a {}.", "a drawing of a {}.", "a picture of a {}.", "a {}.")

SIMPLE_TEMPLATES = ("a photo of a {}.",)

TEMPLATES = {
    "cifar10": CIFAR10_TEMPLATES,
    "generated": GENERATED_TEMPLATES,
    "simple": SIMPLE_TEMPLATES,
    "imagenet": tuple(OPENAI_IMAGENET_TEMPLATES),
}


def templates_for(name: str, data_format: str, classes: Sequence[str]) -> tuple:
    """The named template set; "auto" picks by data format (and CIFAR-10's class names)."""
    if name == "auto":
        if data_format == "generated":
            name = "generated"
        elif data_format == "imagenet":
            name = "imagenet"
        elif set(classes) <= set(CIFAR10_CLASSES):
            name = "cifar10"
        else:
            name = "simple"
    if name not in TEMPLATES:
        raise ConfigError(f"data.templates {name!r}: expected one of auto, "
                          f"{', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def prompt_name(class_name: str) -> str:
    """How a class name is written in prompts (folder names often use underscores)."""
    return class_name.replace("_", " ")


@torch.no_grad()
def build_head(model, tokenizer, classes: Sequence[str], templates: Sequence,
               device: torch.device | str) -> torch.Tensor:
    """The zero-shot head [num_classes, embed_dim], rows L2-normalised, in fp32 on ``device``."""
    model = model.to(device)
    weights = build_zero_shot_classifier(model, tokenizer, [prompt_name(c) for c in classes],
                                         list(templates), num_classes_per_batch=32,
                                         device=device)
    return weights.T.float().contiguous()
