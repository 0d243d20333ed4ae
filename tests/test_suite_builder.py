"""bench/suite.py's reading of finished runs: values, target, gap, tables, RESULTS.md section."""

import pytest

from bench.suite import (BEGIN, CHECKS, END, SCENARIOS, chosen_metrics, clip_rows,
                         comparison_rows, config_difference, config_path, difference_text,
                         earlier_runs, meets_target, recorded_minutes, scenario_rows, seed_rows,
                         space_difference, value, write_section)
from distforget.config import read_yaml

BASE = {"base_forget_acc": 0.9, "base_retain_acc": 0.8, "base_zeroshot_acc": 0.9}


def run(seed, f, r, z, retrain=None, **extra):
    return {"scenario": "embedded", "seed": seed, "status": "ok", "wall_s": 60.0,
            "metrics": {"forget_acc": f, "retain_acc": r, "zeroshot_acc": z, **BASE, **extra},
            **({"retrain": retrain} if retrain else {})}


@pytest.mark.parametrize("folder, names", [("suite", SCENARIOS), ("check", CHECKS)])
def test_suite_and_check_configs_set_only_the_allowed_sections(folder, names):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs" / folder
    assert {p.stem for p in root.glob("*.yaml")} == set(names)
    for path in root.glob("*.yaml"):
        assert config_path(path.stem) == path
        assert set(read_yaml(path)) <= {"data", "scenario", "model", "pretrain", "output"}, path


def test_test_values_win_over_validation_values():
    m = {"forget_acc": 0.0, "test_forget_acc": 0.1, "test_forget_acc_lo": 0.05,
         "test_forget_acc_hi": 0.2}
    assert value(m, "forget_acc") == (0.1, 0.05, 0.2, True)
    assert value({"forget_acc": 0.0}, "forget_acc") == (0.0, None, None, False)


def test_the_exported_point_is_judged_on_test_against_the_base_on_test():
    # best/distforget.json's layout: validation and test sections, the base model's in each.
    exported = {
        "validation": {"forget_acc": 0.0, "retain_acc": 0.80, "zeroshot_acc": 0.99},
        "test": {"test_forget_acc": 0.0, "test_retain_acc": 0.817, "test_zeroshot_acc": 0.964,
                 "test_retain_acc_lo": 0.70, "test_retain_acc_hi": 0.89},
        "base": {"validation": {"base_forget_acc": 0.93, "base_retain_acc": 0.85,
                                "base_zeroshot_acc": 0.98},
                 "test": {"test_base_forget_acc": 0.9, "test_base_retain_acc": 0.917,
                          "test_base_zeroshot_acc": 0.96}}}
    m = chosen_metrics(exported)
    assert value(m, "retain_acc") == (0.817, 0.70, 0.89, True)
    # 0.817 >= 0.9 x 0.85 (validation base) but < 0.9 x 0.917 (test base): missed on test.
    assert not meets_target(m)
    exported["test"]["test_retain_acc"] = 0.83
    assert meets_target(chosen_metrics(exported))


@pytest.mark.parametrize("f, r, z, ok", [
    (0.05, 0.72, 0.855, True),     # every bound exactly met
    (0.051, 0.72, 0.855, False),   # forget
    (0.0, 0.71, 0.9, False),       # retain < 0.9 x 0.8
    (0.0, 0.8, 0.85, False),       # zero-shot < 0.95 x 0.9
])
def test_the_target(f, r, z, ok):
    assert meets_target({"forget_acc": f, "retain_acc": r, "zeroshot_acc": z, **BASE}) is ok


def test_tables_over_seeds():
    ref = {"forget_acc": 0.0, "retain_acc": 0.8, "zeroshot_acc": 0.9}
    runs = [run(0, 0.0, 0.8, 0.9, retrain=ref), run(1, 0.3, 0.8, 0.9, retrain=ref),
            {"scenario": "embedded", "seed": 2, "status": "search failed", "wall_s": 30.0}]
    seeds = seed_rows(runs)
    assert list(seeds["target"].iloc[:2]) == ["yes", "no"]
    assert list(seeds["gap_to_retrain"].iloc[:2]) == ["0.000", "0.100"]
    assert seeds["retrain F / R / Z"].iloc[0] == "0.000 / 0.800 / 0.900"
    assert list(seeds["retrain target"].iloc[:2]) == ["yes", "yes"]
    (row,) = scenario_rows(runs).to_dict("records")
    assert row["target met"] == "1/3" and row["seeds"] == 3
    assert row["retrain meets target"] == "2/2"
    assert row["forget_acc"] == "0.150 (0.000-0.300)"
    assert row["gap to retrain"] == "0.050" and row["wall per seed"] == "0.8 min"
    assert row["base F / R / Z"] == "0.900 / 0.800 / 0.900"


def test_the_retrain_reference_is_judged_by_the_same_target_against_the_runs_base():
    # A reference that still names the forget images by their class misses the forget bound
    # on test, though its validation forget accuracy would meet it.
    kept = {"forget_acc": 0.0, "retain_acc": 0.8, "zeroshot_acc": 0.9,
            "test_forget_acc": 0.95, "test_retain_acc": 0.8, "test_zeroshot_acc": 0.9}
    runs = [run(0, 0.0, 0.8, 0.9, retrain=kept), run(1, 0.0, 0.8, 0.9)]
    assert list(seed_rows(runs)["retrain target"]) == ["no", "-"]
    (row,) = scenario_rows(runs).to_dict("records")
    assert row["retrain meets target"] == "0/1" and row["target met"] == "2/2 (every seed)"
    assert scenario_rows([run(0, 0.0, 0.8, 0.9)])["retrain meets target"].iloc[0] == "-"


def test_the_scenario_row_gives_the_base_models_mean_over_seeds():
    other = run(1, 0.0, 0.8, 0.9)
    other["metrics"].update(base_forget_acc=0.7, base_retain_acc=0.6, base_zeroshot_acc=0.8)
    (row,) = scenario_rows([run(0, 0.0, 0.8, 0.9), other]).to_dict("records")
    assert row["base F / R / Z"] == "0.800 / 0.700 / 0.850"


def test_the_section_is_replaced_in_place(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# results\n\n## 1. other\n\nkept\n")
    write_section(path, "first table")
    write_section(path, "second table")
    text = path.read_text()
    assert text.count(BEGIN) == 1 and "second table" in text and "first table" not in text
    assert text.startswith("# results\n\n## 1. other\n\nkept\n") and text.rstrip().endswith(END)


def test_reused_runs_count_with_their_recorded_search_and_retrain_times():
    runs = [{"wall_s": 90.0, "retrain_wall_s": 30.0, "reused": True}, {"wall_s": 60.0}]
    assert recorded_minutes(runs) == 3.0


def test_the_clip_table_reads_each_scenarios_pretraining_from_its_first_run(tmp_path):
    import json

    folder = tmp_path / "embedded-s0"
    folder.mkdir()
    pretrain = {"pretrain": {"epochs": 12}, "train_images": 3840, "heldout_images": 1440,
                "zeroshot_acc": 0.959, "wall_s": 80.6}
    (folder / "run.json").write_text(json.dumps({"prepared": {"pretrain": pretrain}}))
    runs = [run(0, 0.0, 0.8, 0.9, retrain={"retrain_pretrain_s": 70.2}),
            run(1, 0.0, 0.8, 0.9, retrain={"retrain_pretrain_s": 0.0})]
    (row,) = clip_rows(runs, tmp_path).to_dict("records")
    assert row == {"scenario": "embedded", "train images": 3840, "epochs": 12,
                   "zero-shot (held-out)": "0.959", "held-out images": 1440, "pretrain_s": 81,
                   "retrain pretrain_s": 70}
    assert clip_rows([{**runs[0], "scenario": "cifar10-cat"}], tmp_path).empty


def test_the_config_difference_names_changed_stage_keys_but_not_seeds_or_data():
    before = {"remind": {"epochs": 4, "lr": 1e-4, "seed": 0}, "data": {"path": "a"},
              "method": "three_stage", "search": {"num_trials": 16}}
    now = {"remind": {"epochs": 8, "lr": 1e-4, "seed": 2}, "data": {"path": "b"},
           "method": "three_stage", "search": {"num_trials": 16}}
    assert config_difference(now, before) == {"remind.epochs": (8, 4)}
    assert config_difference({**now, "method": "ft"}, now) == {"method": ("ft", "three_stage")}
    # A key the earlier run's config did not hold yet is said to be absent there.
    older = {**before, "search": {}}
    assert config_difference(now, older) == {"remind.epochs": (8, 4),
                                             "search.num_trials": (16, "absent")}


def test_the_space_difference_names_changed_space_entries_but_not_comments():
    before = ("# old comment\nmethod: three_stage\nparams:\n  forget.lr: {type: float, low: 0.1, "
              "high: 1.0}\nsweep:\n  restore.alpha: [0.4, 1.0]\n")
    now = before.replace("# old comment", "# another comment").replace("[0.4, 1.0]",
                                                                       "[0.4, 0.9, 1.0]")
    assert space_difference(now, before) == {"space.sweep.restore.alpha": ([0.4, 0.9, 1.0],
                                                                           [0.4, 1.0])}
    assert space_difference(before, before.replace("# old comment", "")) == {}
    # A block one space has and the other has not is said to be absent there.
    assert space_difference(before + "fixed:\n  restore.choose: fixed\n", before) == {
        "space.fixed.restore.choose": ("fixed", "absent")}


def test_keys_the_earlier_runs_predate_are_named_apart_from_changed_ones():
    diff = {"remind.epochs": (32, 16), "remind.lr_schedule": ("constant", "absent")}
    assert difference_text(diff) == ("they differ in `remind.epochs` 32 (before: 16); the "
                                     "earlier runs predate `remind.lr_schedule` constant")
    assert difference_text({"remind.lr_schedule": ("constant", "absent")}) == (
        "they differ in no stage or search key and no search-space entry; the earlier runs "
        "predate `remind.lr_schedule` constant")
    assert difference_text({}) == ("they differ in no stage or search key and no search-space "
                                   "entry")


def test_the_comparison_sets_each_scenario_beside_its_earlier_runs(tmp_path):
    import json

    now = [run(0, 0.0, 0.8, 0.9), run(1, 0.0, 0.6, 0.9)]
    before = [run(0, 0.2, 0.8, 0.9)]
    (row,) = comparison_rows(now, before).to_dict("records")
    assert row == {"scenario": SCENARIOS["embedded"][0],
                   "F / R / Z now": "0.000 / 0.700 / 0.900", "target met now": "1/2",
                   "F / R / Z before": "0.200 / 0.800 / 0.900", "target met before": "0/1"}
    folder = tmp_path / "embedded-s1"
    folder.mkdir()
    (folder / "suite.json").write_text(json.dumps(before[0]))
    assert earlier_runs(tmp_path, ["embedded", "cifar10-cat"], [0, 1, 2]) == before


def test_a_reused_run_without_a_retrain_reference_gets_one_and_keeps_its_search(
        tmp_path, monkeypatch):
    import json
    from types import SimpleNamespace

    import bench.suite as suite

    folder = suite.run_dir(tmp_path, "embedded", 0)
    folder.mkdir(parents=True)
    searched = {**run(0, 0.0, 0.9, 0.95), "config": "c.yaml", "overrides": ["scenario.seed=0"]}
    (folder / "suite.json").write_text(json.dumps(searched))
    calls = []

    def fake_retrain(result, run_folder, log):
        calls.append(run_folder)
        result["retrain"] = {"forget_acc": 0.0, "retain_acc": 0.9, "zeroshot_acc": 0.9}

    monkeypatch.setattr(suite, "add_retrain", fake_retrain)
    monkeypatch.setattr(suite.subprocess, "run", lambda *a, **k: pytest.fail("searched again"))
    args = SimpleNamespace(storage=str(tmp_path), fresh=False, run=False, retrain=True)
    assert "retrain" not in suite.run_one("embedded", 0, args)  # --no-run adds nothing
    assert calls == []
    args.run = True
    result = suite.run_one("embedded", 0, args)
    assert calls == [folder] and result["retrain"]["retain_acc"] == 0.9
    stored = json.loads((folder / "suite.json").read_text())
    assert stored["retrain"]["retain_acc"] == 0.9
    assert stored["metrics"] == searched["metrics"]
    suite.run_one("embedded", 0, args)  # now complete: not added twice
    assert len(calls) == 1


def test_a_named_section_takes_the_tables_and_a_missing_one_is_refused_first(tmp_path):
    import json

    import bench.suite as suite

    storage = tmp_path / "runs"
    folder = suite.run_dir(storage, "embedded", 0)
    folder.mkdir(parents=True)
    (folder / "suite.json").write_text(json.dumps(run(0, 0.0, 0.9, 0.95)))
    results = tmp_path / "RESULTS.md"
    results.write_text("# r\n\n<!-- suite:begin -->\nmain\n<!-- suite:end -->\n\n"
                       "<!-- part:begin -->\nold\n<!-- part:end -->\n")
    common = ["--scenarios", "embedded", "--seeds", "1", "--storage", str(storage),
              "--results", str(results), "--no-run"]
    suite.main([*common, "--section", "part"])
    text = results.read_text()
    assert "main" in text and "old" not in text
    part = text.split("<!-- part:begin -->", 1)[1].split("<!-- part:end -->", 1)[0]
    assert "| embedded | 0 |" in part
    with pytest.raises(SystemExit):
        suite.main([*common, "--section", "nowhere"])
    assert results.read_text() == text


def test_seeds_are_a_count_or_chosen_ones():
    from bench.suite import run_seeds
    assert run_seeds(3, None) == [0, 1, 2]
    assert run_seeds(3, [2, 1]) == [2, 1]
    assert "expected distinct seeds" in run_seeds(3, [1, 1])
    assert "expected distinct seeds" in run_seeds(3, [-1])
    assert "--seeds 0: expected a count of 1 or more" == run_seeds(0, None)
