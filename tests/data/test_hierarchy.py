"""The class-hierarchy manifest builder."""

import pandas as pd
import pytest

from distforget.config import load_config
from distforget.data.hierarchy import CIFAR10_GROUPS, build_hierarchy, main, parse_groups
from distforget.data.scenario import build_scenario
from distforget.data.load import load_data
from distforget.errors import ConfigError, DataError
from tests.factories import cifar_frame


@pytest.fixture(scope="module")
def cifar_folder(tmp_path_factory):
    """A folder of manifests named by split, as the shared CIFAR-10 copy is."""
    folder = tmp_path_factory.mktemp("cifar-split-files")
    cifar_frame("train", 12).to_parquet(folder / "train.parquet", index=False)
    cifar_frame("test", 10).to_parquet(folder / "test.parquet", index=False)
    return folder


def test_cifar10_animals_become_subgroups_of_one_class(cifar_folder):
    frame = build_hierarchy(cifar_folder, CIFAR10_GROUPS)
    animals = frame[frame["class_name"] == "animal"]
    assert sorted(animals["subgroup"].unique()) == sorted(CIFAR10_GROUPS["animal"])
    assert sorted(frame["class_name"].unique()) == ["airplane", "animal", "automobile", "ship",
                                                    "truck"]
    assert frame.loc[frame["class_name"] != "animal", "subgroup"].isna().all()
    counts = frame.groupby("split").size().to_dict()
    assert counts == {"train": 120, "test": 100}  # split from the file names, every image kept
    source = pd.concat([pd.read_parquet(cifar_folder / f) for f in ("train.parquet",
                                                                    "test.parquet")])
    assert set(frame["image"].map(bytes)) == set(source["image"].map(bytes))  # bytes unchanged


def test_the_manifest_makes_the_suite_scenario(cifar_folder, tmp_path, cache_dir, capsys):
    out = tmp_path / "h.parquet"
    assert main(["--input", str(cifar_folder), "--out", str(out), "--per-class", "10"]) == 0
    assert f"wrote {out}: 200 images" in capsys.readouterr().out  # 10 classes x (10 + 10)
    cfg = load_config(None, {"data.format": "parquet", "data.path": str(out),
                             "scenario.forget_class": "animal",
                             "scenario.forget_subgroup": "dog"})
    data = load_data(cfg.data, cache_dir)
    scenario = build_scenario(data, cfg.scenario)
    assert scenario.subgroup_rule == "column" and "dog" in scenario.subgroups
    assert sorted(scenario.zeroshot_classes) == ["airplane", "automobile", "ship", "truck"]
    retained = data.table.iloc[scenario.splits["retain_train"].indices]
    assert set(retained["subgroup"]) == {"bird", "cat", "deer", "frog", "horse"}


def test_per_class_selection_is_seeded_and_stable(cifar_folder):
    a = build_hierarchy(cifar_folder, CIFAR10_GROUPS, per_class=3, seed=0)
    b = build_hierarchy(cifar_folder, CIFAR10_GROUPS, per_class=3, seed=0)
    c = build_hierarchy(cifar_folder, CIFAR10_GROUPS, per_class=3, seed=1)
    assert a.equals(b) and not a["path"].equals(c["path"])
    assert (a.groupby(["split", "class_name", "subgroup"], dropna=False).size() == 3).all()


def test_bad_groups_are_named(cifar_folder):
    with pytest.raises(DataError, match="'doggo'.*did you mean 'dog'"):
        build_hierarchy(cifar_folder, {"animal": ("cat", "doggo")})
    with pytest.raises(DataError, match="class 'cat' is in two groups"):
        build_hierarchy(cifar_folder, {"pets": ("cat",), "animal": ("cat", "dog")})
    with pytest.raises(DataError, match="group name 'ship' is also a class"):
        build_hierarchy(cifar_folder, {"ship": ("airplane", "truck")})
    with pytest.raises(ConfigError, match="expected NAME=CLASS"):
        parse_groups(["animal"])
    assert parse_groups(["v=airplane, ship", "a=cat"]) == {"v": ("airplane", "ship"),
                                                           "a": ("cat",)}
