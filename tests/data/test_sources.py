import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from distforget.config import DataConfig, GeneratedConfig
from distforget.data import load, sources
from distforget.data.load import load_data
from distforget.errors import DataError
from tests.factories import cifar_frame, write_image_folder


def test_parquet_manifest_reads_real_cifar_images(cifar_manifest, cache_dir):
    data = load_data(DataConfig(format="parquet", path=str(cifar_manifest)), cache_dir)
    table = data.table
    assert data.images.shape == (800, 32, 32, 3) and data.images.dtype == np.uint8
    assert set(table["split"]) == {"train", "test"}
    assert data.classes == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                            "horse", "ship", "truck")
    assert not data.has_subgroups
    # Decoded pixels equal PIL's decoding of the stored JPEG bytes.
    raw = pd.read_parquet(cifar_manifest)
    first = np.asarray(Image.open(io.BytesIO(raw["image"][0])).convert("RGB"))
    assert np.array_equal(data.images[0], first)


def test_folder_of_manifests_takes_the_split_from_the_file_name(tmp_path, cache_dir):
    cifar_frame("train", 3, ["cat", "dog"])[["image", "class_name"]].to_parquet(
        tmp_path / "train.parquet")
    cifar_frame("test", 2, ["cat", "dog"])[["image", "class_name"]].to_parquet(
        tmp_path / "test.parquet")
    data = load_data(DataConfig(format="parquet", path=str(tmp_path)), cache_dir)
    assert data.table["split"].value_counts().to_dict() == {"train": 6, "test": 4}


def test_decoding_happens_once_per_content(cifar_manifest, cache_dir, monkeypatch):
    cfg = DataConfig(format="parquet", path=str(cifar_manifest))
    first = load_data(cfg, cache_dir)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the content is cached")

    monkeypatch.setattr(sources, "decode_one", no_decoding)
    again = load_data(cfg, cache_dir)
    assert np.array_equal(np.asarray(first.images), np.asarray(again.images))
    assert first.fingerprint == again.fingerprint


def test_image_folder_with_and_without_subgroup_level(tmp_path, cache_dir):
    frame = cifar_frame("train", 4, ["cat", "ship"])
    write_image_folder(tmp_path / "flat", frame, "train")
    write_image_folder(tmp_path / "flat", cifar_frame("test", 2, ["cat", "ship"]), "test")
    flat = load_data(DataConfig(format="folder", path=str(tmp_path / "flat")), cache_dir)
    assert len(flat.table) == 12 and not flat.has_subgroups
    assert set(flat.table["class_name"]) == {"cat", "ship"}

    write_image_folder(tmp_path / "deep", frame, "train",
                       subgroup_of=lambda i, row: "day" if i % 2 else "night")
    deep = load_data(DataConfig(format="folder", path=str(tmp_path / "deep")), cache_dir)
    assert deep.has_subgroups
    assert deep.table.groupby("subgroup").size().to_dict() == {"day": 4, "night": 4}


def test_resizing_to_a_stored_size(tmp_path, cache_dir):
    folder = tmp_path / "train" / "cat"
    folder.mkdir(parents=True)
    Image.new("RGB", (60, 40), (200, 10, 10)).save(folder / "a.png")
    Image.new("RGB", (32, 32), (10, 200, 10)).save(folder / "b.png")
    with pytest.raises(DataError, match="a.png is 60x40, not square: set data.image_size"):
        load_data(DataConfig(format="folder", path=str(tmp_path)), cache_dir)
    data = load_data(DataConfig(format="folder", path=str(tmp_path), image_size=16), cache_dir)
    assert data.images.shape == (2, 16, 16, 3)
    assert tuple(data.images[0, 8, 8]) == (200, 10, 10)


def test_images_of_several_sizes_are_stored_at_the_models_input_size(tmp_path, cache_dir):
    folder = tmp_path / "train" / "cat"
    folder.mkdir(parents=True)
    Image.new("RGB", (24, 24), (200, 10, 10)).save(folder / "a.png")
    Image.new("L", (40, 40), 90).save(folder / "b.jpg")
    said = []
    data = load_data(DataConfig(format="folder", path=str(tmp_path)), cache_dir, model_size=20,
                     log=said.append)
    assert data.images.shape == (2, 20, 20, 3)
    assert tuple(data.images[0, 10, 10]) == (200, 10, 10)
    assert len(said) == 1 and "b.jpg is 40x40 but" in said[0] and "stored at 20x20" in said[0]
    # One square size is kept as it is, and data.image_size wins over the model's size.
    (folder / "b.jpg").unlink()
    said.clear()
    native = load_data(DataConfig(format="folder", path=str(tmp_path)), cache_dir,
                       model_size=20, log=said.append)
    assert native.images.shape == (1, 24, 24, 3) and said == []
    chosen = load_data(DataConfig(format="folder", path=str(tmp_path), image_size=16), cache_dir,
                       model_size=20)
    assert chosen.images.shape == (1, 16, 16, 3)


def test_images_of_several_sizes_are_read_and_hashed_once_per_load(tmp_path, cache_dir,
                                                                   monkeypatch):
    folder = tmp_path / "train" / "cat"
    folder.mkdir(parents=True)
    for name, size in (("a.png", 24), ("b.png", 40), ("c.png", 24), ("d.png", 30)):
        Image.new("RGB", (size, size), (200, 10, 10)).save(folder / name)
    hashed, decoded = [], []
    monkeypatch.setattr(load, "sha_of", lambda b: hashed.append(b) or sources.sha_of(b))
    real_decode = sources.decode_one
    monkeypatch.setattr(sources, "decode_one",
                        lambda data, source, size: decoded.append((source, size))
                        or real_decode(data, source, size))
    cfg = DataConfig(format="folder", path=str(tmp_path))
    said = []
    first = load_data(cfg, cache_dir, model_size=20, log=said.append)
    # The native decode stops at b.png, the one out of line; then every image once at 20 px.
    assert len(hashed) == 4
    assert [s for _, s in decoded] == [None, None, 20, 20, 20, 20]
    hashed.clear(), decoded.clear()
    again = load_data(cfg, cache_dir, model_size=20, log=said.append)
    assert len(hashed) == 4 and decoded == []  # straight to the 20 px cache
    assert np.array_equal(first.images, again.images) and first.images.shape == (4, 20, 20, 3)
    assert len(said) == 2 and said[0] == said[1] and "b.png is 40x40 but" in said[0]
    # Without a model size the error stands, on a later load too.
    with pytest.raises(sources.MixedSizes, match="b.png is 40x40 but"):
        load_data(cfg, cache_dir)


def test_the_mixed_size_error_survives_pickling():
    import pickle

    err = pickle.loads(pickle.dumps(sources.MixedSizes("image x.png is 3x2, not square")))
    assert str(err) == ("image x.png is 3x2, not square: set data.image_size to store every "
                        "image at one square size")


def test_image_folder_without_a_split_level(tmp_path, cache_dir):
    frame = cifar_frame("train", 6, ["cat", "ship"])
    write_image_folder(tmp_path / "mixed", frame, "train")
    write_image_folder(tmp_path / "flat", frame, "",
                       subgroup_of=lambda i, row: "day" if i % 2 else "night")
    flat = load_data(DataConfig(format="folder", path=str(tmp_path / "flat")), cache_dir)
    assert not flat.has_splits and flat.table["split"].isna().all()
    assert set(flat.table["class_name"]) == {"cat", "ship"}
    assert flat.table.groupby(["class_name", "subgroup"]).size().to_dict() == {
        ("cat", "day"): 3, ("cat", "night"): 3, ("ship", "day"): 3, ("ship", "night"): 3}
    write_image_folder(tmp_path / "cased", frame, "Train")
    write_image_folder(tmp_path / "cased", cifar_frame("test", 2, ["cat", "ship"]), "Val")
    cased = load_data(DataConfig(format="folder", path=str(tmp_path / "cased")), cache_dir)
    assert cased.table["split"].value_counts().to_dict() == {"train": 12, "val": 4}
    write_image_folder(tmp_path / "mixed", frame, "dog")  # a class folder beside a split folder
    with pytest.raises(DataError, match=r"mixes split folders \(train\) with other folders "
                                        r"\('dog'\)"):
        load_data(DataConfig(format="folder", path=str(tmp_path / "mixed")), cache_dir)


def test_manifest_errors_name_the_problem(tmp_path, cache_dir):
    pd.DataFrame({"image": [b"x"], "label": [1]}).to_parquet(tmp_path / "m.parquet")
    with pytest.raises(DataError, match="no column 'class_name'"):
        load_data(DataConfig(format="parquet", path=str(tmp_path / "m.parquet")), cache_dir)
    pd.DataFrame({"class_name": ["cat"], "label": [1]}).to_parquet(tmp_path / "n.parquet")
    with pytest.raises(DataError, match="needs a column 'image'"):
        load_data(DataConfig(format="parquet", path=str(tmp_path / "n.parquet")), cache_dir)
    with pytest.raises(DataError, match="no Parquet manifest there"):
        load_data(DataConfig(format="parquet", path=str(tmp_path / "missing.parquet")), cache_dir)
    with pytest.raises(DataError, match="data.path is required"):
        load_data(DataConfig(format="parquet"), cache_dir)


def test_corrupt_image_is_named_by_its_row(tmp_path, cache_dir):
    good = cifar_frame("train", 1, ["cat"])["image"].iloc[0]
    pd.DataFrame({"image": [good, b"\xff\xd8 not a jpeg"], "class_name": ["cat", "cat"]}) \
        .to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"image bad.parquet#row1 cannot be decoded"):
        load_data(DataConfig(format="parquet", path=str(tmp_path / "bad.parquet")), cache_dir)


def test_generated_data_is_deterministic_and_labelled(cache_dir):
    from distforget.data.generated import COLOURS, SHAPES, generate

    a_img, a_tab = generate(train_per_subgroup=2, test_per_subgroup=1, image_size=32, seed=3)
    b_img, b_tab = generate(train_per_subgroup=2, test_per_subgroup=1, image_size=32, seed=3)
    c_img, _ = generate(train_per_subgroup=2, test_per_subgroup=1, image_size=32, seed=4)
    assert np.array_equal(a_img, b_img) and a_tab.equals(b_tab)
    assert not np.array_equal(a_img, c_img)
    assert len(a_img) == len(SHAPES) * len(COLOURS) * 3
    # Colour subgroups are visible in the pixels: red shapes are redder than blue ones.
    red = a_img[(a_tab["subgroup"] == "red").to_numpy()].reshape(-1, 3).astype(float)
    blue = a_img[(a_tab["subgroup"] == "blue").to_numpy()].reshape(-1, 3).astype(float)
    assert (red[:, 0] - red[:, 2]).mean() > (blue[:, 0] - blue[:, 2]).mean()
    data = load_data(DataConfig(generated=GeneratedConfig(train_per_subgroup=2,
                                                          test_per_subgroup=1)), cache_dir)
    assert data.has_subgroups and data.has_splits and data.classes == tuple(sorted(SHAPES))


def test_class_filter(cifar_manifest, cache_dir):
    data = load_data(DataConfig(format="parquet", path=str(cifar_manifest),
                                classes=("cat", "dog")), cache_dir)
    assert data.classes == ("cat", "dog") and len(data.images) == len(data.table) == 160
    with pytest.raises(DataError, match="data.classes names 'kat'"):
        load_data(DataConfig(format="parquet", path=str(cifar_manifest), classes=("kat",)),
                  cache_dir)


def test_torchvision_download_failure_is_a_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets

    class Offline:
        def __init__(self, *args, **kwargs):
            raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    with pytest.raises(DataError, match="could not be downloaded.*data.path to a Parquet copy"):
        load.read_torchvision_cifar10(tmp_path)
