"""bench/pick_unit.py on a finished search: both margin units pick among the same validation
points, and each chosen point's test metrics are those the search measured."""

import json

import pandas as pd

from bench.pick_unit import compare
from distforget.config import RunConfig, to_dict
from distforget.results import write_table
from distforget.run_folder import RunFolder

SPLITS = {"val_forget": 200, "test_forget": 200, "val_retain": 400, "test_retain": 400,
          "val_zeroshot": 500, "test_zeroshot": 500}


def test_each_unit_picks_among_the_same_points_and_is_judged_on_test(tmp_path):
    # forget 0.03 clears 0.05 by 1.3 validation standard errors but by 0.92 of the
    # validation-test difference; forget 0.015 by 1.6 of the difference. "close" reads 0.07
    # on test, "clear" 0.04.
    base = {"base_forget_acc": 0.9, "base_retain_acc": 0.8, "base_zeroshot_acc": 0.9}
    test_base = {"test_base_forget_acc": 0.9, "test_base_retain_acc": 0.8,
                 "test_base_zeroshot_acc": 0.9}
    rows = [("close", 0.03, 0.9, 0.96, 0.07), ("clear", 0.015, 0.9, 0.95, 0.04)]
    table = pd.DataFrame([{
        "trial_id": tid, "source": "trial", "status": "ok", "method": "three_stage",
        "alpha": 0.9, "beta": 0.0, "recipe": "{}", "forget_acc": f, "retain_acc": r,
        "zeroshot_acc": z, "test_forget_acc": tf, "test_retain_acc": r, "test_zeroshot_acc": z,
        **base, **test_base} for tid, f, r, z, tf in rows])
    run = tmp_path / "a-run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({
        "config": to_dict(RunConfig()), "prepared": {"splits": SPLITS},
        "base_metrics": {k[len("base_"):]: v for k, v in base.items()}}))
    write_table(RunFolder(str(run)).results, table)
    out = compare(run, device=None)
    assert out["validation"]["chosen"]["trial_id"] == "close"
    assert out["validation-test"]["chosen"]["trial_id"] == "clear"
    assert out["validation"]["confident"] == 2 and out["validation-test"]["confident"] == 1
    assert not out["validation"]["met"] and out["validation-test"]["met"]
    assert out["validation-test"]["test"]["test_forget_acc"] == 0.04
