import json

import open_clip
import pytest
import torch

from distforget.checkpoint import load_checkpoint, read_record, write_checkpoint
from distforget.errors import CheckpointError
from distforget.model import ModelSpec


@pytest.fixture()
def model_and_spec():
    torch.manual_seed(0)
    import distforget.model  # noqa: F401
    model = open_clip.create_model("DF-ViT-Tiny-32")
    spec = ModelSpec("DF-ViT-Tiny-32", False, 32, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2), "test")
    return model, spec


def test_open_clip_loads_the_checkpoint_by_name_and_by_folder(tmp_path, model_and_spec):
    model, spec = model_and_spec
    out = write_checkpoint(tmp_path / "ckpt", model.state_dict(), spec, {"metrics": {"x": 1}})
    loaded, _, _ = open_clip.create_model_and_transforms(
        "DF-ViT-Tiny-32", pretrained=str(out / "model.safetensors"))
    by_folder = open_clip.create_model(f"local-dir:{out}")
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
        assert torch.equal(by_folder.state_dict()[k], v)
    record = read_record(out)
    assert record["model"]["open_clip_name"] == "DF-ViT-Tiny-32" and record["metrics"] == {"x": 1}
    reloaded, rec2 = load_checkpoint(out)
    assert rec2["sha256"] == record["sha256"]


def test_a_changed_weights_file_fails_its_sha256(tmp_path, model_and_spec):
    model, spec = model_and_spec
    out = write_checkpoint(tmp_path / "ckpt", model.state_dict(), spec, {})
    data = bytearray((out / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (out / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="the weights were changed or damaged"):
        load_checkpoint(out)
    with pytest.raises(CheckpointError, match="is not a distforget checkpoint"):
        read_record(tmp_path)


def test_rewriting_replaces_the_folder_as_a_whole(tmp_path, model_and_spec, monkeypatch):
    model, spec = model_and_spec
    out = write_checkpoint(tmp_path / "ckpt", model.state_dict(), spec, {"v": 1})
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    import distforget.checkpoint as ck

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", broken_save)
    with pytest.raises(OSError):
        write_checkpoint(tmp_path / "ckpt", model.state_dict(), spec, {"v": 2})
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary folders left
    assert json.loads((out / "distforget.json").read_text())["v"] == 1
