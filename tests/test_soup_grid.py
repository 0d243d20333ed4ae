"""bench/soup_grid.py's reading of a finished search: which soups are new, and its refusals."""

import json

import pandas as pd
import pytest

from bench.soup_grid import new_soups, parse_alphas, run_folders


def recipe(alpha):
    return json.dumps({"method": "three_stage", "stages": {"forget": "f", "remind": "r"},
                       "alpha": alpha, "beta": 0.0})


def test_only_alphas_a_trial_was_not_measured_at_are_new():
    rows = [
        {"trial_id": "t1", "parent_id": None, "source": "trial", "alpha": 0.9},
        {"trial_id": "t1~0", "parent_id": "t1", "source": "sweep", "alpha": 1.0},
        {"trial_id": "t2", "parent_id": None, "source": "trial", "alpha": 0.3},
        {"trial_id": "t3", "parent_id": None, "source": "trial", "alpha": 0.5, "status": "failed"},
        {"trial_id": "b", "parent_id": None, "source": "baseline", "alpha": 1.0,
         "method": "ga"},
    ]
    table = pd.DataFrame([{"status": "ok", "method": "three_stage", "beta": 0.0,
                           "forget_acc": 0.1, "retain_acc": 0.8, "zeroshot_acc": 0.9,
                           "recipe": recipe(r["alpha"]), **r} for r in rows])
    table.loc[table["trial_id"] == "t3", ["forget_acc", "retain_acc", "zeroshot_acc"]] = None
    soups = new_soups(table, [0.9, 0.95, 1.0])
    got = sorted((parent, r.alpha) for parent, r in soups)
    # t1 has 0.9 (its own soup) and 1.0 (its sweep); t2 has none of them; the failed trial and
    # the baseline get none.
    assert got == [("t1", 0.95), ("t2", 0.9), ("t2", 0.95), ("t2", 1.0)]
    assert all(r.stages == (("forget", "f"), ("remind", "r")) and r.beta == 0.0
               for _, r in soups)


@pytest.mark.parametrize("text", ["", "0.9,x", "1.5", "-0.1,0.5"])
def test_alphas_outside_the_soup_line_are_refused_by_value(text):
    with pytest.raises(SystemExit, match="--alphas"):
        parse_alphas(text)


def test_a_folder_without_runs_is_refused(tmp_path):
    (tmp_path / "not-a-run").mkdir()
    with pytest.raises(SystemExit, match="neither a run folder"):
        run_folders([str(tmp_path)])
    run = tmp_path / "a-run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    assert run_folders([str(tmp_path)]) == [run]


def test_a_missing_section_is_refused_before_any_run_is_replayed(tmp_path, capsys):
    from bench.soup_grid import main

    run = tmp_path / "a-run"
    run.mkdir()
    (run / "run.json").write_text("{}")  # would fail if it were replayed
    results = tmp_path / "RESULTS.md"
    results.write_text("# results\n")
    with pytest.raises(SystemExit):
        main([str(run), "--alphas", "0.9", "--section", "grid", "--results", str(results)])
    assert "--section 'grid'" in capsys.readouterr().err
    assert results.read_text() == "# results\n"
