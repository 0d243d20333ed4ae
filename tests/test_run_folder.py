"""The run folder without Ray: identity check, resume reconciliation, report and export pick."""

from __future__ import annotations


import optuna
import pytest

from distforget.config import load_config
from distforget.errors import ConfigError
from distforget.export import select
from distforget.objectives import DIRECTIONS, METRICS
from distforget.report import build_report
from distforget.results import rows_from_record
from distforget.run_folder import (RunFolder, identity_view, reconcile_study, search_identity)
from tests.factories import a_record

SPACE = "params:\n  forget.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"


def a_folder(tmp_path, **config) -> tuple[RunFolder, object]:
    cfg = load_config(None, {"output.storage": str(tmp_path), **config})
    folder = RunFolder.of(cfg)
    return folder, cfg


def write_info(folder: RunFolder, cfg, space_text: str = SPACE) -> None:
    info = {"identity": search_identity(cfg, space_text), "identity_view": identity_view(cfg),
            "space_text": space_text, "config": cfg.to_dict(),
            "base_metrics": {m: v for m, v in zip(METRICS, (0.9, 0.85, 0.9, 0.3, 0.5))},
            "model": {"name": "DF-RN-Tiny-32", "weights": "embedded:test"},
            "prepared": {"subgroup_rule": "column"}}
    folder.write_info(info, base_state={})


def test_a_new_folder_starts_a_search_and_the_same_search_resumes(tmp_path):
    folder, cfg = a_folder(tmp_path)
    assert folder.root == str(tmp_path / "embedded-default")
    assert folder.check_resumable(cfg, search_identity(cfg, SPACE), SPACE) is None
    write_info(folder, cfg)
    info = folder.check_resumable(cfg, search_identity(cfg, SPACE), SPACE)
    assert info["identity"] == search_identity(cfg, SPACE)


def test_keys_that_may_change_on_resume_do_not_change_the_identity(tmp_path):
    _, cfg = a_folder(tmp_path)
    _, more = a_folder(tmp_path, **{"search.num_trials": 40, "resources.workers": 2})
    _, other = a_folder(tmp_path, **{"forget.lr": 0.5})
    assert search_identity(cfg, SPACE) == search_identity(more, SPACE)
    assert search_identity(cfg, SPACE) != search_identity(other, SPACE)
    assert search_identity(cfg, SPACE) != search_identity(cfg, SPACE + "# changed\n")


def test_a_folder_of_another_search_is_refused_naming_what_differs(tmp_path):
    folder, cfg = a_folder(tmp_path)
    write_info(folder, cfg)
    _, other = a_folder(tmp_path, **{"forget.lr": 0.5})
    with pytest.raises(ConfigError, match=r"differs in: forget.lr\)"):
        folder.check_resumable(other, search_identity(other, SPACE), SPACE)
    with pytest.raises(ConfigError, match=r"search.space \(its contents\)"):
        folder.check_resumable(cfg, "x", SPACE + "# changed\n")


def test_a_non_empty_folder_without_run_json_is_refused(tmp_path):
    folder, cfg = a_folder(tmp_path)
    (tmp_path / "embedded-default").mkdir()
    (tmp_path / "embedded-default" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not empty and holds no distforget search"):
        folder.check_resumable(cfg, search_identity(cfg, SPACE), SPACE)


def test_records_written_before_an_interruption_are_recovered_once(tmp_path):
    folder, _ = a_folder(tmp_path)
    folder.append_results(rows_from_record(a_record("t1")))
    folder.write_trial_record(a_record("t1"))
    folder.write_trial_record(a_record("t2", forget_acc=0.2))
    assert folder.recover_records() == 2  # t2 and its sweep point
    assert folder.recover_records() == 0
    assert list(folder.read_results()["trial_id"]) == ["t1", "t1~0", "t2", "t2~0"]


def test_reconcile_tells_finished_trials_and_fails_the_cut_off_ones(tmp_path):
    folder, _ = a_folder(tmp_path)
    store = folder.study_store()
    study = optuna.create_study(storage=store.storage(), study_name="s", directions=DIRECTIONS)
    dist = {"forget.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
            "restore.alpha": optuna.distributions.FloatDistribution(0.0, 1.0)}
    for tid in ("done", "cut"):
        trial = study.ask(dist)
        trial.set_user_attr("tune_trial_id", tid)
    record = a_record("done", params={"forget.lr": 1e-3, "restore.alpha": 0.5})
    folder.write_trial_record(record)

    counts = reconcile_study(study, folder)
    assert counts == {"told": 1, "failed": 1}
    states = {t.user_attrs["tune_trial_id"]: t.state for t in study.get_trials()}
    assert states["done"] == optuna.trial.TrialState.COMPLETE
    assert states["cut"] == optuna.trial.TrialState.FAIL
    assert states["done~0"] == optuna.trial.TrialState.COMPLETE  # its sweep point too
    done = next(t for t in study.get_trials() if t.user_attrs["tune_trial_id"] == "done")
    assert done.values == [0.1, 0.8, 0.9]


def test_the_report_is_rebuilt_from_the_folder_alone(tmp_path):
    folder, cfg = a_folder(tmp_path, **{"search.pick": "forget_acc<=0.05, max zeroshot_acc"})
    write_info(folder, cfg)
    folder.append_results(rows_from_record(a_record("t1")))
    folder.append_results(rows_from_record(a_record("t2", forget_acc=0.3, retain_acc=0.95,
                                                    sweep=[])))
    summary = build_report(folder.root)
    assert summary["chosen"]["trial_id"] == "t1~0"  # the only point with forget_acc <= 0.05
    assert summary["front_size"] == 3
    for name in (RunFolder.PARETO, RunFolder.PARETO_CSV, RunFolder.PLOT, RunFolder.REPORT):
        assert (tmp_path / "embedded-default" / name).stat().st_size > 0
    assert "t1~0" in (tmp_path / "embedded-default" / RunFolder.REPORT).read_text()


def test_export_selects_by_rule_or_by_trial_and_refuses_unknown_ones(tmp_path):
    folder, cfg = a_folder(tmp_path)
    write_info(folder, cfg)
    folder.append_results(rows_from_record(a_record("t1")))
    folder.append_results([{"trial_id": "t9", "status": "failed", "source": "trial",
                            "error": "boom"}])
    row, why = select(folder.root, rule="forget_acc<=0.05, max retain_acc")
    assert row["trial_id"] == "t1~0" and "meeting" in why
    row, why = select(folder.root, trial="t1")
    assert row["trial_id"] == "t1" and "named by the user" in why
    with pytest.raises(ConfigError, match="'t7' is not in"):
        select(folder.root, trial="t7")
    with pytest.raises(ConfigError, match="did not finish: boom"):
        select(folder.root, trial="t9")


def test_the_report_and_the_record_say_plainly_when_no_point_meets_the_target(tmp_path):
    from distforget.export import point_record

    folder, cfg = a_folder(tmp_path)  # the default pick: target
    write_info(folder, cfg)
    folder.append_results(rows_from_record(a_record("t1", forget_acc=0.1, sweep=[])))
    folder.append_results(rows_from_record(a_record("t2", forget_acc=0.3, sweep=[])))
    summary = build_report(folder.root)
    assert summary["chosen"]["trial_id"] == "t1" and summary["why"].startswith("TARGET NOT MET")
    report = (tmp_path / "embedded-default" / RunFolder.REPORT).read_text()
    assert "TARGET NOT MET" in report and "forget_acc 0.100 > 0.050 (by 0.050)" in report
    record = point_record(summary["chosen"], folder.read_info(), summary["why"], None)
    assert record["target"]["met_on_validation"] is False
    assert record["target"]["missed_by"] == ["forget_acc 0.100 > 0.050 (by 0.050)"]
    assert record["validation"]["forget_acc"] == 0.1 and record["test"] == {}


def test_a_run_log_and_results_writer_pickle_after_ray_replaces_print(tmp_path):
    # Ray replaces builtins.print in the driver once worker output reaches it; Tune then
    # pickles the callbacks. Python's own print held by one of them no longer pickles by name.
    # In a fresh interpreter: an earlier test in this one may have left print replaced.
    import subprocess
    import sys

    code = f"""
import builtins, pickle
from distforget.run_folder import RunFolder, RunLog
from distforget.distributed.trainable import ResultsWriter
original = print
folder = RunFolder({str(tmp_path)!r})
builtins.print = lambda *a, **k: original(*a, **k)
try:
    pickle.dumps(original)
    raise SystemExit("the original print still pickles: the check below proves nothing")
except pickle.PicklingError:
    pass
for held in (RunLog(folder, echo=original), ResultsWriter(folder, 1, 0),
             ResultsWriter(folder, 1, 0, log=original)):
    pickle.loads(pickle.dumps(held))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-1000:]
