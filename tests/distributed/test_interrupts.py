"""SIGINT and SIGTERM sent to a running search (``python -m distforget.search``): the finished
trials stay recorded, the study has no trial left running, report.md is headed as interrupted,
best/ is not written, the exit status is 128 + the signal, and the command to resume is
distforget's own (not Tune's ``Tuner.restore``)."""

import os
import shlex
import signal
import subprocess
import sys
import time

import optuna
import pandas as pd
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from tests.distributed.test_search import overrides

pytestmark = pytest.mark.ray  # the search starts its own Ray
TRIALS = 12


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_search_and_keeps_its_finished_trials(tmp_path, sig):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    # Enough trials that the signal, sent once the first record is written, lands mid-search
    # (one-worker trials of this size take seconds each).
    args = overrides(tmp_path / "runs", **{"search.baselines": [], "search.num_trials": TRIALS})
    run = tmp_path / "runs" / "embedded-default"
    console = tmp_path / "console.txt"
    with open(console, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "distforget.search", *args], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 900
    try:
        # Wait (bounded) for the first trial's record, then send the signal to the driver.
        while not (run / "trials").is_dir() or not any((run / "trials").glob("*.json")):
            assert time.monotonic() < deadline, "no trial finished within 15 minutes"
            try:
                proc.wait(timeout=0.5)
                pytest.fail("the search ended before it could be interrupted:\n"
                            + console.read_text()[-3000:])
            except subprocess.TimeoutExpired:
                pass
        proc.send_signal(sig)
        returncode = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:  # leave nothing running into the next test
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = console.read_text()
    assert returncode == 128 + sig, text[-4000:]
    # distforget's own resume command; not Tune's hint (Tuner.restore fails on this trainable).
    assert f"python -m distforget.search {shlex.join(args)}" in text
    assert "Tuner.restore" not in text and "Resume experiment" not in text

    results = pd.read_parquet(run / "results.parquet")
    trials = results[results["source"] == "trial"]
    k = len(trials)
    assert 1 <= k < TRIALS and trials["trial_id"].is_unique
    for tid in trials["trial_id"]:  # every recorded trial is one that wrote its record
        assert (run / "trials" / f"{tid}.json").is_file()
    report = (run / "report.md").read_text().splitlines()
    assert report[2].startswith(f"**Interrupted** ({sig.name}) after {k} of {TRIALS} trials"), report[:4]
    assert not (run / "best").exists()
    assert "interrupted by " + sig.name in (run / "search.log").read_text()

    # The study is consistent: the finished trials (and their soups) complete, none running.
    study = optuna.load_study(study_name="embedded-default", storage=JournalStorage(
        JournalFileBackend(str(run / "optuna.journal"))))
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states
    ok = results[results["source"].isin(["trial", "sweep"]) & (results["status"] == "ok")]
    assert states.count(optuna.trial.TrialState.COMPLETE) == len(ok)
