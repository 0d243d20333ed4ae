import numpy as np
import pandas as pd
import pytest

from distforget.config import DataConfig, GeneratedConfig, ScenarioConfig
from distforget.data.scenario import SPLITS, build_scenario, kmeans_subgroups
from distforget.data.load import load_data
from distforget.data.sources import ImageTable, from_arrays
from distforget.errors import DataError


@pytest.fixture(scope="module")
def shapes(cache_dir):
    return load_data(DataConfig(generated=GeneratedConfig(train_per_subgroup=20,
                                                          test_per_subgroup=12)), cache_dir)


def test_splits_are_disjoint_held_out_and_labelled(shapes):
    sc = build_scenario(shapes, ScenarioConfig())
    s = sc.splits
    rows = {k: set(v.indices.tolist()) for k, v in s.items()}
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not rows[a] & rows[b], (a, b)
    table = shapes.table
    sub = table["subgroup"].to_numpy()
    cls = table["class_name"].to_numpy()
    split = table["split"].to_numpy()
    assert set(sub[s["forget_train"].indices]) == {"red"}
    assert set(cls[s["forget_train"].indices]) == {"circle"}
    assert set(sub[s["retain_train"].indices]) == {"green", "blue"}
    assert set(split[s["val_forget"].indices]) == set(split[s["test_forget"].indices]) == {"test"}
    assert set(split[s["calib_forget"].indices]) == {"train"}
    assert set(cls[s["val_zeroshot"].indices]).isdisjoint({"circle"})
    assert sc.zeroshot_classes == tuple(c for c in shapes.classes if c != "circle")
    # Labels are the class ids of the head.
    assert np.array_equal(s["val_retain"].labels,
                          [sc.classes.index(c) for c in cls[s["val_retain"].indices]])
    # The held-out images of each set are divided in half: validation and test.
    for name in ("forget", "retain", "zeroshot"):
        assert abs(len(s[f"val_{name}"]) - len(s[f"test_{name}"])) <= 1
    assert len(s["calib_forget"]) == round(0.2 * 20)


def test_splits_are_reproducible_and_seeded(shapes):
    a = build_scenario(shapes, ScenarioConfig())
    b = build_scenario(shapes, ScenarioConfig())
    c = build_scenario(shapes, ScenarioConfig(seed=1))
    assert a.fingerprint == b.fingerprint
    assert all(np.array_equal(a.splits[k].indices, b.splits[k].indices) for k in SPLITS)
    assert a.splits["forget_train"].hash != c.splits["forget_train"].hash


def test_splits_do_not_depend_on_row_order(shapes):
    order = np.random.default_rng(0).permutation(len(shapes.table))
    shuffled = ImageTable(np.asarray(shapes.images)[order],
                          shapes.table.iloc[order].reset_index(drop=True))
    a = build_scenario(shapes, ScenarioConfig())
    b = build_scenario(shuffled, ScenarioConfig())
    assert all(a.splits[k].hash == b.splits[k].hash for k in SPLITS)


def test_whole_class_forgetting_and_retain_classes(shapes):
    sc = build_scenario(shapes, ScenarioConfig(forget_subgroup=None,
                                               retain_classes=("square", "star")))
    cls = shapes.table["class_name"].to_numpy()
    assert set(cls[sc.splits["forget_train"].indices]) == {"circle"}
    assert set(cls[sc.splits["retain_train"].indices]) == {"square", "star"}
    assert "square" not in sc.zeroshot_classes and "triangle" in sc.zeroshot_classes
    with pytest.raises(DataError, match="needs scenario.retain_classes"):
        build_scenario(shapes, ScenarioConfig(forget_subgroup=None))


@pytest.mark.parametrize("cfg, message", [
    (ScenarioConfig(forget_class="circel"), "forget_class 'circel' is not a class of the data "
                                            "(did you mean 'circle'?)"),
    (ScenarioConfig(forget_subgroup="rde"), "forget_subgroup 'rde' is not a subgroup of class "
                                            "'circle' (did you mean 'red'?)"),
    (ScenarioConfig(retain_classes=("circle",)), "contains the forget class"),
    (ScenarioConfig(retain_classes=("hexagon",)), "retain_classes names 'hexagon'"),
    (ScenarioConfig(zeroshot_classes=("circle",)), "which a stage trains on"),
])
def test_bad_scenarios_are_refused(shapes, cfg, message):
    with pytest.raises(DataError) as err:
        build_scenario(shapes, cfg)
    assert message in str(err.value)


def test_an_empty_forget_set_is_refused(shapes):
    table = shapes.table.copy()
    table.loc[(table["subgroup"] == "red") & (table["split"] == "train"), "subgroup"] = "pink"
    with pytest.raises(DataError, match="forget set is empty or too small: 0 training images"):
        build_scenario(ImageTable(shapes.images, table), ScenarioConfig(forget_subgroup="red"))


def test_a_forget_image_labelled_as_retained_too_is_forgotten_or_refused(shapes):
    # The same picture under two subgroups (red and green circle): by default its retained
    # copy leaves the retain sets, and the retrain reference's forget mask holds both copies.
    from distforget.data.scenario import forget_mask

    images = np.asarray(shapes.images).copy()
    t = shapes.table
    red = np.flatnonzero(((t["subgroup"] == "red") & (t["class_name"] == "circle")).to_numpy())
    green = np.flatnonzero(((t["subgroup"] == "green") & (t["class_name"] == "circle")).to_numpy())
    copies = (green[0], green[-1])  # a training and a held-out green image
    images[list(copies)] = images[[red[0], red[-1]]]
    dup = from_arrays(images, t.drop(columns=["sha"]))
    plain, sc = build_scenario(shapes, ScenarioConfig()), build_scenario(dup, ScenarioConfig())
    assert sc.shared_with_forget == 2 and plain.shared_with_forget == 0
    retained = np.concatenate([sc.splits[k].indices for k in SPLITS if "retain" in k])
    assert not np.isin(list(copies), retained).any()
    forgotten = np.concatenate([sc.splits[k].indices for k in SPLITS if "forget" in k])
    assert np.isin([red[0], red[-1]], forgotten).all()
    assert sum(len(sc.splits[k]) for k in SPLITS if "retain" in k) == \
        sum(len(plain.splits[k]) for k in SPLITS if "retain" in k) - 2
    mask = forget_mask(dup, ScenarioConfig())
    assert mask[list(copies)].all() and mask.sum() == forget_mask(shapes, ScenarioConfig()).sum() + 2

    with pytest.raises(DataError, match="forget and retain sets overlap: 2 images .*"
                                        "shared_images: forget leaves"):
        build_scenario(dup, ScenarioConfig(shared_images="error"))


def test_data_without_splits_is_held_out_by_content_hash(shapes):
    table = shapes.table.assign(split=None)
    data = ImageTable(shapes.images, table)
    sc = build_scenario(data, ScenarioConfig(holdout_fraction=0.4))
    n_eval = sum(len(sc.splits[k]) for k in ("val_forget", "val_retain", "test_forget",
                                              "test_retain"))
    n_train = sum(len(sc.splits[k]) for k in ("forget_train", "retain_train", "calib_forget",
                                                 "calib_retain"))
    assert 0.25 < n_eval / (n_eval + n_train) < 0.55
    again = build_scenario(data, ScenarioConfig(holdout_fraction=0.4))
    assert sc.fingerprint == again.fingerprint


def test_kmeans_rule_is_deterministic_and_named_by_size():
    rng = np.random.default_rng(0)
    centres = np.array([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]])
    sizes = [30, 20, 10]
    emb = np.concatenate([c + rng.normal(0, 0.3, (n, 3)) for c, n in zip(centres, sizes)])
    shas = np.array([f"{i:04d}" for i in range(len(emb))], dtype=object)
    fit = np.ones(len(emb), bool)
    a = kmeans_subgroups(emb, fit, shas, 3, seed=0)
    b = kmeans_subgroups(emb, fit, shas, 3, seed=0)
    assert list(a) == list(b)
    assert list(a[:30]) == ["k0"] * 30 and list(a[30:50]) == ["k1"] * 20
    assert list(a[50:]) == ["k2"] * 10


def test_kmeans_subgroups_when_the_data_has_none(shapes):
    table = shapes.table.assign(subgroup=None)
    data = ImageTable(shapes.images, table)

    def embed(images):  # mean colour: separates the colour subgroups
        return images.reshape(len(images), -1, 3).mean(axis=1)

    sc = build_scenario(data, ScenarioConfig(forget_subgroup="k0", num_subgroups=3), embed=embed)
    assert sc.subgroups == ("k0", "k1", "k2") and sc.subgroup_rule.startswith("kmeans(k=3")
    forget_true = table["subgroup"].to_numpy()  # all None: use the generated colours instead
    colours = shapes.table["subgroup"].to_numpy()[sc.splits["forget_train"].indices]
    # One colour dominates the forgotten cluster.
    assert pd.Series(colours).value_counts(normalize=True).iloc[0] > 0.8
    assert forget_true[0] is None
    with pytest.raises(DataError, match="needs the base model's image embeddings"):
        build_scenario(data, ScenarioConfig(forget_subgroup="k0"))


def test_validation_and_test_are_divided_by_content_and_seed(shapes):
    a = build_scenario(shapes, ScenarioConfig())
    shuffled_order = np.random.default_rng(1).permutation(len(shapes.table))
    shuffled = ImageTable(np.asarray(shapes.images)[shuffled_order],
                          shapes.table.iloc[shuffled_order].reset_index(drop=True))
    b = build_scenario(shuffled, ScenarioConfig())
    shas = {k: set(shapes.table["sha"].to_numpy()[a.splits[k].indices]) for k in SPLITS}
    shas_b = {k: set(shuffled.table["sha"].to_numpy()[b.splits[k].indices]) for k in SPLITS}
    assert shas == shas_b  # same images on each side, whatever the row order
    c = build_scenario(shapes, ScenarioConfig(seed=1))
    shas_c = set(shapes.table["sha"].to_numpy()[c.splits["test_zeroshot"].indices])
    assert shas_c != shas["test_zeroshot"]
    more = build_scenario(shapes, ScenarioConfig(test_fraction=0.6))
    assert len(more.splits["test_retain"]) > len(more.splits["val_retain"])


def test_too_few_held_out_images_for_validation_and_test_is_refused(shapes):
    # 12 held-out red circles: a test fraction of 0.7 leaves 4 for validation.
    with pytest.raises(DataError, match=r"forget set .*12 held out gives 4 validation and 8 test "
                                        r"images .*at least 5"):
        build_scenario(shapes, ScenarioConfig(test_fraction=0.7))


def test_pretraining_and_scenarios_hold_out_the_same_images_without_a_split_column(shapes):
    from distforget.pretraining import split_rows

    data = ImageTable(shapes.images, shapes.table.assign(split=None))
    train_rows, held_rows = split_rows(data, 0.4)
    pretrained_on = set(data.table["sha"].to_numpy()[train_rows])
    for seed in (0, 1, 2):
        sc = build_scenario(data, ScenarioConfig(holdout_fraction=0.4, seed=seed))
        for name in SPLITS:
            if name.startswith(("val_", "test_")):
                held = set(data.table["sha"].to_numpy()[sc.splits[name].indices])
                assert not held & pretrained_on, (seed, name)
