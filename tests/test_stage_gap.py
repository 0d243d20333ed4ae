"""bench/stage_gap.py on a finished search: each trial's remind-stage training accuracies are read
from the stage cache beside its validation accuracies at alpha 1."""

import json

import pandas as pd
import torch

from bench.stage_gap import summary
from distforget.results import write_table
from distforget.run_folder import RunFolder
from distforget.training import StageOutput
from distforget.trial import StageCache


def test_the_remind_stage_training_accuracies_stand_beside_the_held_out_ones(tmp_path):
    run = tmp_path / "a-run"
    run.mkdir()
    folder = RunFolder(str(run))
    cache = StageCache(folder.stages)
    rows = []
    # (trial, remind key, train forget, train retain, val forget, val retain, alpha)
    for tid, key, tf, tr, vf, vr, alpha in [
            ("a", "k" * 30, 0.0, 0.9, 0.08, 0.6, 1.0),    # training forgotten, held-out not
            ("b", "m" * 30, 0.01, 0.8, 0.02, 0.7, 1.0),   # both forgotten
            ("b~1", "m" * 30, 0.01, 0.8, 0.5, 0.1, 0.4)]:  # a soup: not the reminded model
        if alpha == 1.0:
            cache.put("remind", key, StageOutput(
                state={"w": torch.zeros(1)},
                meta={"history": [{"train_forget_acc": 0.5, "train_retain_acc": 0.5},
                                  {"train_forget_acc": tf, "train_retain_acc": tr}]}))
        rows.append({"trial_id": tid, "source": "trial", "status": "ok",
                     "method": "three_stage", "alpha": alpha, "beta": 0.0,
                     "recipe": json.dumps({"method": "three_stage",
                                           "stages": {"remind": key}}),
                     "forget_acc": vf, "retain_acc": vr, "zeroshot_acc": 0.7})
    write_table(folder.results, pd.DataFrame(rows))
    out = summary(run)
    assert out["trials"] == 2
    assert out["forget acc, train"] == "0.005 (0.000-0.010)"
    assert out["forget acc, validation"] == "0.050 (0.020-0.080)"
    assert out["retain acc, validation"] == "0.650 (0.600-0.700)"
    assert out["train forget <= 0.05, validation not"] == "1/2"
