import json

import numpy as np
import pytest
import torch

from distforget.config import RunConfig
from distforget.data.load import load_data
from distforget.pretraining import caption, caption_targets, ensure_pretrained, pretrained_info
from distforget.zeroshot import GENERATED_TEMPLATES


@pytest.mark.slow  # pretrains the embedded default's CLIP from scratch
def test_embedded_model_recognises_its_held_out_images(cache_dir, cpu):
    """The embedded default's small CLIP, pretrained as a user's first run would: it must know
    the classes (the forget subgroup included) before anything can be forgotten."""
    cfg = RunConfig()
    data = load_data(cfg.data, cache_dir)
    path = ensure_pretrained(cfg.model, cfg.pretrain, data, GENERATED_TEMPLATES, cpu, cache_dir,
                             log=print)
    info = pretrained_info(path)
    assert info["zeroshot_acc"] >= 0.9, info
    assert info["heldout_images"] == 8 * 3 * cfg.data.generated.test_per_subgroup
    # Cached: asking again returns the same file without training.
    assert ensure_pretrained(cfg.model, cfg.pretrain, data, GENERATED_TEMPLATES, cpu, cache_dir,
                             log=print) == path
    assert json.loads(path.with_suffix(".json").read_text()) == info


def test_captions_and_their_multi_positive_targets():
    rng = np.random.default_rng(0)
    text, named = caption("sea_lion", "grey", ("a photo of a {}.",), rng)
    assert text in ("a photo of a sea lion.", "a photo of a grey sea lion.")
    classes = np.array(["circle", "circle", "square"], dtype=object)
    subgroups = np.array(["red", "blue", "red"], dtype=object)
    named = np.array(["red", None, None], dtype=object)  # "red circle", "circle", "square"
    t = caption_targets(classes, subgroups, named)
    # image 0 (red circle) fits captions 0 and 1; image 1 (blue circle) only caption 1.
    assert torch.allclose(t[0], torch.tensor([0.5, 0.5, 0.0]))
    assert torch.allclose(t[1], torch.tensor([0.0, 1.0, 0.0]))
    assert torch.allclose(t[2], torch.tensor([0.0, 0.0, 1.0]))
