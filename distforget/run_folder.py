"""A search's run folder, ``<output.storage>/<output.name>/``: every file name it holds, the
check that a folder holds this same search, and what resuming an interrupted search needs. No
Ray here: the tuner drives the search, this module owns its files.

    run.json            config, search space, identity, model, base metrics
    base.safetensors    the base model (so export needs no data and no network)
    optuna.journal      the Optuna study (open it with optuna-dashboard)
    results.parquet     one row per trial and per extra soup, appended as trials finish
    trials/<id>.json    each trial's own record, written before it reports
    stages/             the content-addressed stage cache
    tune-NNN/, baselines-NNN/, train/   Tune's experiment state and Ray Train's checkpoints
    pareto.parquet, pareto.csv, pareto.png, report.md, best/
    search.log          distforget's own lines of every attempt (trials, front, outputs)

Running the same search on the same folder resumes: trials whose record exists are kept (and
appended to results.parquet if the driver died before it could), the study is told about them,
trials that were cut off are marked failed in the study, and only the missing number of trials
runs. A folder that holds a different search is refused.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from distforget import storage
from distforget.config import RunConfig
from distforget.data.sources import default_cache_dir
from distforget.errors import ConfigError
from distforget.results import append_results, read_results, rows_from_record
from distforget.study import Steering, add_sweep_points, objective_values, set_constraints

# Keys that may change between a search and its resumption.
RESUMABLE = {("search", "num_trials"), ("search", "max_concurrent_trials"), ("search", "pick"),
             ("search", "pick_margin"), ("search", "pick_margin_unit"),
             ("resources",), ("output", "storage"), ("output", "shared"),
             ("output", "callbacks"), ("output", "verbose")}


def identity_view(cfg: RunConfig) -> dict:
    """The config without the keys that may change when a search is resumed."""
    data = cfg.to_dict()
    for path in RESUMABLE:
        node = data
        for part in path[:-1]:
            node = node[part]
        node.pop(path[-1], None)
    return data


def search_identity(cfg: RunConfig, space_text: str) -> str:
    payload = json.dumps({"config": identity_view(cfg), "space": space_text}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def config_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += config_diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def run_info(cfg: RunConfig, identity: str, space, space_text: str,
             prepared) -> dict:
    """What run.json holds."""
    return {
        "identity": identity, "identity_view": identity_view(cfg), "space_text": space_text,
        "space_source": space.source, "config": cfg.to_dict(), "fingerprint": prepared.fingerprint,
        "model": dict(prepared.spec.__dict__), "base_metrics": prepared.base_metrics,
        "classes": list(prepared.classes), "prepared": prepared.info,
    }


@dataclass(frozen=True)
class RunFolder:
    """The files of one run folder (a local path or a URI), by name."""

    root: str

    RUN_INFO = "run.json"
    BASE_WEIGHTS = "base.safetensors"
    JOURNAL = "optuna.journal"
    RESULTS = "results.parquet"
    TRIALS = "trials"
    STAGES = "stages"
    TRAIN = "train"
    PARETO = "pareto.parquet"
    PARETO_CSV = "pareto.csv"
    PLOT = "pareto.png"
    REPORT = "report.md"
    BEST = "best"
    LOG = "search.log"

    @classmethod
    def of(cls, cfg: RunConfig) -> "RunFolder":
        """``<output.storage>/<output.name>``, a local storage path made absolute."""
        root = cfg.output.storage
        if not storage.is_remote(root):
            root = os.path.abspath(root)
        return cls(storage.join(root, cfg.output.name))

    def path(self, name: str) -> str:
        return storage.join(self.root, name)

    @property
    def results(self) -> str:
        return self.path(self.RESULTS)

    @property
    def stages(self) -> str:
        return self.path(self.STAGES)

    @property
    def train(self) -> str:
        return self.path(self.TRAIN)

    @property
    def best(self) -> str:
        return self.path(self.BEST)

    @property
    def report(self) -> str:
        return self.path(self.REPORT)

    @property
    def base_weights(self) -> str:
        return self.path(self.BASE_WEIGHTS)

    def read_results(self) -> pd.DataFrame:
        return read_results(self.results)

    def append_results(self, rows) -> pd.DataFrame:
        return append_results(self.results, rows)

    # --- run.json --------------------------------------------------------------------------

    def has_info(self) -> bool:
        return storage.exists(self.path(self.RUN_INFO))

    def read_info(self) -> dict[str, Any]:
        path = self.path(self.RUN_INFO)
        if not storage.exists(path):
            raise ConfigError(f"{self.root!r} is not a distforget run folder: no run.json")
        return json.loads(storage.read_bytes(path))

    def write_info(self, info: dict[str, Any], base_state: dict[str, np.ndarray]) -> None:
        """run.json, and the base weights once (so export needs neither data nor network)."""
        if not storage.exists(self.base_weights):
            import torch
            from safetensors.torch import save as save_safetensors

            full = {k: torch.from_numpy(np.array(v)) for k, v in base_state.items()}
            storage.write_bytes(self.base_weights, save_safetensors(full))
        storage.write_bytes(self.path(self.RUN_INFO),
                            json.dumps(info, indent=2, default=float).encode())

    def check_resumable(self, cfg: RunConfig, identity: str, space_text: str) -> dict | None:
        """The existing run.json when this folder holds this same search; None for a new or
        empty folder; a ``ConfigError`` naming what differs for another search."""
        if not storage.exists(self.path(self.RUN_INFO)):
            # `distforget unlearn` may have written its records in the same folder.
            if set(storage.list_names(self.root)) - {"unlearn.json", "unlearn"}:
                raise ConfigError(f"output folder {self.root!r} is not empty and holds no "
                                  "distforget search: choose another output.name or "
                                  "output.storage")
            return None
        info = self.read_info()
        if info.get("identity") != identity:
            changed = config_diff(info.get("identity_view", {}), identity_view(cfg))
            if info.get("space_text") != space_text:
                changed.append("search.space (its contents)")
            raise ConfigError(
                f"output folder {self.root!r} holds a different search's results (differs in: "
                f"{', '.join(changed) or 'config'}); use another output.name, or the original "
                "config to resume it")
        return info

    # --- trial records ---------------------------------------------------------------------

    def trial_record_path(self, trial_id: str) -> str:
        return storage.join(self.root, self.TRIALS, f"{trial_id}.json")

    def read_trial_record(self, trial_id: str) -> dict | None:
        path = self.trial_record_path(trial_id)
        return json.loads(storage.read_bytes(path)) if storage.exists(path) else None

    def write_trial_record(self, record: dict[str, Any]) -> str:
        """Write a trial's record (atomically) and return it as JSON text."""
        text = json.dumps(record, default=float)
        storage.write_bytes(self.trial_record_path(record["trial_id"]), text.encode())
        return text

    def recover_records(self) -> int:
        """Append trial records that were written but never reached results.parquet; returns
        how many rows were added."""
        results = self.read_results()
        known = set(results["trial_id"]) if len(results) else set()
        rows = []
        for name in storage.list_names(self.path(self.TRIALS)):
            if not name.endswith(".json"):
                continue
            tid = name[:-len(".json")]
            if tid not in known:
                rows += rows_from_record(self.read_trial_record(tid))
        if rows:
            self.append_results(rows)
        return len(rows)

    def attempt(self, prefix: str) -> str:
        """A fresh name for a Tune experiment of this folder: ``<prefix>-NNN``."""
        n = sum(1 for name in storage.list_names(self.root) if name.startswith(prefix + "-"))
        return f"{prefix}-{n:03d}"

    def study_store(self) -> "StudyStore":
        return StudyStore(self)


def is_builtin_print(fn) -> bool:
    """Whether ``fn`` is Python's own ``print``, whatever ``builtins.print`` is now."""
    return getattr(fn, "__module__", None) == "builtins" and getattr(fn, "__name__", None) == "print"


def printed(message: str) -> None:
    """Show a line on the console (a named function, so the objects holding it pickle)."""
    print(message, flush=True)


class RunLog:
    """distforget's own lines: shown (``echo``; None: printed), and appended with a UTC time to
    ``search.log`` in the run folder (rewritten whole on object storage, which has no append).
    Tune pickles the callbacks that hold it, so it holds no reference to ``print`` itself:
    Ray replaces ``builtins.print`` in the driver once worker output reaches it (its tqdm
    support), after which the original ``print`` no longer pickles by name."""

    def __init__(self, folder: RunFolder, echo=None):
        self.path = folder.path(RunFolder.LOG)
        self.echo = printed if echo is None or is_builtin_print(echo) else echo
        self.remote = storage.is_remote(folder.root)
        self._lines: list[str] = []
        if self.remote and storage.exists(self.path):
            self._lines = storage.read_bytes(self.path).decode().splitlines(keepends=True)

    def __call__(self, message: str) -> None:
        self.echo(message)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        lines = [f"{stamp}  {line}\n" for line in message.splitlines() or [""]]
        if self.remote:
            self._lines += lines
            storage.write_bytes(self.path, "".join(self._lines).encode())
        else:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(self.path, "a") as f:
                f.writelines(lines)


class StudyStore:
    """The study's journal: in the run folder when that is a local path; for object storage a
    local copy under the cache folder, uploaded to the run folder after every trial."""

    def __init__(self, folder: RunFolder):
        self.folder = folder
        self.remote = folder.path(RunFolder.JOURNAL)
        if storage.is_remote(folder.root):
            key = hashlib.sha256(folder.root.encode()).hexdigest()[:16]
            self.local = default_cache_dir() / "studies" / f"{key}.journal"
            self.local.parent.mkdir(parents=True, exist_ok=True)
            if storage.exists(self.remote):
                self.local.write_bytes(storage.read_bytes(self.remote))
        else:
            self.local = Path(self.remote)
            self.local.parent.mkdir(parents=True, exist_ok=True)

    def storage(self) -> optuna.storages.BaseStorage:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(str(self.local)))

    def sync(self) -> None:
        if storage.is_remote(self.folder.root) and self.local.exists():
            storage.write_bytes(self.remote, self.local.read_bytes())


def reconcile_study(study: optuna.Study, folder: RunFolder, steering: Steering = Steering()
                    ) -> dict[str, int]:
    """After an interrupted search: tell the study about trials that finished (their record was
    written) but were never told, with their constraint values (``steering``), and mark
    the others, which were cut off, as failed."""
    counts = {"told": 0, "failed": 0}
    running = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    for t in study.get_trials(deepcopy=False, states=running):
        tid = t.user_attrs.get("tune_trial_id")
        record = folder.read_trial_record(tid) if tid else None
        values = objective_values(record) if record and record.get("status") == "ok" else None
        if values is not None:
            set_constraints(optuna.Trial(study, t._trial_id), record, steering)
            study.tell(t.number, values)
            add_sweep_points(study, t.distributions, record, steering)
            counts["told"] += 1
        else:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            counts["failed"] += 1
    return counts
