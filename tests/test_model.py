import open_clip
import pytest
import torch
from safetensors.torch import save_file

from distforget.errors import CheckpointError, ConfigError
from distforget.model import ModelSpec, load_pretrained, quick_gelu_for, state_to_numpy


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    torch.manual_seed(0)
    model = open_clip.create_model("DF-ViT-Tiny-32")
    folder = tmp_path_factory.mktemp("ckpt")
    state = model.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "tiny.safetensors")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, folder / "tiny.pt")
    return model, folder


def test_local_safetensors_and_torch_state_dict_load(saved_model):
    model, folder = saved_model
    for name in ("tiny.safetensors", "tiny.pt"):
        loaded, spec = load_pretrained("DF-ViT-Tiny-32", str(folder / name))
        for k, v in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v), (name, k)
        assert spec.image_size == 32 and spec.weights.endswith(name)
        assert not spec.quick_gelu


def test_checkpoint_for_another_architecture_is_refused(saved_model):
    _, folder = saved_model
    with pytest.raises(CheckpointError, match=r"does not match the architecture: \d+ missing"):
        load_pretrained("DF-RN-Tiny-32", str(folder / "tiny.safetensors"))


def test_unknown_names_and_tags_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="'ViT-B-23' is not an open_clip architecture; did "
                                          "you mean 'ViT-B-32'"):
        load_pretrained("ViT-B-23", "openai")
    with pytest.raises(ConfigError, match="neither a local file nor a pretrained tag"):
        load_pretrained("ViT-B-32", "no-such-tag")
    with pytest.raises(CheckpointError, match="no such file"):
        load_pretrained("DF-ViT-Tiny-32", str(tmp_path / "missing.safetensors"))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_pretrained("DF-ViT-Tiny-32", str(bad))


def test_quick_gelu_follows_the_weights_as_open_clip_users_expect():
    assert quick_gelu_for("ViT-B-32", "openai", None) is True
    assert quick_gelu_for("ViT-B-32", "laion2b_s34b_b79k", None) is False
    assert quick_gelu_for("ViT-B-32-quickgelu", "/x/y.safetensors", None) is True
    assert quick_gelu_for("ViT-B-32", "openai", False) is False
    spec = ModelSpec("ViT-B-32", True, 224, (0, 0, 0), (1, 1, 1), "openai")
    assert spec.open_clip_name == "ViT-B-32-quickgelu"


def test_state_to_numpy_keeps_shapes(saved_model):
    model, _ = saved_model
    state = state_to_numpy(model)
    assert state["logit_scale"].shape == tuple(model.logit_scale.shape)
    assert all(state[k].shape == tuple(v.shape) for k, v in model.state_dict().items())
