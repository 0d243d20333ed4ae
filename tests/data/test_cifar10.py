"""``data.format: cifar10`` in a user's clone (torchvision's download into the cache) and in the
developers' workspace (the local Parquet copy as ``data.path``), and the ready configs."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from distforget.config import DataConfig, load_config
from distforget.data import load, sources, styles
from distforget.data.cifar10 import CLASSES
from distforget.data.load import load_data
from distforget.errors import DataError
from tests.factories import cifar_dir, cifar_frame

REPO = Path(__file__).resolve().parents[2]
READY = sorted((REPO / "configs").glob("cifar10*.yaml"))


@pytest.fixture()
def no_download(monkeypatch):
    def refuse(root):
        raise AssertionError(f"tried to download CIFAR-10 into {root}")

    monkeypatch.setattr(load, "read_torchvision_cifar10", refuse)


def fake_torchvision(monkeypatch, calls):
    def read(root):
        calls.append(Path(root))
        table = pd.DataFrame({"class_name": ["cat", "ship", "cat", "ship"],
                              "split": ["train", "train", "test", "test"],
                              "source": [f"cifar10/x/{i:05d}" for i in range(4)]})
        images = np.arange(4 * 32 * 32 * 3, dtype=np.uint64).reshape(4, 32, 32, 3) % 251
        return sources.from_arrays(images.astype(np.uint8), table)

    monkeypatch.setattr(load, "read_torchvision_cifar10", read)


@pytest.mark.parametrize("path", READY, ids=lambda p: p.name)
def test_ready_configs_need_nothing_outside_a_clone(path):
    cfg = load_config(path)
    text = path.read_text()
    assert "shared/data" not in "\n".join(line for line in text.splitlines()
                                          if not line.lstrip().startswith("#"))
    if path.name != "cifar10-styles.yaml":  # the styled manifest is made by the user first
        assert (cfg.data.format, cfg.data.path) == ("cifar10", None)


def test_without_a_path_cifar10_is_downloaded_into_the_cache(tmp_path, monkeypatch):
    calls = []
    fake_torchvision(monkeypatch, calls)
    data = load_data(DataConfig(format="cifar10"), tmp_path / "cache")
    assert calls == [tmp_path / "cache" / "cifar10"]
    assert data.images.shape == (4, 32, 32, 3) and data.has_splits


def test_a_folder_of_torchvision_files_is_the_download_root(tmp_path, monkeypatch):
    calls = []
    fake_torchvision(monkeypatch, calls)
    (tmp_path / "tv").mkdir()
    load_data(DataConfig(format="cifar10", path=str(tmp_path / "tv")), tmp_path / "cache")
    assert calls == [tmp_path / "tv"]


def test_a_parquet_copy_as_path_is_read_without_the_network(tmp_path, no_download):
    folder = tmp_path / "cifar10"
    folder.mkdir()
    cifar_frame("train", 2).to_parquet(folder / "train.parquet")
    cifar_frame("test", 1).to_parquet(folder / "test.parquet")
    data = load_data(DataConfig(format="cifar10", path=str(folder)), tmp_path / "cache")
    assert data.classes == tuple(sorted(CLASSES))
    assert data.table["split"].value_counts().to_dict() == {"train": 20, "test": 10}


def test_the_shared_copy_is_the_override_the_tests_use(no_download, tmp_path):
    copy = cifar_dir()
    cfg = load_config(REPO / "configs" / "cifar10.yaml", [f"data.path={copy}"])
    assert cfg.data.format == "cifar10" and Path(cfg.data.path) == copy
    from distforget.data.cifar10 import holds_parquet

    assert holds_parquet(cfg.data.path)


def test_a_parquet_manifest_of_other_classes_is_not_taken_for_cifar10(tmp_path, no_download):
    cifar_frame("train", 2, ["cat", "dog"]).to_parquet(tmp_path / "pets.parquet")
    with pytest.raises(DataError, match=r"classes \(cat, dog\) are not CIFAR-10's.*"
                                        r"data.format: parquet"):
        load_data(DataConfig(format="cifar10", path=str(tmp_path / "pets.parquet")),
                  tmp_path / "cache")


def test_styles_reads_cifar10_through_torchvision(tmp_path, monkeypatch):
    calls = []
    fake_torchvision(monkeypatch, calls)
    monkeypatch.setenv("DISTFORGET_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # no file or folder named cifar10 here
    originals = styles.read_originals("cifar10")
    assert calls == [tmp_path / "cache" / "cifar10"]
    assert list(originals["class_name"]) == ["cat", "ship", "cat", "ship"]
    assert list(originals["split"]) == ["train", "train", "test", "test"]
    assert all(blob[:8] == b"\x89PNG\r\n\x1a\n" for blob in originals["blob"])
