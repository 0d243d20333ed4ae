"""Style subgroups: the transforms, the deterministic builder and CLI, and the CIFAR-10 style
scenario end to end with a tiny CLIP."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from distforget.config import DataConfig, load_config
from distforget.data import styles
from distforget.data.load import load_data
from distforget.errors import ConfigError
from tests.factories import cifar_frame, write_image_folder

REPO = Path(__file__).resolve().parents[2]
ALL = ("photo", "sketch", "cartoon", "grayscale", "painting")


@pytest.fixture(scope="module")
def small_cifar(tmp_path_factory) -> Path:
    """A folder of two manifests (train, test): 8 + 10 real CIFAR-10 images of 3 classes."""
    folder = tmp_path_factory.mktemp("cifar-styles-input")
    classes = ["airplane", "cat", "ship"]
    cifar_frame("train", 8, classes)[["image", "class_name", "path"]].to_parquet(
        folder / "train.parquet")
    cifar_frame("test", 10, classes)[["image", "class_name", "path"]].to_parquet(
        folder / "test.parquet")
    return folder


def pixels(blob: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(blob)))


def digest(frame: pd.DataFrame) -> str:
    h = hashlib.sha256()
    for row in frame.itertuples(index=False):
        h.update(row.image)
        h.update(f"{row.class_name}|{row.subgroup}|{row.split}|{row.origin}".encode())
    return h.hexdigest()


def test_each_style_is_an_rgb_image_of_the_same_size_and_differs_from_the_photo():
    src = Image.open(io.BytesIO(cifar_frame("test", 1, ["airplane"])["image"][0])).convert("RGB")
    photo = np.asarray(src)
    out = {s: np.asarray(styles.stylize(src, s)) for s in ALL}
    for name, arr in out.items():
        assert arr.shape == photo.shape and arr.dtype == np.uint8, name
    assert np.array_equal(out["photo"], photo)
    for name in ("sketch", "grayscale"):  # grey on three channels
        assert np.array_equal(out[name][..., 0], out[name][..., 2]), name
    assert np.array_equal(out["grayscale"][..., 0], np.asarray(src.convert("L")))
    for name in ("sketch", "cartoon", "painting"):
        assert np.abs(out[name].astype(int) - photo).mean() > 5, name
    # A pencil sketch is mostly paper: brighter than the photo.
    assert out["sketch"].mean() > photo.mean()
    # Cartoon colours are posterised to 2 bits per channel; ink is black.
    assert set(np.unique(out["cartoon"])) <= {0, 64, 128, 192}
    with pytest.raises(ConfigError, match="'watercolour'"):
        styles.stylize(src, "watercolour")


def test_builder_gives_the_same_bytes_for_the_same_input_and_seed(small_cifar, tmp_path):
    a = styles.build_styles(small_cifar, ALL, per_class=3, seed=7)
    b = styles.build_styles(small_cifar, ALL, per_class=3, seed=7)
    assert digest(a) == digest(b)
    styles.write_manifest(a, tmp_path / "a.parquet")
    styles.write_manifest(b, tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    # Another seed picks other originals (3 of 8 training images per class).
    c = styles.build_styles(small_cifar, ALL, per_class=3, seed=8)
    assert set(c["origin"]) != set(a["origin"])
    # Each original is rendered once per style, all in the original's split.
    assert len(a) == 3 * 2 * 3 * len(ALL)
    per_origin = a.groupby("origin").agg(n=("subgroup", "size"), splits=("split", "nunique"))
    assert (per_origin["n"] == len(ALL)).all() and (per_origin["splits"] == 1).all()
    counts = a.groupby(["split", "class_name", "subgroup"]).size()
    assert (counts == 3).all() and len(counts) == 2 * 3 * len(ALL)


def test_selection_depends_on_content_not_row_order(small_cifar):
    originals = styles.read_originals(small_cifar)
    shuffled = originals.sample(frac=1.0, random_state=3).reset_index(drop=True)
    a = styles.build_styles(originals, ["photo"], per_class=2, seed=0)
    b = styles.build_styles(shuffled, ["photo"], per_class=2, seed=0)
    assert digest(a) == digest(b)


def test_input_without_splits_is_divided_by_content_hash(small_cifar):
    originals = styles.read_originals(small_cifar).assign(split=None)
    frame = styles.build_styles(originals, ["photo", "sketch"], holdout=0.5)
    shas = frame.drop_duplicates("origin")
    expected = np.where(shas["origin_sha"].map(lambda s: int(s[:13], 16) / 16**13) < 0.5,
                        "test", "train")
    assert list(shas["split"]) == list(expected) and set(expected) == {"train", "test"}


def test_cli_writes_a_manifest_that_the_parquet_form_reads(small_cifar, tmp_path, capsys):
    out = tmp_path / "styled.parquet"
    code = styles.main(["--input", str(small_cifar), "--out", str(out), "--styles",
                        "photo,sketch", "--classes", "airplane,cat", "--per-class", "2"])
    assert code == 0 and "wrote" in capsys.readouterr().out
    data = load_data(DataConfig(format="parquet", path=str(out)), tmp_path / "cache")
    assert data.classes == ("airplane", "cat")
    assert set(data.table["subgroup"]) == {"photo", "sketch"}
    assert data.table.groupby(["split", "subgroup"]).size().to_dict() == {
        ("test", "photo"): 4, ("test", "sketch"): 4, ("train", "photo"): 4,
        ("train", "sketch"): 4}
    assert styles.main(["--input", str(small_cifar), "--out", str(out),
                        "--styles", "photo,oil"]) == 2
    assert "style 'oil'" in capsys.readouterr().err


def test_users_style_folders_are_the_image_folder_form(tmp_path):
    frame = cifar_frame("train", 4, ["airplane"])
    write_image_folder(tmp_path / "root", frame, "train",
                       subgroup_of=lambda i, row: "sketch" if i % 2 else "photo")
    data = load_data(DataConfig(format="folder", path=str(tmp_path / "root")),
                     tmp_path / "cache")
    assert data.table["subgroup"].value_counts().to_dict() == {"photo": 2, "sketch": 2}


def test_cifar10_styles_config_and_search_space_are_valid():
    from distforget.search_space import load_space

    cfg = load_config(REPO / "configs" / "cifar10-styles.yaml")
    cifar = load_config(REPO / "configs" / "cifar10.yaml")
    assert cfg.pretrain == cifar.pretrain and cfg.model == cifar.model
    assert (cfg.scenario.forget_class, cfg.scenario.forget_subgroup,
            cfg.scenario.subgroups) == ("airplane", "sketch", "column")
    space = load_space(cfg.search.space, cfg)
    assert space.source.endswith("search_spaces/embedded.yaml")  # the default recipe's
    # The space it had before is still shipped, and valid against this config.
    assert load_space("cifar10-styles", cfg).source.endswith("search_spaces/cifar10-styles.yaml")


def test_style_scenario_runs_end_to_end_with_a_tiny_clip(small_cifar, tmp_path, monkeypatch):
    import open_clip
    from safetensors.torch import save_file

    import distforget.model  # noqa: F401  (registers DF-RN-Tiny-32 with open_clip)
    from distforget.unlearn import unlearn

    monkeypatch.setenv("DISTFORGET_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    weights = tmp_path / "tiny.safetensors"
    save_file(open_clip.create_model("DF-RN-Tiny-32").state_dict(), str(weights))
    manifest = styles.write_manifest(styles.build_styles(small_cifar, ["photo", "sketch",
                                                                       "grayscale"]),
                                     tmp_path / "styled.parquet")
    cfg = load_config(REPO / "configs" / "cifar10-styles.yaml", [
        f"data.path={manifest}", f"model.pretrained={weights}", "forget.epochs=1",
        "forget.fisher_samples=4", "forget.batch_size=8", "remind.epochs=1",
        "remind.batch_size=8", "remind.bn_align_images=0", "restore.grid=[0.0, 1.0]"])
    logs = []
    [record] = unlearn(cfg, ["three_stage"], device=torch.device("cpu"), out_dir=None,
                       log=logs.append)
    for key in ("forget_acc", "retain_acc", "zeroshot_acc", "base_forget_acc"):
        assert 0.0 <= record[key] <= 1.0, key
    assert any("forget airplane/sketch" in line for line in logs)
    # 8 training sketches of airplanes: a fifth to calibration, the rest forgotten.
    assert any("'forget_train': 6" in line and "'calib_forget': 2" in line for line in logs)
