"""SIGINT and SIGTERM during a search, without Ray: the handlers, and what the driver leaves in
the run folder once a search is stopped (tests/distributed/test_interrupts.py sends the
signals to a real search)."""

from __future__ import annotations

import os
import signal

import optuna
import pytest

from distforget.interrupts import Interrupts, SearchInterrupted, TuneStopped
from distforget.objectives import DIRECTIONS
from distforget.results import rows_from_record
from tests.factories import a_record
from tests.test_run_folder import a_folder, write_info


def _signal(sig: int) -> None:
    os.kill(os.getpid(), sig)  # Python runs the handler before the next bytecode


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_outside_tune_stops_the_search_at_once(sig, code):
    lines = []
    before = signal.getsignal(sig)
    with pytest.raises(SearchInterrupted) as stop:
        with Interrupts(lines.append):
            _signal(sig)
            pytest.fail("the signal did not stop the search")
    assert stop.value.exit_code == code and stop.value.name == signal.Signals(sig).name
    assert lines and "finished trials are kept" in lines[0]
    assert signal.getsignal(sig) is before  # the old handler is back


def test_inside_a_tune_run_a_signal_waits_for_its_end_and_a_second_one_does_not():
    env_before = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    with Interrupts(lambda msg: None) as interrupts:
        assert os.environ["TUNE_DISABLE_SIGINT_HANDLER"] == "1"
        with pytest.raises(SearchInterrupted) as stop:
            with interrupts.deferred():
                interrupts.stop_tune()  # nothing yet: Tune goes on
                _signal(signal.SIGTERM)
                assert interrupts.signum == signal.SIGTERM  # recorded, not raised
                with pytest.raises(TuneStopped):
                    interrupts.stop_tune()  # what ends Tune's loop at its next step
        assert stop.value.exit_code == 143  # raised when the block ended
        with pytest.raises(SearchInterrupted):
            with interrupts.deferred():
                _signal(signal.SIGINT)  # a second signal: at once
                pytest.fail("a second signal waited")
    assert os.environ.get("TUNE_DISABLE_SIGINT_HANDLER") == env_before


def test_a_stopped_search_keeps_its_trials_settles_the_study_and_heads_the_report(tmp_path):
    from distforget.distributed.tuner import settle_interrupted

    folder, cfg = a_folder(tmp_path)
    write_info(folder, cfg)
    store = folder.study_store()
    study = optuna.create_study(storage=store.storage(), study_name=cfg.output.name,
                                directions=DIRECTIONS)
    dist = {"forget.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
            "restore.alpha": optuna.distributions.FloatDistribution(0.0, 1.0)}
    params = {"forget.lr": 1e-3, "restore.alpha": 0.5}
    # Records carry the base model's metrics (the target is relative to them).
    base = {"base_forget_acc": 0.9, "base_retain_acc": 0.85, "base_zeroshot_acc": 0.9}
    for tid in ("told", "written", "cut"):
        trial = study.ask(dist)
        trial.set_user_attr("tune_trial_id", tid)
    study.tell(0, [0.1, 0.8, 0.9])
    # "told" reached results.parquet; "written" wrote its record just before the signal;
    # "cut" was running.
    folder.write_trial_record(a_record("told", params=params, **base))
    folder.append_results(rows_from_record(a_record("told", params=params, **base)))
    folder.write_trial_record(a_record("written", params=params, forget_acc=0.0, **base))
    lines = []

    settle_interrupted(cfg, folder, SearchInterrupted(signal.SIGINT), lines.append)

    results = folder.read_results()
    assert set(results.loc[results["source"] == "trial", "trial_id"]) == {"told", "written"}
    states = {t.user_attrs["tune_trial_id"]: t.state for t in optuna.load_study(
        study_name=cfg.output.name, storage=store.storage()).trials}
    assert states["written"] == optuna.trial.TrialState.COMPLETE
    assert states["cut"] == optuna.trial.TrialState.FAIL
    assert optuna.trial.TrialState.RUNNING not in states.values()
    report = (tmp_path / "embedded-default" / "report.md").read_text()
    assert report.splitlines()[2].startswith(
        f"**Interrupted** (SIGINT) after 2 of {cfg.search.num_trials} trials (0 failed)")
    assert not (tmp_path / "embedded-default" / "best").exists()
    assert "after 2 of" in lines[-1] and "best/ was not changed" in lines[-1]


def test_a_search_stopped_before_its_first_trial_records_nothing(tmp_path):
    from distforget.distributed.tuner import settle_interrupted

    folder, cfg = a_folder(tmp_path)
    lines = []
    settle_interrupted(cfg, folder, SearchInterrupted(signal.SIGTERM), lines.append)
    assert "before the first trial" in lines[-1]
    assert not (tmp_path / "embedded-default" / "report.md").exists()
