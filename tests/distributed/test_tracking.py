"""output.callbacks: Ray Tune's TensorBoard and MLflow loggers receive every trial's per-epoch
stage metrics and its objectives; a tracker whose package is missing is refused up front."""

import importlib.util
import json
import struct
import subprocess
import sys

import pytest

from distforget.config import load_config
from distforget.distributed import tracking
from distforget.errors import ConfigError
from tests.distributed.test_search import overrides


def test_a_missing_tracker_package_is_refused_naming_its_extra(monkeypatch):
    monkeypatch.setitem(tracking.TRACKERS, "mlflow", ("no_such_module_df", "mlflow"))
    with pytest.raises(ConfigError, match=r"mlflow needs the no_such_module_df package.*"
                                          r"pip install 'distforget\[mlflow\]'"):
        tracking.check_trackers(["tensorboard", "mlflow"])
    tracking.check_trackers([])


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb installed")
def test_the_search_command_refuses_it_before_any_work(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "distforget.search",
                           "output.callbacks=[wandb]", f"output.storage={tmp_path}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "python -m distforget.search: error: output.callbacks: wandb needs the wandb package, "
        "which is not installed: pip install 'distforget[wandb]'")
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr


def tfevents_scalars(path) -> dict[str, list[tuple[int, float]]]:
    """Tag -> [(step, value)] from a TensorBoard event file (TFRecord framing: length, its
    CRC, the Event proto, its CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, list] = {}
    data = path.read_bytes()
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        event = Event.FromString(data[pos + 12:pos + 12 + length])
        pos += 12 + length + 4
        for value in event.summary.value:
            out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


@pytest.mark.ray
@pytest.mark.slow
def test_tensorboard_and_mlflow_get_per_epoch_stage_metrics_and_the_objectives(
        ray_cluster, tmp_path):
    pytest.importorskip("tensorboardX", reason="the tensorboard extra is not installed")
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    from mlflow.tracking import MlflowClient

    from distforget.distributed.tuner import run_search

    cfg = load_config(None, overrides(tmp_path, **{
        "search.num_trials": 1, "search.baselines": [], "search.confirm_seeds": 0,
        "forget.epochs": 3, "remind.epochs": 3,
        "output.callbacks": ["tensorboard", "mlflow"]}))
    summary = run_search(cfg, log=print)
    run = tmp_path / "embedded-default"
    record = json.loads(next((run / "trials").glob("*.json")).read_text())
    epochs = {s: record["stages"][s]["epochs_run"] for s in ("forget", "remind")}
    # The forget stage may stop early (forget.target_acc); remind runs every epoch.
    assert summary["front_size"] >= 1 and epochs["forget"] >= 1 and epochs["remind"] == 3

    # TensorBoard: one point per epoch of each stage, then the objectives.
    events, = (run / "tune-000" / record["trial_id"]).glob("events.out.tfevents.*")
    scalars = tfevents_scalars(events)
    for stage in ("forget", "remind"):
        points = scalars[f"ray/tune/{stage}/epoch"]
        assert [v for _, v in points] == list(range(epochs[stage])), points
    assert [v for _, v in scalars["ray/tune/forget_acc"]] == [record["forget_acc"]]

    # MLflow (its local store in the run folder): the same, as metric histories of one run.
    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("embedded-default")
    mlrun, = client.search_runs([experiment.experiment_id])
    remind = client.get_metric_history(mlrun.info.run_id, "remind/epoch")
    assert [m.value for m in remind] == list(range(epochs["remind"]))
    assert len({m.step for m in remind}) == epochs["remind"]  # one step per epoch
    forget_acc = client.get_metric_history(mlrun.info.run_id, "forget_acc")
    assert [m.value for m in forget_acc] == [pytest.approx(record["forget_acc"])]
