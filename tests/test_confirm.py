"""After the choice: confirmation seeds and test metrics, in-process (no Ray), and the order
that keeps the test split honest: no test image is read before the pick."""

from __future__ import annotations

import json

import pytest

from distforget import confirm
from distforget.config import replace
from distforget.evaluate import Evaluator
from distforget.objectives import as_test
from distforget.results import rows_from_record
from distforget.run_folder import RunFolder, run_info, search_identity
from distforget.trial import (StageCache, local_evaluator, local_launcher, run_trial,
                              trial_record)


class Space:
    """The bits of a search space that run_info reads."""
    source = "test"


@pytest.fixture()
def image_reads(monkeypatch):
    """Images read per split by every Evaluator, and the order of picks and test reads."""
    reads: dict[str, int] = {}
    events: list[str] = []
    real = Evaluator._features

    def counting(self, visual, split):
        reads[split] = reads.get(split, 0) + len(self.splits[split][0])
        if split.startswith("test_") and (not events or events[-1] != "test read"):
            events.append("test read")
        return real(self, visual, split)

    real_pick = confirm.pick

    def recording_pick(*args, **kwargs):
        events.append("pick")
        events.append(kwargs.get("sizes"))
        return real_pick(*args, **kwargs)

    monkeypatch.setattr(Evaluator, "_features", counting)
    monkeypatch.setattr(confirm, "pick", recording_pick)
    return reads, events


def test_the_choice_is_made_before_any_test_image_is_read(tiny_prepared, tiny_cfg, tmp_path,
                                                          cpu, image_reads):
    reads, events = image_reads
    cfg = replace(tiny_cfg, {"output.storage": str(tmp_path), "search.confirm_seeds": 2,
                             "search.pick": "forget_acc<=1.0, max zeroshot_acc",
                             "search.pick_margin_unit": "validation-test"})
    folder = RunFolder.of(cfg)
    folder.write_info(run_info(cfg, search_identity(cfg, ""), Space(), "", tiny_prepared),
                      tiny_prepared.base_state)
    cache = StageCache(folder.stages)
    launch = local_launcher(tiny_prepared, cache, cpu)
    evaluate = local_evaluator(tiny_prepared, cache, cpu, "auto")

    def run(tid: str, trial_cfg, source: str, params: dict, parent: str | None = None) -> None:
        result = run_trial(tiny_prepared, trial_cfg, launch=launch, cache=cache,
                           evaluate=evaluate, sweep=[(1.0, 0.0)] if source == "trial" else ())
        folder.append_results(rows_from_record(trial_record(
            trial_id=tid, source=source, method=trial_cfg.method, params=params,
            result=result, parent_id=parent)))

    for i, lr in enumerate((1e-3, 3e-3)):
        run(f"t{i}", replace(cfg, {"forget.lr": lr}), "trial", {"forget.lr": lr})
    assert not any(split.startswith("test_") for split in reads)  # the search read no test

    def run_confirmations(params: list[dict], parent: str) -> None:
        for i, p in enumerate(params):
            run(f"{parent}-confirm{i}", replace(cfg, p), "confirm", p, parent)

    out = confirm.finish(folder, cfg, evaluate=evaluate, run_confirmations=run_confirmations,
                         log=lambda msg: None)
    assert events[0] == "pick" and "test read" in events
    # The pick weighs each metric by the validation and test images behind it (their counts,
    # read from run.json, not the images).
    splits = tiny_prepared.scenario.summary()
    assert events[1] == {m: pytest.approx(1 / (1 / splits[f"val_{s}"] + 1 / splits[f"test_{s}"]))
                         for m, s in (("forget_acc", "forget"), ("retain_acc", "retain"),
                                      ("zeroshot_acc", "zeroshot"))}
    assert events.index("pick") < events.index("test read")
    assert reads["test_forget"] > 0 and reads["test_zeroshot"] > 0

    results = folder.read_results()
    chosen = out["chosen"]
    confirmations = results[results["source"] == "confirm"]
    assert len(confirmations) == 2 and set(confirmations["parent_id"]) == {chosen["trial_id"]}
    params = [json.loads(p) for p in confirmations["params"]]
    assert [p["forget.seed"] for p in params] == [1, 2]
    assert all(p["restore.choose"] == "fixed" and p["restore.alpha"] == chosen["alpha"]
               for p in params)
    # Test metrics, with intervals, for the chosen point, the front and the confirmations.
    for tid in [chosen["trial_id"], *confirmations["trial_id"]]:
        row = results[results["trial_id"] == tid].iloc[0]
        for m in ("forget_acc", "retain_acc", "zeroshot_acc"):
            assert 0 <= row[f"{as_test(m)}_lo"] <= row[as_test(m)] <= \
                row[f"{as_test(m)}_hi"] <= 1
    assert results["test_base_zeroshot_acc"].notna().all()
    summary = out["confirmation"]
    assert len(summary["seeds"]) == 3 and summary["seeds"][0]["trial_id"] == chosen["trial_id"]
    assert isinstance(summary["target_met_on_every_seed"], bool)

    # Run again on the same folder (a resumed search): no confirmation is trained twice.
    again = confirm.finish(folder, cfg, evaluate=evaluate,
                           run_confirmations=lambda *a: pytest.fail("confirmed twice"),
                           log=lambda msg: None)
    assert again["chosen"]["trial_id"] == chosen["trial_id"]


def test_confirmation_values_keep_the_point_and_move_every_seed(tiny_cfg):
    row = {"params": json.dumps({"forget.lr": 1e-3, "remind.seed": 5}), "method": "three_stage",
           "alpha": 0.6, "beta": 0.0}
    first, second = confirm.confirmation_params(row, tiny_cfg, 2)
    assert first == {"forget.lr": 1e-3, "restore.choose": "fixed", "restore.alpha": 0.6,
                     "restore.beta": 0.0, "forget.seed": 1, "remind.seed": 6,
                     "baseline.seed": 1}
    assert second["remind.seed"] == 7 and second["forget.seed"] == 2
    assert confirm.confirmation_params(row, tiny_cfg, 0) == []


def test_a_search_whose_every_trial_failed_names_the_most_common_error():
    import pandas as pd

    results = pd.DataFrame([
        {"trial_id": f"t{i}", "source": "trial", "status": "failed", "error": err,
         "forget_acc": None, "retain_acc": None, "zeroshot_acc": None}
        for i, err in enumerate(["ValueError: boom", "ValueError: boom", "OSError: disk"])])
    with pytest.raises(confirm.SearchFailed, match=r"every trial failed \(3 of 3\); the most "
                                                   r"common error \(2 trials\): ValueError: boom"):
        confirm.failed_search(results)
    results.loc[0, ["status", "forget_acc", "retain_acc", "zeroshot_acc"]] = ["ok", .1, .8, .9]
    confirm.failed_search(results)  # one finished trial is enough to choose from
