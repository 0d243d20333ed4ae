"""Faults during a search: a worker killed mid-stage (a Train worker, or a one-worker trial's
actor), and a trial that raises.

- A worker process killed by SIGKILL while a stage trains: Ray Train (``FailureConfig``) starts a
  new worker group, the stage resumes from its last per-epoch checkpoint, and the launch ends
  with the stage's output in the cache, the same steps and weights as an uninterrupted run.
- A one-worker trial's actor (where its stages run) killed while remind trains: Tune starts the
  trial again, forget comes from the stage cache and remind resumes from its snapshot.
- A trial whose stage raises (a knob that is valid config but wrong for the model): the trial is
  recorded as failed with its error at once (its worker group is not restarted
  ``resources.max_failures`` times as after a lost worker), the other trials finish, the search
  reports, and the Optuna study marks the trial FAIL.
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
from tests.factories import SEARCHABLE

pytestmark = pytest.mark.ray  # every test here starts or joins Ray

# --- a worker killed mid-stage ------------------------------------------------------------------

# A short forget stage, then a remind stage of many short epochs (batch 4 over ~46 retained and
# BN-aligned images; remind never stops early), so the worker is killed while remind trains and
# the restarted group has to skip the finished forget stage and resume remind.
STAGES = {"forget.epochs": 1, "remind.epochs": 20, "remind.batch_size": 4, "remind.lr": 1e-4}
EPOCHS = STAGES["remind.epochs"]
RESOURCES = ResourcesConfig(workers=1, cpus_per_worker=1.0, trial_cpus=0.1, max_failures=2)


def _train_worker_actors(state: str | None = None) -> list[dict]:
    """Ray Train worker actors of the session cluster, from its GCS actor table (the state API
    would need a dashboard, and its default address could be another Ray on this machine)."""
    from ray._private.state import actors

    return [a for a in actors(actor_state_name=state).values()
            if a["ActorClassName"] == "RayTrainWorker"]


def _snapshots(run_dir: str, stage_key_: str) -> dict[str, dict]:
    """Checkpoint folder -> its snapshot, for every complete snapshot of the given stage."""
    out = {}
    for path in glob.glob(os.path.join(run_dir, "checkpoint_*", "snapshot.pt")):
        try:
            snap = torch.load(path, weights_only=True)
        except Exception:  # being written or deleted right now
            continue
        if snap.get("stage_key") == stage_key_:
            out[os.path.dirname(path)] = snap
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


def _launcher(ref, root, name):
    from distforget.distributed.train import ray_launcher

    cache = StageCache(str(root / "stages"))
    return cache, ray_launcher(ref, cache, RESOURCES, str(root / "train"), name)


@pytest.mark.slow
def test_a_worker_killed_mid_stage_resumes_from_its_last_checkpoint(
        ray_cluster, tiny_prepared, tiny_cfg, tmp_path):
    cfg = replace(tiny_cfg, STAGES)
    fkey = stage_key(tiny_prepared.fingerprint, "forget", "three_stage", {"test": "faults"},
                     None, "auto")
    rkey = stage_key(tiny_prepared.fingerprint, "remind", "three_stage", {"test": "faults"},
                     fkey, "auto")
    tasks = [StageTask("forget", fkey, None), StageTask("remind", rkey, fkey)]
    ref = ray_cluster.put(tiny_prepared)

    # The same stages without a kill: the reference for steps, history and weights.
    actors_before = {a["ActorID"] for a in _train_worker_actors()}
    _, plain_launch = _launcher(ref, tmp_path / "plain", "plain")
    plain = plain_launch(cfg, tasks)[rkey]
    plain_actors = {a["ActorID"] for a in _train_worker_actors()} - actors_before
    assert len(plain_actors) == 1  # one worker group of one worker, never restarted
    assert [h["epoch"] for h in plain.meta["history"]] == list(range(EPOCHS))

    cache, launch = _launcher(ref, tmp_path / "killed", "killed")
    run_dir = str(tmp_path / "killed" / "train" / "killed-forget-remind")
    known = {a["ActorID"] for a in _train_worker_actors()}
    thread = Launch(launch, cfg, tasks)
    thread.start()
    deadline = time.monotonic() + 240
    try:
        # Wait (bounded) for a checkpoint of the remind stage's third epoch, then kill the
        # worker. (Not the first: a checkpoint written just before the kill may not have been
        # registered by the Train controller yet, which polls every 0.5 s.)
        while max((snap["epoch"] for snap in _snapshots(run_dir, rkey).values()),
                  default=-1) < 2:
            assert time.monotonic() < deadline, "no remind checkpoint within 240 s"
            thread.join(0.1)
            if not thread.is_alive():
                thread.result(0)
                pytest.fail("the stage finished before its worker could be killed")
        alive = [a for a in _train_worker_actors("ALIVE") if a["ActorID"] not in known]
        assert len(alive) == 1, alive
        victim = alive[0]
        assert victim["Pid"] and victim["Pid"] != os.getpid()
        os.kill(victim["Pid"], signal.SIGKILL)
        # Every remind checkpoint complete at the moment of the kill: Ray Train restores the
        # latest one it had registered, which is among these (their writer is gone, and a new
        # worker group takes seconds to start).
        at_kill = _snapshots(run_dir, rkey)
        assert at_kill
        forget_meta = (tmp_path / "killed" / "stages" / f"forget-{fkey[:24]}" / "meta.json")
        assert forget_meta.is_file()  # the forget stage had finished before the kill
        forget_written = forget_meta.read_bytes()
        outputs = thread.result(timeout=240)
    finally:
        if thread.is_alive():  # leave no stage running into the next test
            for a in _train_worker_actors("ALIVE"):
                if a["ActorID"] not in known and a["Pid"]:
                    os.kill(a["Pid"], signal.SIGKILL)
            thread.join(60)

    out = outputs[rkey]
    # A new worker replaced the killed one, which is recorded as dead.
    started = {a["ActorID"] for a in _train_worker_actors()} - known
    assert victim["ActorID"] in started and len(started) >= 2
    assert any(a["ActorID"] == victim["ActorID"] for a in _train_worker_actors("DEAD"))

    # Both stage outputs are in the cache; the finished forget stage was not run again.
    stages = StageCache(str(tmp_path / "killed" / "stages"))
    assert stages.has("forget", fkey) and stages.has("remind", rkey)
    assert forget_meta.read_bytes() == forget_written
    assert stages.get("remind", rkey).meta["steps"] == out.meta["steps"]
    # With both stages in the cache, their Ray Train checkpoints were deleted.
    assert not os.path.exists(run_dir)

    # Each remind epoch ran once overall, with the steps of the uninterrupted run.
    history = out.meta["history"]
    assert [h["epoch"] for h in history] == list(range(EPOCHS))
    assert out.meta["steps"] == plain.meta["steps"] > EPOCHS
    assert out.meta["epochs_run"] == plain.meta["epochs_run"] == EPOCHS
    assert out.meta["layers"] == plain.meta["layers"]

    # Resumed, not started over: the epochs up to the restored checkpoint are that
    # checkpoint's own records (their timings included, which a rerun would not reproduce) ...
    restored = [snap for snap in at_kill.values()
                if snap["history"] and history[:len(snap["history"])] == snap["history"]]
    assert restored, ("no checkpoint at the kill is a prefix of the final history: the stage "
                      "started over instead of resuming")
    assert max(snap["epoch"] for snap in restored) < EPOCHS - 1  # the kill was mid-stage
    # ... and the epochs after it trained on from the checkpoint's weights, optimizer and EMA:
    # the final weights are those of the uninterrupted run.
    for k in plain.state:
        assert torch.allclose(out.state[k], plain.state[k], atol=1e-5, rtol=1e-5), k
    base = tiny_prepared.base_visual_state()
    assert max((out.state[k] - base[k]).abs().max().item()
               for k in out.state if out.state[k].is_floating_point()) > 1e-4


# --- a trial that raises inside a search ----------------------------------------------------------

# On a ViT image tower (no BatchNorm), remind.bn_align_images > 0 is valid config but makes the
# remind stage raise ConfigError: the trials that draw 8 fail, those that draw 0 run. (With
# search.seed 3 the random sampler draws both values.) resources.max_failures keeps its default
# (2): a restart after the stage code's own error raises it again without running the stage.
SPACE = """\
method: three_stage
fixed:
  restore.choose: fixed
params:
  remind.bn_align_images: {type: categorical, choices: [0, 8]}
  restore.alpha: {type: float, low: 0.0, high: 1.0}
"""
FAULTY_SEARCH = {**SEARCHABLE, "model.name": "DF-ViT-Tiny-32", "remind.bn_align_images": None,
                 "forget.epochs": 1, "remind.epochs": 1, "search.num_trials": 4,
                 "search.sampler": "random", "search.seed": 3, "search.baselines": [],
                 "search.confirm_seeds": 0, "output.name": "faulty"}


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
    assert cfg.resources.max_failures == 2
    known = {a["ActorID"] for a in _train_worker_actors()}
    summary = run_search(cfg, log=print)
    workers = [a for a in _train_worker_actors() if a["ActorID"] not in known]

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
        # One worker: the stage runs in the trial's actor and its own error is recorded as it
        # was raised (a restart raises it again from the record, without running the stage).
        assert record["error"].startswith("ConfigError: remind.bn_align_images")
    # No Ray Train worker group at all: one-worker trials run their stages in their own actor.
    assert workers == [], [a["ActorID"] for a in workers]
    # The failed launches' checkpoints and error records are gone.
    assert not (run / "train").exists() or not any((run / "train").iterdir())

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


# --- a one-worker trial's actor killed mid-stage --------------------------------------------------

ONE_TRIAL_SPACE = """\
method: three_stage
fixed:
  restore.choose: fixed
params:
  restore.alpha: {type: float, low: 0.0, high: 1.0}
"""


def _trial_actors(state: str | None = None) -> list[dict]:
    """Tune's function-trainable actors of the session cluster (see _train_worker_actors)."""
    from ray._private.state import actors

    return [a for a in actors(actor_state_name=state).values()
            if "ImplicitFunc" in a["ActorClassName"]]


def _remind_snapshot(run) -> dict | None:
    """A trial's snapshot of a stage after the cached forget stage (remind), at epoch 2 or
    later; None while there is none."""
    forget = {p.name.split("-", 1)[1] for p in (run / "stages").glob("forget-*")
              if (p / "meta.json").is_file()}
    for path in glob.glob(str(run / "train" / "*" / "snapshot.pt")):
        try:
            snap = torch.load(path, weights_only=True)
        except Exception:  # being replaced right now
            continue
        if forget and snap["stage_key"][:24] not in forget and snap["epoch"] >= 2:
            return snap
    return None


@pytest.mark.slow
def test_a_killed_trial_actor_is_restarted_and_its_stage_resumes(
        ray_cluster, tiny_cfg, tmp_path):
    """One worker: the stages run in the trial's actor. SIGKILL it while remind trains: Tune
    starts the trial again, forget comes from the stage cache, remind resumes from its snapshot,
    and the trial is recorded once, ok."""
    from distforget.distributed.tuner import run_search

    space = tmp_path / "space.yaml"
    space.write_text(ONE_TRIAL_SPACE)
    items = {**SEARCHABLE, **STAGES, "search.space": str(space), "search.num_trials": 1,
             "search.sampler": "random", "search.baselines": [], "search.confirm_seeds": 0,
             "resources.max_failures": 2, "output.storage": str(tmp_path),
             "output.name": "killed-actor"}
    cfg = load_config(None, [f"{k}={json.dumps(v) if isinstance(v, list) else v}"
                             for k, v in items.items()])
    assert cfg.resources.workers == 1
    known = {a["ActorID"] for a in _trial_actors()}
    run = tmp_path / "killed-actor"
    outcome = {}

    def search():
        try:
            outcome["summary"] = run_search(cfg, log=print)
        except BaseException as exc:  # handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=search, daemon=True)
    thread.start()
    deadline = time.monotonic() + 300
    while (snapshot := _remind_snapshot(run)) is None:
        assert time.monotonic() < deadline, "no remind snapshot of epoch 2 within 300 s"
        assert thread.is_alive(), f"the search ended before the kill: {outcome}"
        thread.join(0.1)  # wakes at once if the search ends
    alive = [a for a in _trial_actors("ALIVE") if a["ActorID"] not in known]
    assert len(alive) == 1, alive
    victim = alive[0]
    os.kill(victim["Pid"], signal.SIGKILL)
    thread.join(300)
    assert not thread.is_alive(), "the search did not finish within 300 s of the kill"
    if "error" in outcome:
        raise outcome["error"]

    results = pd.read_parquet(run / "results.parquet")
    trials = results[results["source"] == "trial"]
    assert len(trials) == 1 and (trials["status"] == "ok").all()
    assert any(a["ActorID"] == victim["ActorID"] for a in _trial_actors("DEAD"))
    record = json.loads((run / "trials" / f"{trials['trial_id'].iloc[0]}.json").read_text())
    assert record["status"] == "ok" and record["timing"]["path"] == "in-actor"
    assert record["timing"]["pid"] != victim["Pid"]  # the record is the restarted trial's
    # The restarted trial took forget from the cache and resumed remind from the snapshot.
    assert record["stages"]["forget"]["cached"]
    remind = StageCache(str(run / "stages")).get("remind", record["stages"]["remind"]["key"])
    history = remind.meta["history"]
    assert [h["epoch"] for h in history] == list(range(EPOCHS))
    assert history[:len(snapshot["history"])] == snapshot["history"]
    assert not list((run / "train").glob("*/snapshot.pt"))  # removed once cached
