"""Images stored at a size other than the model's input size work in every stage."""

import numpy as np
import pytest

from distforget.config import BASELINES, load_config
from tests.factories import TINY


@pytest.fixture(scope="module")
def prepared_28px(cpu):
    from distforget.prepare import prepare

    # The small CLIP takes 32 px inputs; the images are stored at 28 px.
    cfg = load_config(None, {**TINY, "data.generated.image_size": 28})
    return cfg, prepare(cfg, cpu, log=lambda msg: None)


def test_synthetic_images_are_made_at_the_stored_size(prepared_28px):
    _, p = prepared_28px
    assert p.spec.image_size == 32 and p.images.shape[1:] == (28, 28, 3)
    assert len(p.synthetic) == TINY["remind.bn_align_images"]
    assert p.synthetic.shape[1:] == p.images.shape[1:]


@pytest.mark.parametrize("method", ["three_stage", *BASELINES, "base"])
def test_every_method_runs_on_28px_images(prepared_28px, cpu, method):
    from distforget.unlearn import unlearn

    cfg, p = prepared_28px
    (record,) = unlearn(cfg, [method], device=cpu, out_dir=None, prepared=p,
                        log=lambda msg: None)
    assert all(0.0 <= record[m] <= 1.0 for m in ("forget_acc", "retain_acc", "zeroshot_acc"))


def test_remind_makes_its_own_synthetic_images_at_the_stored_size(prepared_28px, cpu):
    from distforget.config import replace
    from distforget.forget import run_forget
    from distforget.remind import run_remind

    cfg, p = prepared_28px
    cfg = replace(cfg, {"remind.bn_align_images": 4, "remind.forget_weight": 1.0,
                        "remind.forget_loss": "distill"})
    forgotten = run_forget(p, cfg.forget, device=cpu)
    out = run_remind(p, cfg.remind, forgotten, device=cpu)
    assert out.meta["synthetic_images"] == 4
    assert np.isfinite(out.meta["wall_s"])


def test_a_folder_of_photos_of_several_sizes_without_splits_runs(tmp_path, tiny_checkpoint, cpu):
    """A user's folder as it comes: ROOT/<class>/<subgroup>/<image>, no split level, JPEG and
    PNG of several sizes, some grayscale; the images are stored at the model's 32 px."""
    import io

    from PIL import Image

    from distforget.unlearn import unlearn
    from tests.factories import cifar_frame

    frame = cifar_frame("train", 60, ["cat", "dog", "ship", "truck"])
    place = {"cat": ("pet", "cat"), "dog": ("pet", "dog"), "ship": ("ship", None),
             "truck": ("truck", None)}
    for i, row in enumerate(frame.itertuples()):
        cls, sub = place[row.class_name]
        folder = tmp_path / "photos" / cls / (sub or "")
        folder.mkdir(parents=True, exist_ok=True)
        img = Image.open(io.BytesIO(row.image)).resize((36 + i % 20, 48 - i % 9))
        suffix = ".png" if i % 2 else ".jpg"
        img.convert("L" if i % 5 == 0 else "RGB").save(folder / f"{i:03d}{suffix}")
    cfg = load_config(None, {
        **TINY, "model.pretrained": str(tiny_checkpoint), "data.format": "folder",
        "data.path": str(tmp_path / "photos"), "data.templates": "simple",
        "scenario.forget_class": "pet", "scenario.forget_subgroup": "dog"})
    from distforget.prepare import prepare

    logs = []
    p = prepare(cfg, cpu, log=logs.append)
    assert p.images.shape[1:] == (32, 32, 3) and p.info["stored_size"] == 32
    (record,) = unlearn(cfg, ["three_stage"], device=cpu, out_dir=None, prepared=p,
                        log=logs.append)
    assert all(0.0 <= record[m] <= 1.0 for m in ("forget_acc", "retain_acc", "zeroshot_acc"))
    said = [line for line in logs if line.startswith("data: ")]
    assert len(said) == 1 and "stored at 32x32, the model's input size" in said[0]
    assert any("forget pet/dog" in line for line in logs)
