"""Autoscaling, exercised: ``cluster/local-autoscaling.yaml`` started with Ray's fake multi-node
provider (extra raylets on this machine, driven by the real autoscaler), a small search whose
trials need the worker type, and the cluster grows from the head alone to worker nodes on
demand, the trials run on them, and idle workers are removed again.

The cluster is this test's own and stopped by process id (``tests/distributed/fake_cluster``).
"""

import pandas as pd
import pytest

from tests.distributed.fake_cluster import HEAD_NODE_ID, FakeCluster
from tests.distributed.processes import stop_tree, wait_for
from tests.factories import SEARCHABLE

pytestmark = [pytest.mark.ray, pytest.mark.slow]

IDLE_TIMEOUT_S = 10
# A trial takes a whole 1-CPU worker node (0.6 for its own process + 0.4 for its worker), and no
# node can hold two trials' own processes: two trials at once need both worker nodes.
SEARCH = {**SEARCHABLE, "search.num_trials": 2, "search.baselines": [],
          "search.sampler": "random", "search.confirm_seeds": 0,
          "search.max_concurrent_trials": 2, "forget.epochs": 1, "remind.epochs": 1,
          "resources.trial_cpus": 0.6, "resources.cpus_per_worker": 0.4, "output.shared": True}


def test_a_search_scales_the_worker_type_up_and_idle_workers_are_removed(tmp_path):
    storage = tmp_path / "runs"
    cluster = FakeCluster(tmp_path, IDLE_TIMEOUT_S)
    try:
        wait_for(lambda: HEAD_NODE_ID in cluster.raylets(), 120, "the head's raylet",
                 proc=cluster.proc)
        assert not cluster.workers()  # the cluster starts with the head alone

        driver = cluster.start_search({**SEARCH, "output.storage": str(storage)}, tmp_path,
                                      tmp_path / "driver.log")
        seen: set[str] = set()
        try:
            def search_done():
                seen.update(cluster.workers())
                return driver.poll() is not None
            wait_for(search_done, 540, "the search", poll=0.5)
        finally:
            if driver.poll() is None:
                stop_tree(driver.pid)
        log = (tmp_path / "driver.log").read_text()
        assert driver.returncode == 0, log[-6000:]

        # Worker nodes came up on demand (none was there before the search): as many as two
        # trials at once need, the worker type's maximum.
        assert len(seen) == cluster.max_workers == 2, seen
        assert "Adding 1 node(s) of type cpu-worker" in cluster.monitor_log()

        # The trials ran on worker nodes (the head has no CPUs), and the outputs are complete.
        run = storage / "embedded-default"
        results = pd.read_parquet(run / "results.parquet")
        trials = results[results["source"] == "trial"]
        assert len(trials) == 2 and trials["trial_id"].is_unique
        assert (trials["status"] == "ok").all()
        # (Both may run on one of them: a one-worker trial takes seconds, and Tune may give
        # the second trial the first one's actor before the second node is up.)
        assert set(trials["node_id"]) <= seen, (set(trials["node_id"]), seen)
        assert trials["node_id"].notna().all() and HEAD_NODE_ID not in set(trials["node_id"])
        for name in ("pareto.parquet", "pareto.csv", "pareto.png", "report.md",
                     "optuna.journal", "best/model.safetensors", "best/distforget.json"):
            assert (run / name).is_file(), name

        # Idle workers are removed after the idle timeout (bounded wait: the timeout plus the
        # autoscaler's rounds and a node's shutdown).
        wait_for(lambda: not cluster.workers(), IDLE_TIMEOUT_S + 90,
                 "idle worker nodes removed", proc=cluster.proc)
        assert "(idle)" in cluster.monitor_log()
    finally:
        left = cluster.stop()
    assert not left, f"processes of the cluster still running: {left}"
