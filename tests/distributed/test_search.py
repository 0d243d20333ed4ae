"""A small real search on CPU with Ray: outputs, export round trip, resume after a kill."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import open_clip
import pandas as pd
import pytest


from distforget.config import load_config
from distforget.objectives import OBJECTIVES, parse_target
from distforget.search_space import load_space
from distforget.study import Steering
from tests.factories import SEARCHABLE

pytestmark = pytest.mark.ray  # every test here starts or joins Ray

SEARCH = {**SEARCHABLE, "search.num_trials": 3, "search.sampler": "random",
          "search.confirm_seeds": 1, "forget.epochs": 1, "remind.epochs": 1}


def overrides(storage, **extra):
    items = {**SEARCH, "output.storage": str(storage), **extra}
    return [f"{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in items.items()]


@pytest.fixture(scope="module")
def finished_run(ray_cluster, tmp_path_factory):
    from distforget.distributed.tuner import run_search

    storage = tmp_path_factory.mktemp("runs")
    cfg = load_config(None, overrides(storage, **{"search.baselines": ["ga"]}))
    summary = run_search(cfg, log=print)
    return cfg, summary


def test_a_search_leaves_every_output(finished_run):
    cfg, summary = finished_run
    run = summary["run"]
    for name in ("results.parquet", "pareto.parquet", "pareto.csv", "pareto.png", "report.md",
                 "run.json", "base.safetensors", "optuna.journal", "best/model.safetensors",
                 "best/distforget.json"):
        assert os.path.isfile(os.path.join(run, name)), name
    results = pd.read_parquet(os.path.join(run, "results.parquet"))
    trials = results[results["source"] == "trial"]
    assert len(trials) == 3 and trials["trial_id"].is_unique
    assert set(results["source"]) == {"trial", "sweep", "baseline", "confirm"}
    assert (results["status"] == "ok").all()
    # Validation chose; test was measured afterwards for every front row, the chosen point,
    # its confirmation run and the baseline, with intervals.
    chosen = summary["chosen"]["trial_id"]
    confirmation, = results[results["source"] == "confirm"].itertuples()
    assert confirmation.parent_id == chosen
    front_ids = set(pd.read_parquet(os.path.join(run, "pareto.parquet"))["trial_id"])
    tested = results[results["trial_id"].isin(front_ids | {chosen, confirmation.trial_id})
                     | (results["source"] == "baseline")]
    for col in ("test_forget_acc", "test_retain_acc_lo", "test_zeroshot_acc_hi"):
        assert tested[col].notna().all(), col
    assert results["test_base_forget_acc"].notna().all()
    best = json.load(open(os.path.join(run, "best", "distforget.json")))
    assert best["trial_id"] == chosen
    assert set(best["validation"]) >= {"forget_acc", "retain_acc", "zeroshot_acc"}
    assert set(best["test"]) >= {"test_forget_acc", "test_forget_acc_lo", "test_forget_acc_hi"}
    assert len(best["confirmation"]["seeds"]) == 2
    assert isinstance(best["target"]["met_on_validation"], bool)
    for col in ("forget.lr", "forget_acc", "retain_acc", "zeroshot_acc", "base_forget_acc",
                "mia_auc", "wall_s"):
        assert col in results, col
    front = pd.read_parquet(os.path.join(run, "pareto.parquet"))
    assert 1 <= len(front) <= len(results) and summary["front_size"] == len(front)
    report = open(os.path.join(run, "report.md")).read()
    for heading in ("## Protocol", "## Budgets as run", "## Base model", "## Pareto front",
                    "## Chosen point", "### Confirmation seeds", "## Hypervolume",
                    "## Baselines"):
        assert heading in report
    png = open(os.path.join(run, "pareto.png"), "rb").read(8)
    assert png.startswith(b"\x89PNG")
    # Ray Train's per-epoch checkpoints are gone once each stage is in the stage cache.
    train = os.path.join(run, "train")
    assert not os.path.isdir(train) or os.listdir(train) == []
    # Trials are named by id: Tune's trial folders carry the ids, no dates.
    tune_dirs = [d for d in os.listdir(run) if d.startswith("tune-")]
    trial_dirs = os.listdir(os.path.join(run, tune_dirs[0]))
    for tid in trials["trial_id"]:
        assert tid in trial_dirs
    # The study holds the trials and the sweep points fed to it.
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    study = optuna.load_study(study_name=cfg.output.name, storage=JournalStorage(
        JournalFileBackend(os.path.join(run, "optuna.journal"))))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == len(results[results["source"].isin(["trial", "sweep"])])
    assert study.metric_names == ["forget_acc", "retain_acc", "zeroshot_acc"]
    trial_attrs = [t.user_attrs for t in complete if "sweep_of" not in t.user_attrs]
    assert all({"mia_auc", "forget_sim", "source"} <= set(a) for a in trial_attrs)
    # Each carries its constraint values against the target, for the sampler.
    assert all(set(t.constraints) == {"forget_acc<=0.05", "retain_acc>=0.9*base",
                                      "zeroshot_acc>=0.95*base"} for t in complete)
    # ... each the constraint's gap plus the pick's margin in standard errors over the run's
    # validation images, so the sampler aims at points the pick accepts.
    splits = json.load(open(os.path.join(run, "run.json")))["prepared"]["splits"]
    steering = Steering.of_run(cfg.search, splits)
    raw = Steering(parse_target(cfg.search.target))
    assert cfg.search.pick_margin > 0 and set(steering.sizes) == set(OBJECTIVES)
    rows = trials.set_index("trial_id")
    for t in complete:
        if "sweep_of" in t.user_attrs:
            continue
        row = rows.loc[t.user_attrs["tune_trial_id"]].to_dict()
        assert t.constraints == pytest.approx(steering.values(row))
        assert all(t.constraints[k] > v for k, v in raw.values(row).items())
    # The first trial ran at the config's own settings (search.start_from_config), once.
    point, _ = load_space(cfg.search.space, cfg).config_point(cfg)
    started = [t for t in complete if t.user_attrs.get("start") == "config"]
    assert len(started) == 1 and started[0].params == point and started[0].number == 0
    assert "first trial at the config's settings" in open(os.path.join(run, "search.log")).read()


def test_export_round_trip_through_open_clip_reproduces_the_metrics(finished_run, tmp_path, cpu):
    from distforget.export import main as export_main
    from distforget.prepare import prepare

    cfg, summary = finished_run
    run = summary["run"]
    prepared = prepare(cfg, cpu, log=lambda msg: None)  # the pretrained CLIP is cached
    assert json.load(open(os.path.join(run, "run.json")))["fingerprint"] == prepared.fingerprint
    results = pd.read_parquet(os.path.join(run, "results.parquet"))
    row = results[results["source"] == "trial"].iloc[0]
    assert export_main(["--run", run, "--trial", row["trial_id"], "--out",
                        str(tmp_path / "exp")]) == 0
    model, _, preprocess = open_clip.create_model_and_transforms(
        "DF-RN-Tiny-32", pretrained=str(tmp_path / "exp" / "model.safetensors"))
    metrics = prepared.evaluator(cpu).metrics(model.visual.eval())
    for k in ("forget_acc", "retain_acc", "zeroshot_acc", "forget_sim", "mia_auc"):
        assert metrics[k] == pytest.approx(row[k], abs=1e-6), k
    record = json.load(open(tmp_path / "exp" / "distforget.json"))
    assert record["trial_id"] == row["trial_id"] and len(record["sha256"]) == 64
    # The default pick is what the search exported to best/.
    best = json.load(open(os.path.join(run, "best", "distforget.json")))
    assert best["trial_id"] == summary["chosen"]["trial_id"]


def test_a_replay_with_a_finer_sweep_measures_new_soups_and_chooses_among_all(finished_run, cpu):
    from bench.soup_grid import new_soups, replay
    from distforget.trial import Recipe

    cfg, summary = finished_run
    run = summary["run"]
    results = pd.read_parquet(os.path.join(run, "results.parquet"))
    trials = results[results["source"] == "trial"]
    # Alphas the search's sweep did not measure: each trial gets each of them once; an alpha it
    # already measured (its sweep's 1.0) is not measured again.
    soups = new_soups(results, [0.93, 0.97, 1.0])
    assert sorted(p for p, _ in soups) == sorted(list(trials["trial_id"]) * 2)
    assert {r.alpha for _, r in soups} == {0.93, 0.97}
    assert all(isinstance(r, Recipe) and r.method == "three_stage" for _, r in soups)
    out = replay(Path(run), [0.93, 0.97], cpu)
    assert out["new soups"] == 2 * len(trials)
    (met_before, confident_before, n_before) = out["counts"]["before"]
    (met_after, confident_after, n_after) = out["counts"]["after"]
    assert n_after == n_before + 2 * len(trials)
    assert met_after >= met_before and confident_after >= confident_before
    # The pick before is the one the search exported; the one after has test metrics.
    assert out["before"]["trial_id"] == summary["chosen"]["trial_id"]
    assert all(0.0 <= out["test"][f"test_{m}"] <= 1.0
               for m in ("forget_acc", "retain_acc", "zeroshot_acc"))


def run_cli(args, env, **kw):
    return subprocess.Popen([sys.executable, "-m", "distforget.search", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.slow
def test_a_killed_search_resumes_without_losing_or_repeating_trials(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    args = overrides(tmp_path, **{"search.baselines": []})
    results = tmp_path / "embedded-default" / "results.parquet"
    proc = run_cli(args, env, start_new_session=True)
    deadline = time.monotonic() + 900
    try:
        # Wait (bounded) for the first finished trial, then kill the driver and its Ray.
        while not (results.exists() and len(pd.read_parquet(results)) >= 1):
            assert time.monotonic() < deadline, "no trial finished within 15 minutes"
            try:
                proc.wait(timeout=0.5)
                pytest.fail("the search ended before it could be interrupted:\n"
                            + proc.stdout.read()[-3000:])
            except subprocess.TimeoutExpired:
                pass
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = pd.read_parquet(results)
    first = before[before["source"] == "trial"].iloc[0]
    assert 1 <= (before["source"] == "trial").sum() < 3

    done = run_cli(args, env)
    out, _ = done.communicate(timeout=1500)
    assert done.returncode == 0, out[-4000:]
    assert "resuming:" in out
    after = pd.read_parquet(results)
    trials = after[after["source"] == "trial"]
    assert len(trials) == 3 and trials["trial_id"].is_unique and after["trial_id"].is_unique
    kept = trials.set_index("trial_id").loc[first["trial_id"]]
    assert kept["forget_acc"] == first["forget_acc"] and kept["alpha"] == first["alpha"]
    assert (tmp_path / "embedded-default" / "best" / "model.safetensors").exists()
    # The first trial at the config's settings was queued once, not again on resume.
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    study = optuna.load_study(study_name="embedded-default", storage=JournalStorage(
        JournalFileBackend(str(tmp_path / "embedded-default" / "optuna.journal"))))
    assert [t.number for t in study.trials if t.user_attrs.get("start") == "config"] == [0]
    assert out.count("first trial at the config's settings") == 0

    # The same folder with another search's settings is refused, and nothing is touched.
    snapshot = results.read_bytes()
    other = run_cli(args + ["forget.margin=0.3"], env)
    out, _ = other.communicate(timeout=600)
    assert other.returncode == 2
    assert "holds a different search's results (differs in: forget.margin)" in out
    assert results.read_bytes() == snapshot
