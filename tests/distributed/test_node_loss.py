"""Node loss under a search: a head and two worker nodes (``cluster/local-autoscaling.yaml``
with the fake multi-node provider, two workers kept up, a third allowed), two trials running,
one on each worker node, and one worker node taken down while its trial trains: its raylet
and every process the raylet started killed by pid at once, as when a machine goes down. The
trial is started again on a node that is alive, from the stages it had finished, the search
finishes, ``results.parquet`` has each trial exactly once and the Optuna study agrees.

The node's worker processes are killed with its raylet, not left to notice its death: a trial
process that outlives its raylet can finish its stages and report before the head declares the
node dead (on a loaded machine it did), and the search then rightly keeps that result, which is
not the loss this test is about.

The third node is there because Ray Train 2.60 can leak a lost trial's worker-group placement
group onto a surviving node (its detached placement-group cleaner may die with the lost node),
holding that node's CPUs; a cloud autoscaler replaces lost capacity the same way.

The run folder (results, stage cache, Tune and Train state) is a local folder with
``output.shared: true``: every fake node is this machine, so the folder stands in for the NFS
mount a real cluster would share. Written against behaviour (what the search leaves behind),
not against how a trial runs its stages.
"""

import pandas as pd
import pytest

from tests.distributed.fake_cluster import HEAD_NODE_ID, FakeCluster
from tests.distributed.processes import kill_tree, psutil, stop_tree, wait_for
from tests.factories import SEARCHABLE

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# trial_cpus 0.6 + cpus_per_worker 0.4: a trial takes a whole 1-CPU worker node, and no node
# can hold two trials' own processes, so with two trials running each node runs one. Remind
# trains many short epochs (batch 4), so both trials are in remind for a while: the kill
# lands there, after each trial's forget stage is in the stage cache.
SEARCH = {**SEARCHABLE, "search.num_trials": 2, "search.baselines": [],
          "search.sampler": "random", "search.confirm_seeds": 0,
          "search.max_concurrent_trials": 2, "forget.epochs": 1, "remind.epochs": 20,
          "remind.batch_size": 4, "resources.trial_cpus": 0.6,
          "resources.cpus_per_worker": 0.4, "resources.max_failures": 2,
          "output.shared": True}
# The GCS declares a silent node dead after period x threshold (default 3 s x 5).
FAST_HEALTH_CHECKS = {"RAY_health_check_period_ms": "1000",
                      "RAY_health_check_failure_threshold": "3"}


def stage_outputs(run, stage: str) -> list[str]:
    folder = run / "stages"
    if not folder.is_dir():
        return []
    return [p.name for p in folder.iterdir()
            if p.name.startswith(f"{stage}-") and (p / "meta.json").is_file()]


def test_a_worker_node_lost_mid_search_retries_its_trial_on_a_live_node(tmp_path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = tmp_path / "runs"
    run = storage / "embedded-default"
    orphans = []
    cluster = FakeCluster(tmp_path, idle_timeout_s=300, extra_env=FAST_HEALTH_CHECKS,
                          dashboard=True, min_workers=2, max_workers=3)
    try:
        wait_for(lambda: len(cluster.workers()) == 2, 180, "two worker nodes",
                 proc=cluster.proc)
        driver = cluster.start_search({**SEARCH, "output.storage": str(storage)}, tmp_path,
                                      tmp_path / "driver.log")
        try:
            # Both trials are past their forget stage and training remind.
            wait_for(lambda: len(stage_outputs(run, "forget")) == 2, 420,
                     "both trials' forget stages", proc=driver)
            assert not stage_outputs(run, "remind"), "a remind stage finished before the kill"
            victim, pid = sorted(cluster.raylets().items())[1]  # the first worker node
            assert victim != HEAD_NODE_ID
            # The node goes down whole: its raylet first, then every process it started
            # (workers, agents), which would otherwise leave the head's process tree and run
            # on. Kept to make sure they are gone at the end.
            orphans = kill_tree(pid)
            wait_for(lambda: driver.poll() is not None, 480, "the search after the node loss")
        finally:
            if driver.poll() is None:
                stop_tree(driver.pid)
        log = (tmp_path / "driver.log").read_text()
        assert driver.returncode == 0, log[-6000:]
    finally:
        left = cluster.stop()
        # The lost node's processes, killed with it, are checked here by their process
        # objects (is_running() also checks that a pid was not reused).
        psutil.wait_procs(orphans, timeout=10)
        left += [p for p in orphans if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"processes of the cluster still running: {left}"

    # Each trial exactly once, finished, on a node that was alive at the end.
    results = pd.read_parquet(run / "results.parquet")
    trials = results[results["source"] == "trial"]
    assert len(trials) == 2 and trials["trial_id"].is_unique, trials[["trial_id", "status"]]
    assert (trials["status"] == "ok").all()
    assert victim not in set(trials["node_id"]) and HEAD_NODE_ID not in set(trials["node_id"])
    # The trial that lost its node was started again from the stages it had finished (its
    # forget stage), not from scratch; the other never restarted.
    hits = sorted(trials["stage_cache_hits"])
    assert hits[0] == 0 and hits[1] >= 1, trials[["trial_id", "stage_cache_hits"]]
    assert len(stage_outputs(run, "forget")) == 2 and len(stage_outputs(run, "remind")) == 2
    for name in ("report.md", "pareto.parquet", "best/model.safetensors"):
        assert (run / name).is_file(), name

    # The study agrees: one COMPLETE study trial per results row of the search (trials and
    # their sweep points), nothing left running or failed.
    study = optuna.load_study(study_name="embedded-default", storage=JournalStorage(
        JournalFileBackend(str(run / "optuna.journal"))))
    states = {t.user_attrs.get("tune_trial_id"): t.state for t in study.trials}
    searched = results[results["source"].isin(["trial", "sweep"])]
    assert set(states) == set(searched["trial_id"]) and len(study.trials) == len(searched)
    assert set(states.values()) == {optuna.trial.TrialState.COMPLETE}
