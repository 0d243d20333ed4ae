"""The retrain reference: the small CLIP pretrained again without the forget subgroup."""

import json

import numpy as np
import pytest

from distforget.config import load_config, replace
from distforget.data.scenario import SPLITS, build_scenario, forget_mask
from distforget.data.load import load_data
from distforget.errors import ConfigError
from distforget.retrain import check_retrain, gap_to_retrain, target_note


def _colour_embed(images: np.ndarray) -> np.ndarray:
    """A stand-in image embedding: mean colour (k-means then finds the colour subgroups)."""
    return np.asarray(images, dtype=np.float64).reshape(len(images), -1, 3).mean(1) + 1.0


@pytest.mark.parametrize("rule", ["column", "kmeans"])
def test_forget_mask_holds_every_forget_image_and_no_retained_one(tiny_cfg, rule):
    data = load_data(tiny_cfg.data)
    scenario_cfg = tiny_cfg.scenario if rule == "column" else replace(
        tiny_cfg, {"scenario.subgroups": "kmeans", "scenario.forget_subgroup": "k0"}).scenario
    embed = _colour_embed if rule == "kmeans" else None
    mask = forget_mask(data, scenario_cfg, embed)
    scenario = build_scenario(data, scenario_cfg, embed=embed)
    rows = {name: scenario.splits[name].indices for name in SPLITS}
    for name in ("forget_train", "calib_forget", "val_forget", "test_forget"):
        assert mask[rows[name]].all(), name
    for name in ("retain_train", "calib_retain", "val_retain", "test_retain", "val_zeroshot",
                 "test_zeroshot"):
        assert not mask[rows[name]].any(), name
    g = tiny_cfg.data.generated  # one colour subgroup of one class: train + test images
    assert mask.sum() == g.train_per_subgroup + g.test_per_subgroup


def test_retrain_is_refused_for_weights_distforget_did_not_pretrain(tmp_path, capsys):
    from distforget.unlearn import main

    with pytest.raises(ConfigError, match="method retrain needs model.pretrained: embedded"):
        check_retrain(load_config(None, {"model.pretrained": "openai",
                                         "model.name": "ViT-B-32"}))
    assert main(["--method", "retrain", "model.pretrained=openai", "model.name=ViT-B-32",
                 f"output.storage={tmp_path}"]) == 2
    assert "method retrain needs model.pretrained: embedded" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.slow  # pretrains the retrain reference from scratch
def test_unlearn_retrains_without_the_forget_subgroup_and_reports_the_gap(tiny_cfg,
                                                                          tiny_prepared, cpu,
                                                                          tmp_path):
    from distforget.unlearn import unlearn

    logs: list[str] = []
    records = unlearn(tiny_cfg, ["base", "retrain"], device=cpu, out_dir=tmp_path,
                      prepared=tiny_prepared, log=logs.append)
    base, ref = records
    g = tiny_cfg.data.generated
    assert ref["method"] == "retrain" and ref["retrain_excluded"] == g.train_per_subgroup
    assert ref["retrain_images"] == 8 * 3 * g.train_per_subgroup - g.train_per_subgroup
    assert any(line.startswith("pretraining") and "(24 left out)" in line for line in logs)
    assert ref["gap_to_retrain"] == 0.0
    assert ref["target_note"] == target_note(ref, tiny_cfg.search.target)
    assert (ref["target_note"] is not None) == any(line.startswith("note: the retrained model")
                                                   for line in logs)
    expected = np.mean([abs(base[k] - ref[k]) for k in ("forget_acc", "retain_acc",
                                                        "zeroshot_acc")])
    assert base["gap_to_retrain"] == pytest.approx(expected)
    saved = json.loads((tmp_path / "retrain" / "distforget.json").read_text())
    assert saved["model"]["weights"].startswith("retrain:")
    # Cached: a second run pretrains nothing.
    logs.clear()
    (again,) = unlearn(tiny_cfg, ["retrain"], device=cpu, out_dir=None, prepared=tiny_prepared,
                       log=logs.append)
    assert not any(line.startswith("pretraining") for line in logs)
    assert again["forget_acc"] == ref["forget_acc"]


def test_gap_prefers_test_values_when_both_records_have_them():
    a = {"forget_acc": 0.0, "retain_acc": 1.0, "zeroshot_acc": 1.0,
         "test_forget_acc": 0.3, "test_retain_acc": 0.9, "test_zeroshot_acc": 0.9}
    b = {"forget_acc": 0.0, "retain_acc": 1.0, "zeroshot_acc": 1.0,
         "test_forget_acc": 0.0, "test_retain_acc": 0.9, "test_zeroshot_acc": 0.9}
    assert gap_to_retrain(a, b) == pytest.approx(0.1)
    assert gap_to_retrain({k: a[k] for k in ("forget_acc", "retain_acc", "zeroshot_acc")},
                          b) == 0.0


def test_the_note_names_each_target_bound_the_retrained_model_misses_on_validation():
    target = "forget_acc<=0.05, retain_acc>=0.9*base, zeroshot_acc>=0.95*base"
    base = {"base_forget_acc": 1.0, "base_retain_acc": 0.6, "base_zeroshot_acc": 0.8}
    # Validation misses forget and zero-shot accuracy; test values would meet all (unread).
    kept = {"forget_acc": 0.965, "retain_acc": 0.7, "zeroshot_acc": 0.7, **base,
            "test_forget_acc": 0.0, "test_retain_acc": 0.7, "test_zeroshot_acc": 0.8}
    note = target_note(kept, target)
    assert note is not None and "forget_acc 0.965 > 0.050 (by 0.915)" in note
    assert "zeroshot_acc 0.700 < 0.760 (by 0.060)" in note and "retain_acc 0.700" not in note
    forgot = {**kept, "forget_acc": 0.02, "zeroshot_acc": 0.78}
    assert target_note(forgot, target) is None
    assert target_note(kept, "retain_acc>=0.5") is None


def test_method_lists():
    from distforget.config import BASELINES
    from distforget.unlearn import parse_methods

    assert parse_methods("all,retrain") == ["three_stage", *BASELINES, "base", "retrain"]
    assert parse_methods("retrain, ft,ft") == ["retrain", "ft"]
    with pytest.raises(ConfigError, match="--method 'retrian'"):
        parse_methods("three_stage,retrian")


def test_a_search_space_cannot_search_retrain(tmp_path):
    from distforget.search_space import load_space

    space = tmp_path / "space.yaml"
    space.write_text("method: retrain\nparams:\n  pretrain.lr: {type: float, low: 1.0e-4, "
                     "high: 1.0e-3}\n")
    with pytest.raises(ConfigError, match="method 'retrain' is not one of"):
        load_space(str(space))
