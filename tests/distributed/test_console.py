"""What a search prints, without Ray: Tune's table of trials (searched values and objectives,
printed when a trial ends), and the results writer's lines, which also go to search.log."""

from types import SimpleNamespace

from ray.tune.experiment import Trial

from distforget.distributed.trainable import ResultsWriter
from distforget.distributed.tuner import TrialTable
from distforget.run_folder import RunLog
from tests.factories import a_record
from tests.test_run_folder import a_folder


def a_trial(tid, status, last_result=None, **config):
    return SimpleNamespace(trial_id=tid, status=status, config=config,
                           last_result=last_result or {})


def test_the_table_shows_searched_values_and_objectives_each_time_a_trial_ends(capsys):
    table = TrialTable({"forget.lr": "forget.lr", "restore.alpha": "restore.alpha"})
    running = [a_trial("t1", Trial.RUNNING, **{"forget.lr": 1e-3, "restore.alpha": 0.5}),
               a_trial("t2", Trial.PENDING, **{"forget.lr": 2e-3, "restore.alpha": 0.1})]
    assert not table.should_report(running)  # nothing ended yet: no table
    ended = [a_trial("t1", Trial.TERMINATED, {"forget_acc": 0.05, "retain_acc": 0.8,
                                              "zeroshot_acc": 0.9, "time_total_s": 3.0},
                     **{"forget.lr": 1e-3, "restore.alpha": 0.5}), running[1]]
    assert table.should_report(ended)
    assert not table.should_report(ended)  # once per change
    assert table.should_report(ended, done=True)
    table.report(ended, False)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Tune: 2 trials (1 pending, 1 terminated)"
    assert out[1].split() == ["trial", "status", "forget.lr", "restore.alpha", "forget_acc",
                              "retain_acc", "zeroshot_acc"]
    assert out[2].split() == ["t1", "terminated", "0.001", "0.5", "0.05", "0.8", "0.9"]
    assert out[3].split() == ["t2", "pending", "0.002", "0.1"]


def test_a_confirmation_run_shows_its_seeds_not_its_whole_config(capsys):
    table = TrialTable({"confirm/forget.seed": "forget.seed"})
    table.report([a_trial("c1", Trial.TERMINATED, {"forget_acc": 0.0},
                          confirm={"forget.seed": 1, "forget.lr": 1e-3})], True)
    out = capsys.readouterr().out
    assert "forget.seed" in out and "{" not in out and "forget.lr" not in out


def test_each_finished_trial_is_logged_with_its_values_metrics_and_the_front_so_far(tmp_path):
    folder, _ = a_folder(tmp_path)
    shown = []
    log = RunLog(folder, echo=shown.append)
    writer = ResultsWriter(folder, 2, 0, log=log, params=["forget.lr", "restore.alpha"])
    for tid, forget in (("t1", 0.1), ("t2", 0.0)):
        folder.write_trial_record(a_record(tid, forget_acc=forget, stage_cache_hits=0,
                                           wall_s=1.0))
        writer.on_trial_complete(0, [], SimpleNamespace(trial_id=tid))
    assert shown[0].startswith("trial 1/2 t1 (three_stage) forget.lr=0.001 restore.alpha=0.5: "
                               "forget_acc 0.100  retain_acc 0.800  zeroshot_acc 0.900")
    assert shown[1].startswith("  front so far: 2 of 2 points")
    assert shown[2].startswith("trial 2/2 t2")
    # t2 (0.0/0.8/0.9) dominates t1 (0.1/0.8/0.9); the sweep points (0.0/0.7/0.8) do not.
    assert "t1 " not in shown[3] and "t2 (0.000/0.800/0.900)" in shown[3]
    logged = (tmp_path / "embedded-default" / "search.log").read_text().splitlines()
    assert len(logged) == len(shown)
    assert [line.split("  ", 1)[1] for line in logged] == shown  # "<UTC time>  <line>"


def test_verbose_and_an_interrupted_search_on_the_command_line(tmp_path, monkeypatch, capsys):
    import signal

    from distforget import search
    from distforget.distributed import tuner
    from distforget.interrupts import SearchInterrupted

    seen = []

    def stopped(cfg):
        seen.append(cfg)
        raise SearchInterrupted(signal.SIGTERM)

    monkeypatch.setattr(tuner, "run_search", stopped)
    args = ["--verbose", f"output.storage={tmp_path}", "search.num_trials=3"]
    assert search.main(args, prog="distforget search") == 143
    assert seen[0].output.verbose and seen[0].search.num_trials == 3
    err = capsys.readouterr().err.splitlines()
    assert err == ["distforget search: interrupted (SIGTERM); to resume, run the same command:",
                   f"  distforget search --verbose output.storage={tmp_path} "
                   "search.num_trials=3"]
