"""Experiment tracking through Ray Tune's logger callbacks (``output.callbacks``).

Each name maps to Tune's own callback; its package is an optional extra of distforget, checked
before any work so a missing one is one line naming the extra, not a traceback after the first
trial. Every Tune result of a trial reaches them: the stages' per-epoch metrics (reported from
the Train workers, see ``distforget.distributed.train``) and the trial's final objectives.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Sequence

from distforget import storage
from distforget.errors import ConfigError

# name -> (module it needs, distforget extra that installs it)
TRACKERS = {"tensorboard": ("tensorboardX", "tensorboard"), "mlflow": ("mlflow", "mlflow"),
            "wandb": ("wandb", "wandb")}


def check_trackers(names: Sequence[str]) -> None:
    """Refuse a tracker whose package is not installed, naming the extra to install."""
    for name in names:
        module, extra = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"output.callbacks: {name} needs the {module} package, which is "
                              f"not installed: pip install 'distforget[{extra}]'")


def mlflow_uri(run: str) -> str:
    """MLflow's tracking URI: ``MLFLOW_TRACKING_URI``, else a local store in the run folder,
    ``sqlite:///<run>/mlflow.db`` (MLflow 3 keeps its ``./mlruns`` file store only behind
    ``MLFLOW_ALLOW_FILE_STORE``; SQLAlchemy comes with Optuna)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if storage.is_remote(run):
        raise ConfigError("output.callbacks: mlflow with a remote output.storage needs "
                          "MLFLOW_TRACKING_URI (a tracking server or a database)")
    return f"sqlite:///{Path(run, 'mlflow.db').resolve()}"


def tune_callbacks(names: Sequence[str], run: str, experiment: str) -> list:
    """Tune logger callbacks for ``names``; ``experiment`` names the MLflow experiment or W&B
    project (``WANDB_PROJECT`` wins)."""
    check_trackers(names)
    out = []
    for name in names:
        if name == "tensorboard":
            from ray.tune.logger import TBXLoggerCallback
            out.append(TBXLoggerCallback())
        elif name == "mlflow":
            from ray.air.integrations.mlflow import MLflowLoggerCallback
            out.append(MLflowLoggerCallback(tracking_uri=mlflow_uri(run),
                                            experiment_name=experiment, save_artifact=False))
        elif name == "wandb":
            from ray.air.integrations.wandb import WandbLoggerCallback
            out.append(WandbLoggerCallback(project=os.environ.get("WANDB_PROJECT", experiment)))
    return out
