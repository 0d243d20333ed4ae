"""``output.storage: s3://...`` for real, against a local S3 server (moto's server mode on a
free loopback port, started and stopped by this test; no network).

The search runs as a user runs it: ``python -m distforget.search`` in its own process (its own
local Ray), with the endpoint and the credentials in the environment variables the README
documents (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``), which pyarrow's S3 filesystem reads in every process. Then the same
command resumes it with one more trial, reading results, records and the study journal back
from the bucket, and ``python -m distforget.export`` rebuilds the chosen point from it.
"""

import io
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs
import pytest

from tests.distributed.processes import free_ports, stop_tree, wait_for
from tests.factories import SEARCHABLE

pytestmark = [pytest.mark.ray, pytest.mark.slow]

pytest.importorskip("moto", reason="needs moto[server] (the test extra)")

BUCKET = "distforget-test"
STORAGE = f"s3://{BUCKET}/runs"
NAME = "s3-search"
SEARCH = {**SEARCHABLE, "search.num_trials": 2, "search.baselines": [],
          "search.sampler": "random", "search.confirm_seeds": 0, "forget.epochs": 1,
          "remind.epochs": 1, "output.storage": STORAGE, "output.name": NAME}


class S3Server:
    """moto's S3 server on a free loopback port, in a process of its own."""

    def __init__(self, log: Path):
        self.port, = free_ports(1)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.env = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                    "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}

    def up(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2):
                return True
        except OSError:
            return False

    def fs(self, **kwargs) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(endpoint_override=self.endpoint, access_key="testing",
                                 secret_key="testing", region="us-east-1", **kwargs)

    def read(self, key: str) -> bytes:
        with self.fs().open_input_stream(f"{BUCKET}/{key}") as f:
            return f.read()

    def keys(self, prefix: str) -> list[str]:
        infos = self.fs().get_file_info(pafs.FileSelector(f"{BUCKET}/{prefix}", recursive=True))
        return sorted(i.path[len(BUCKET) + 1:] for i in infos if i.type == pafs.FileType.File)

    def stop(self) -> list:
        left = stop_tree(self.proc.pid)
        self.proc.wait(timeout=10)
        self.log.close()
        return left


@pytest.fixture
def s3(tmp_path):
    server = S3Server(tmp_path / "moto.log")
    try:
        wait_for(server.up, 60, "the S3 server", poll=0.2, proc=server.proc)
        server.fs(allow_bucket_creation=True).create_dir(BUCKET)
        yield server
    finally:
        left = server.stop()
    assert not left, f"S3 server processes still running: {left}"


def run_cli(module: str, args: list[str], env: dict, timeout: float, cwd: Path
            ) -> subprocess.CompletedProcess:
    """``python -m module args`` in its own session, bounded; its whole tree is stopped on a
    timeout."""
    proc = subprocess.Popen([sys.executable, "-m", module, *args], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_tree(proc.pid)
        out, _ = proc.communicate()
        pytest.fail(f"python -m {module} did not finish within {timeout:.0f} s:\n{out[-4000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, None)


def as_args(items: dict) -> list[str]:
    return [f"{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in items.items()]


def test_a_search_on_s3_writes_resumes_and_exports_from_the_bucket(s3, tmp_path):
    import optuna
    import torch
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from safetensors.torch import load as load_safetensors

    repo = Path(__file__).resolve().parents[2]
    cache = Path(os.environ["DISTFORGET_CACHE"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    env.update(s3.env, OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0",
               PYTHONPATH=os.pathsep.join(p for p in (str(repo), env.get("PYTHONPATH")) if p))
    # The driver runs elsewhere than the test: nothing may land in a local folder of that name.
    workdir = tmp_path / "cwd"
    workdir.mkdir()

    first = run_cli("distforget.search", as_args(SEARCH), env, 420, workdir)
    assert first.returncode == 0, first.stdout[-6000:]
    assert f"run folder {STORAGE}/{NAME}" in first.stdout

    run = f"runs/{NAME}"
    keys = s3.keys(run)
    for name in ("run.json", "base.safetensors", "results.parquet", "pareto.parquet",
                 "pareto.csv", "pareto.png", "report.md", "optuna.journal",
                 "best/model.safetensors", "best/distforget.json"):
        assert f"{run}/{name}" in keys, name
    # The stage cache: a forget and a remind output per trial (weights, then meta.json).
    metas = [k for k in keys if k.startswith(f"{run}/stages/") and k.endswith("/meta.json")]
    assert {k.split("/")[3].split("-")[0] for k in metas} == {"forget", "remind"}
    assert all(k.replace("meta.json", "model.safetensors") in keys for k in metas)
    results = pd.read_parquet(io.BytesIO(s3.read(f"{run}/results.parquet")))
    trials = results[results["source"] == "trial"]
    assert len(trials) == 2 and trials["trial_id"].is_unique and (trials["status"] == "ok").all()
    for tid in trials["trial_id"]:
        assert f"{run}/trials/{tid}.json" in keys
    assert "## Pareto front" in s3.read(f"{run}/report.md").decode()
    assert s3.read(f"{run}/pareto.png").startswith(b"\x89PNG")
    # Ray Train's per-epoch checkpoints went to the bucket too, and were removed once each
    # stage was in the stage cache; nothing of the run was written to the local disk.
    assert not [k for k in keys if k.startswith(f"{run}/train/") and "checkpoint_" in k]
    assert not list(workdir.iterdir())

    # Resume with one more trial. The local copy of the study journal is removed first, so the
    # study can only come from the bucket.
    shutil.rmtree(cache / "studies", ignore_errors=True)
    second = run_cli("distforget.search", as_args({**SEARCH, "search.num_trials": 3}), env,
                     420, workdir)
    assert second.returncode == 0, second.stdout[-6000:]
    assert f"resuming: 2 trials of {NAME} finished, 1 to run" in second.stdout
    resumed = pd.read_parquet(io.BytesIO(s3.read(f"{run}/results.parquet")))
    again = resumed[resumed["source"] == "trial"]
    assert len(again) == 3 and again["trial_id"].is_unique
    assert set(trials["trial_id"]) < set(again["trial_id"])
    before = trials.set_index("trial_id")["forget_acc"]
    assert again.set_index("trial_id").loc[before.index, "forget_acc"].equals(before)

    journal = tmp_path / "optuna.journal"
    journal.write_bytes(s3.read(f"{run}/optuna.journal"))
    study = optuna.load_study(study_name=NAME,
                              storage=JournalStorage(JournalFileBackend(str(journal))))
    # One COMPLETE study trial per row of the search (the trials and their sweep soups).
    states = {t.user_attrs.get("tune_trial_id"): t.state for t in study.trials}
    searched = resumed[resumed["source"].isin(["trial", "sweep"])]
    assert set(states) == set(searched["trial_id"]) and len(study.trials) == len(searched)
    assert set(states.values()) == {optuna.trial.TrialState.COMPLETE}

    # Export reads the run from the bucket: base weights, stage cache, results, run.json.
    out = tmp_path / "exported"
    exported = run_cli("distforget.export", ["--run", f"{STORAGE}/{NAME}", "--out", str(out)],
                       env, 180, workdir)
    assert exported.returncode == 0, exported.stdout[-4000:]
    card = json.loads((out / "distforget.json").read_text())
    best = json.loads(s3.read(f"{run}/best/distforget.json"))
    assert card["trial_id"] == best["trial_id"]
    mine = load_safetensors((out / "model.safetensors").read_bytes())
    theirs = load_safetensors(s3.read(f"{run}/best/model.safetensors"))
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
