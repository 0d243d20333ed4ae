"""Faults during a search: a Train worker killed mid-stage, and a trial that raises.

- A worker process killed by SIGKILL while a stage trains: Ray Train (``FailureConfig``) starts a
  new worker group, the stage resumes from its last per-epoch checkpoint, and the launch ends
  with the stage's output in the cache, the same steps and weights as an uninterrupted run.
- A trial whose stage raises (a knob that is valid config but wrong for the model): the trial is
  recorded as failed with its error, the other trials finish, the search reports, and the
  Optuna study marks the trial FAIL.
"""

import glob
import json
import os
import signal
import threading
import time

import pandas as pd
import pytest
import torch

from distforget.config import ResourcesConfig, load_config, replace
from distforget.trial import StageCache, StageTask, stage_key
from tests.factories import TINY

# --- a worker killed mid-stage ------------------------------------------------------------------

# Many short epochs (batch 2 over ~19 forget images) at a small learning rate, so the stage is
# still running after its first checkpoint and does not stop early on target_acc.
LONG_FORGET = {"forget.epochs": 24, "forget.batch_size": 2, "forget.lr": 1e-5,
               "forget.loss": "similarity", "forget.top_k": 1}
RESOURCES = ResourcesConfig(workers=1, cpus_per_worker=1.0, trial_cpus=0.1, max_failures=2)


def _train_worker_actors(state: str | None = None) -> list[dict]:
    """Ray Train worker actors of the session cluster, from its GCS actor table (the state API
    would need a dashboard, and its default address could be another Ray on this machine)."""
    from ray._private.state import actors

    return [a for a in actors(actor_state_name=state).values()
            if a["ActorClassName"] == "RayTrainWorker"]


def _snapshots(run_dir: str) -> dict[str, dict]:
    """Checkpoint folder -> its snapshot, for every snapshot that is complete on disk."""
    out = {}
    for path in glob.glob(os.path.join(run_dir, "checkpoint_*", "snapshot.pt")):
        try:
            out[os.path.dirname(path)] = torch.load(path, weights_only=True)
        except Exception:  # being written or deleted right now
            continue
    return out


class Launch(threading.Thread):
    """``launch(cfg, tasks)`` in a thread; ``result()`` re-raises what it raised."""

    def __init__(self, launch, cfg, tasks):
        super().__init__(daemon=True)
        self.args = (cfg, tasks)
        self.launch = launch
        self.value = self.error = None

    def run(self):
        try:
            self.value = self.launch(*self.args)
        except BaseException as exc:  # handed to the test thread
            self.error = exc

    def result(self, timeout: float):
        self.join(timeout)
        assert not self.is_alive(), f"the launch did not finish within {timeout:.0f} s"
        if self.error is not None:
            raise self.error
        return self.value


def _launcher(ray_cluster, ref, root, name):
    from distforget.distributed.train import ray_launcher

    cache = StageCache(str(root / "stages"))
    return cache, ray_launcher(ref, cache, RESOURCES, str(root / "train"), name)


@pytest.mark.slow
def test_a_worker_killed_mid_stage_resumes_from_its_last_checkpoint(
        ray_cluster, tiny_prepared, tiny_cfg, tmp_path):
    cfg = replace(tiny_cfg, LONG_FORGET)
    key = stage_key(tiny_prepared.fingerprint, "forget", "three_stage",
                    {k.split(".")[1]: v for k, v in LONG_FORGET.items()}, None, "auto")
    tasks = [StageTask("forget", key, None)]
    ref = ray_cluster.put(tiny_prepared)

    # The same stage without a kill: the reference for steps, history and weights.
    actors_before = {a["ActorID"] for a in _train_worker_actors()}
    plain_cache, plain_launch = _launcher(ray_cluster, ref, tmp_path / "plain", "plain")
    plain = plain_launch(cfg, tasks)[key]
    plain_actors = {a["ActorID"] for a in _train_worker_actors()} - actors_before
    assert len(plain_actors) == 1  # one worker group of one worker, never restarted
    assert [h["epoch"] for h in plain.meta["history"]] == list(range(24))

    cache, launch = _launcher(ray_cluster, ref, tmp_path / "killed", "killed")
    run_dir = str(tmp_path / "killed" / "train" / "killed-forget")
    known = {a["ActorID"] for a in _train_worker_actors()}
    thread = Launch(launch, cfg, tasks)
    thread.start()
    deadline = time.monotonic() + 240
    try:
        # Wait (bounded) for the stage's first epoch checkpoint, then kill its worker.
        while not _snapshots(run_dir):
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            thread.join(0.1)
            if not thread.is_alive():
                thread.result(0)
                pytest.fail("the stage finished before its worker could be killed")
        alive = [a for a in _train_worker_actors("ALIVE") if a["ActorID"] not in known]
        assert len(alive) == 1, alive
        victim = alive[0]
        assert victim["Pid"] and victim["Pid"] != os.getpid()
        os.kill(victim["Pid"], signal.SIGKILL)
        # Every checkpoint complete at the moment of the kill; Ray Train restores the latest
        # one it had registered, which is among these (the worker that wrote them is gone).
        at_kill = _snapshots(run_dir)
        assert at_kill
        outputs = thread.result(timeout=240)
    finally:
        if thread.is_alive():  # leave no stage running into the next test
            for a in _train_worker_actors("ALIVE"):
                if a["ActorID"] not in known and a["Pid"]:
                    os.kill(a["Pid"], signal.SIGKILL)
            thread.join(60)

    out = outputs[key]
    # A new worker replaced the killed one.
    started = {a["ActorID"] for a in _train_worker_actors()} - known
    assert victim["ActorID"] in started and len(started) >= 2
    dead = [a for a in _train_worker_actors("DEAD") if a["ActorID"] == victim["ActorID"]]
    assert dead, "the killed worker is not recorded as dead"

    # The stage output is in the cache, and each epoch ran exactly once overall.
    assert cache.has("forget", key)
    stored = StageCache(str(tmp_path / "killed" / "stages")).get("forget", key)
    assert stored.meta["steps"] == out.meta["steps"]
    history = out.meta["history"]
    assert [h["epoch"] for h in history] == list(range(24))
    assert out.meta["steps"] == plain.meta["steps"] > 24
    assert out.meta["epochs_run"] == plain.meta["epochs_run"] == 24
    assert out.meta["layers"] == plain.meta["layers"]

    # Resumed, not rerun: the epochs up to the restored checkpoint are that checkpoint's own
    # records (their timings included, which a rerun would not reproduce) ...
    restored = [s for s in at_kill.values()
                if history[:len(s["history"])] == s["history"] and s["history"]]
    assert restored, ("no checkpoint at the kill is a prefix of the final history: the stage "
                      "started over instead of resuming")
    resumed_from = max(s["epoch"] for s in restored)
    assert resumed_from < 23  # the kill happened mid-stage
    # ... and the epochs after it were trained again from the checkpoint's weights and
    # optimizer state: the final weights are those of the uninterrupted run.
    for k in plain.state:
        assert torch.allclose(out.state[k], plain.state[k], atol=1e-5, rtol=1e-5), k
    moved = max((out.state[k] - tiny_prepared.base_visual_state()[k]).abs().max().item()
                for k in out.state if out.state[k].is_floating_point())
    assert moved > 0


# --- a trial that raises inside a search ----------------------------------------------------------

# On a ViT image tower (no BatchNorm), remind.bn_align_images > 0 is valid config but makes the
# remind stage raise ConfigError: the trials that draw 8 fail, those that draw 0 run.
SPACE = """\
method: three_stage
fixed:
  restore.choose: fixed
params:
  remind.bn_align_images: {type: categorical, choices: [0, 8]}
  restore.alpha: {type: float, low: 0.0, high: 1.0}
"""
FAULTY_SEARCH = {**TINY, "model.name": "DF-ViT-Tiny-32", "remind.bn_align_images": None,
                 "forget.epochs": 1, "remind.epochs": 1, "search.num_trials": 4,
                 "search.sampler": "random", "search.seed": 3, "search.baselines": [],
                 "resources.max_failures": 0, "output.name": "faulty"}


@pytest.mark.slow
def test_a_trial_that_raises_is_recorded_failed_and_the_search_goes_on(ray_cluster, tmp_path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from distforget.distributed.tuner import run_search

    space = tmp_path / "faulty-space.yaml"
    space.write_text(SPACE)
    items = {**FAULTY_SEARCH, "search.space": str(space), "output.storage": str(tmp_path)}
    cfg = load_config(None, [f"{k}={json.dumps(v) if isinstance(v, list) or v is None else v}"
                             for k, v in items.items()])
    assert cfg.remind.bn_align_images is None and cfg.model.name == "DF-ViT-Tiny-32"
    summary = run_search(cfg, log=print)

    run = tmp_path / "faulty"
    assert summary["run"] == str(run)
    results = pd.read_parquet(run / "results.parquet")
    trials = results[results["source"] == "trial"]
    assert len(trials) == 4 and trials["trial_id"].is_unique
    failed = trials[trials["status"] == "failed"]
    ok = trials[trials["status"] == "ok"]
    assert len(failed) >= 1 and len(ok) >= 1, trials[["trial_id", "status"]]
    assert set(trials["status"]) == {"ok", "failed"}
    # The failure follows the bad value exactly, and carries the stage's error.
    assert (failed["remind.bn_align_images"] == 8).all()
    assert (ok["remind.bn_align_images"] == 0).all()
    for error in failed["error"]:
        assert "remind.bn_align_images needs an image tower with BatchNorm layers" in error
    assert ok["error"].isna().all()
    assert failed["forget_acc"].isna().all() and ok["forget_acc"].notna().all()
    for tid in failed["trial_id"]:
        record = json.loads((run / "trials" / f"{tid}.json").read_text())
        assert record["status"] == "failed" and "BatchNorm" in record["error"]

    # The search finished: the front, report and best model come from the trials that ran.
    assert (run / "report.md").is_file() and (run / "best" / "model.safetensors").is_file()
    front = pd.read_parquet(run / "pareto.parquet")
    assert len(front) >= 1 and set(front["trial_id"]) <= set(ok["trial_id"])
    assert summary["chosen"]["trial_id"] in set(ok["trial_id"])

    # The study was told: FAIL for each failed trial, COMPLETE for the others.
    study = optuna.load_study(study_name="faulty", storage=JournalStorage(
        JournalFileBackend(str(run / "optuna.journal"))))
    by_tune_id = {t.user_attrs.get("tune_trial_id"): t for t in study.trials}
    for tid in failed["trial_id"]:
        assert by_tune_id[tid].state == optuna.trial.TrialState.FAIL, tid
        assert by_tune_id[tid].params["remind.bn_align_images"] == 8
    for tid in ok["trial_id"]:
        assert by_tune_id[tid].state == optuna.trial.TrialState.COMPLETE, tid
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
