"""The three-stage method's metrics after each stage and for each soup, and why that alpha."""

import json

import pytest

from distforget.config import RestoreConfig, replace
from distforget.restore import explain_choice
from distforget.trial import StageCache, evaluate_recipes
from tests.factories import TINY
from tests.test_trial import Counting, trial


def test_diagnostics_measure_each_stage_and_every_grid_soup(tiny_prepared, tiny_cfg, cpu):
    cache = StageCache()
    c = Counting(tiny_prepared, cache, cpu)
    plain = trial(tiny_prepared, tiny_cfg, c, cache)
    assert plain.diagnostics == {} and c.evaluations[-1] == ("val", 1)

    c = Counting(tiny_prepared, cache, cpu)
    result = trial(tiny_prepared, tiny_cfg, c, cache, diagnose=True)
    assert c.stages == []  # evaluations only: the stages come from the cache
    d = result.diagnostics
    grid = list(tiny_cfg.restore.grid)
    assert [s["alpha"] for s in d["soups"]] == grid
    # Chosen point + after forget + the grid's other points, in one evaluation call.
    assert c.evaluations[-1] == ("val", 1 + len(grid))
    for s in d["soups"]:
        assert {"forget_acc", "retain_acc", "zeroshot_acc", "calib_forget_acc",
                "calib_retain_acc"} <= set(s)
    chosen = next(s for s in d["soups"] if s["alpha"] == d["alpha"])
    assert d["alpha"] == result.recipe.alpha
    assert chosen["forget_acc"] == result.metrics["forget_acc"]
    assert f"alpha {d['alpha']:g}" in d["why"]
    # After forget is the forgotten model itself; after remind the reminded one (alpha 1).
    forgot = result.recipe.with_soup(1.0, 1.0)
    (direct,) = evaluate_recipes(tiny_prepared, cache, [forgot], "val", cpu)
    assert d["after_forget"] == direct
    at_one = next(s for s in d["soups"] if s["alpha"] == 1.0)
    assert d["after_remind"] == {k: v for k, v in at_one.items()
                                 if k not in ("alpha", "beta") and not k.startswith("calib_")}


def test_a_fixed_soup_with_a_sweep_reuses_its_points(tiny_prepared, tiny_cfg, cpu):
    cache = StageCache()
    cfg = replace(tiny_cfg, {"restore.choose": "fixed", "restore.alpha": 0.5})
    c = Counting(tiny_prepared, cache, cpu)
    result = trial(tiny_prepared, cfg, c, cache, sweep=[(1.0, 0.0)], diagnose=True)
    d = result.diagnostics
    # The chosen 0.5 and the swept 1.0 are measured once; only "after forget" is added.
    assert c.evaluations[-1] == ("val", 3)
    assert [s["alpha"] for s in d["soups"]] == [0.5, 1.0]
    assert d["why"].startswith("restore.choose is fixed: alpha 0.5, beta 0 as set")


def test_the_reason_names_the_rule_that_chose():
    cfg = RestoreConfig(forget_target=0.05)
    rows = [{"alpha": 0.0, "calib_forget_acc": 0.9, "calib_retain_acc": 0.95},
            {"alpha": 0.5, "calib_forget_acc": 0.04, "calib_retain_acc": 0.90},
            {"alpha": 1.0, "calib_forget_acc": 0.0, "calib_retain_acc": 0.85}]
    why = explain_choice(cfg, 0.5, 0.0, rows)
    assert "best calibration retain accuracy (0.900)" in why and "2 of 3" in why
    missed = [dict(r, calib_forget_acc=r["calib_forget_acc"] + 0.5) for r in rows]
    why = explain_choice(cfg, 1.0, 0.0, missed)
    assert why.startswith("alpha 1: no grid alpha's calibration forget accuracy is <= 0.05;")
    assert "comes nearest (forget 0.500" in why
    why = explain_choice(cfg, 0.5, 0.0, rows, retain_bound=0.92)  # 0.5 is 0.02 short: the nearest
    assert "retain accuracy >= 0.920 (0.9 x the base model's)" in why
    assert "comes nearest (forget 0.040, retain 0.900)" in why


def test_unlearn_prints_and_stores_the_diagnostics(tmp_path, monkeypatch, capsys):
    from distforget.unlearn import main

    monkeypatch.chdir(tmp_path)
    small = [f"{k}={json.dumps(v)}" for k, v in TINY.items()]
    assert main(["--method", "three_stage", *small, "--out", ""]) == 0
    out = capsys.readouterr().out
    for text in ("after forget", "after remind", "soup alpha 0.5", "<- chosen", "chosen: alpha"):
        assert text in out
    (record,) = json.loads((tmp_path / "distforget_runs" / "embedded-default" /
                            "unlearn.json").read_text())
    d = record["diagnostics"]
    assert d["alpha"] == record["alpha"] and len(d["soups"]) == len(TINY["restore.grid"])
    assert set(d) == {"after_forget", "after_remind", "soups", "alpha", "beta", "why", "notes"}


def test_the_notes_name_the_stage_that_fell_short(tiny_cfg):
    from distforget.trial import Recipe, diagnose_soups

    forgot = {"forget_acc": 0.0, "retain_acc": 0.5, "zeroshot_acc": 0.5}
    restored = {"forget_acc": 0.9, "retain_acc": 0.9, "zeroshot_acc": 0.9}
    points = [Recipe("three_stage", (), 1.0, 1.0), Recipe("three_stage", (), 1.0, 0.0),
              Recipe("three_stage", (), 0.0, 0.0)]
    measured = [forgot, restored, {**restored, "forget_acc": 0.95}]
    # The paper's remind stage (no forget term: configs/presets/paper.yaml).
    cfg = replace(tiny_cfg, {"restore.choose": "fixed", "restore.alpha": 0.0,
                             "remind.forget_weight": 0.0})
    d = diagnose_soups(cfg, points[2], [], points, measured)
    assert "remind stage brought forget_acc back to 0.900" in d["notes"][0]
    assert "remind.forget_weight > 0" in d["notes"][0] and "base model" in d["notes"][1]
    d = diagnose_soups(replace(cfg, {"remind.forget_weight": 10.0,
                                     "remind.forget_loss": "margin"}), points[2], [], points,
                       measured)
    assert "remind.forget_weight 10 (margin) did not keep it away" in d["notes"][0]
    d = diagnose_soups(cfg, points[2], [], points, [restored, restored, restored])
    assert "the forget stage left forget_acc at 0.900" in d["notes"][0]
