import open_clip
import pytest
import torch
import torch.nn.functional as F

import distforget.model  # noqa: F401  registers distforget's architectures
from distforget.errors import ConfigError
from distforget.zeroshot import CIFAR10_TEMPLATES, build_head, templates_for


def test_head_is_the_normalised_mean_of_template_embeddings():
    torch.manual_seed(0)
    model = open_clip.create_model("DF-ViT-Tiny-32").eval()
    tok = open_clip.get_tokenizer("DF-ViT-Tiny-32")
    classes = ["cat", "sea_lion"]
    templates = ["a photo of a {}.", "a {} in the wild."]
    head = build_head(model, tok, classes, templates, "cpu")
    assert head.shape == (2, 128)
    assert torch.allclose(head.norm(dim=1), torch.ones(2), atol=1e-5)
    with torch.no_grad():
        texts = tok([t.format("sea lion") for t in templates])  # underscores become spaces
        manual = F.normalize(F.normalize(model.encode_text(texts), dim=-1).mean(0), dim=0)
    assert torch.allclose(head[1], manual, atol=1e-5)


def test_template_sets():
    assert templates_for("auto", "parquet", ["cat", "dog"]) == CIFAR10_TEMPLATES
    assert templates_for("auto", "folder", ["x"]) == ("a photo of a {}.",)
    assert len(templates_for("auto", "imagenet", ["x"])) > 50
    assert templates_for("auto", "generated", ["circle"])[0] == "a photo of a {}."
    with pytest.raises(ConfigError):
        templates_for("nope", "parquet", ["cat"])
