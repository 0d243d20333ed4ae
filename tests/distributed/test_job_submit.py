"""The README's cluster path, end to end on one machine: a real Ray head on loopback with token
authentication on, the embedded default search (made small) submitted with ``ray job submit
--working-dir``, waited for with a bound, its outputs checked, and the head stopped.

The head is this test's own: its own ports, its own temporary folder, its own token file (named
by ``RAY_AUTH_TOKEN_PATH``, so ``~/.ray/auth_token`` is neither read nor written), and it is
stopped by killing the processes of the ``ray start --block`` process tree that the test
started. (``ray stop`` would stop every Ray on the machine, other people's included.)
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pandas as pd
import pytest

from tests.distributed.processes import free_ports, stop_process
from tests.factories import SEARCHABLE

pytestmark = pytest.mark.ray  # every test here starts or joins Ray

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
JOB = {**SEARCHABLE, "search.num_trials": 2, "search.baselines": [], "search.sampler": "random",
       "search.confirm_seeds": 0,
       "forget.epochs": 1, "remind.epochs": 1}


class Head:
    """A Ray head started with ``ray start --head --block`` in its own session."""

    def __init__(self, tmp_path: Path):
        # Unix socket paths are limited to ~107 bytes: the Ray folder must be short.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="dfray-", dir="/tmp"))
        self.token_path = tmp_path / "auth_token"
        self.token = uuid.uuid4().hex + uuid.uuid4().hex
        self.token_path.write_text(self.token)
        self.token_path.chmod(0o600)
        gcs, self.dashboard_port, client, agent = free_ports(4)
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("RAY_") or k == "RAY_TRAIN_V2_ENABLED"}
        self.env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path),
                    "RAY_TMPDIR": str(self.temp_dir), "RAY_USAGE_STATS_ENABLED": "0",
                    "DISTFORGET_CACHE": os.environ["DISTFORGET_CACHE"], "OMP_NUM_THREADS": "1",
                    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.log = open(tmp_path / "ray-start.log", "w")
        self.proc = subprocess.Popen(
            [RAY, "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
             "--port", str(gcs), "--dashboard-host", "127.0.0.1",
             "--dashboard-port", str(self.dashboard_port), "--include-dashboard", "true",
             "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent),
             "--num-cpus", "2", "--num-gpus", "0", "--object-store-memory", str(300 * 2**20),
             "--temp-dir", str(self.temp_dir), "--disable-usage-stats"],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def get(self, path: str, token: str | None) -> int:
        """HTTP status of a GET on the dashboard (with ``token`` as a bearer token, if any)."""
        req = urllib.request.Request(self.address + path)
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    def job(self, submission_id: str) -> dict:
        """The job's record from the dashboard's job API (with the token)."""
        req = urllib.request.Request(f"{self.address}/api/jobs/{submission_id}",
                                     headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.get("/api/jobs/", self.token) == 200:
                    return
            except OSError:  # not listening yet
                pass
            assert time.monotonic() < deadline, f"the head was not up within {timeout:.0f} s"
            try:
                self.proc.wait(timeout=0.5)
                pytest.fail("ray start exited: " + Path(self.log.name).read_text()[-3000:])
            except subprocess.TimeoutExpired:
                pass

    def ray(self, *args, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([RAY, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def stop(self) -> None:
        """Stop this head: every process of the tree ``ray start --block`` started (raylet and
        GCS, dashboard, workers, job drivers), SIGTERM first, then SIGKILL; nothing else."""
        self.left = stop_process(self.proc)
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def git_ignored(repo: Path) -> list[str]:
    """Paths in the working tree that git ignores (folders end with '/')."""
    out = subprocess.run(["git", "ls-files", "--others", "--ignored", "--exclude-standard",
                          "--directory"], cwd=repo, capture_output=True, text=True, check=True)
    return [line for line in out.stdout.splitlines() if line]


@pytest.mark.slow
def test_the_embedded_search_submitted_as_a_job_to_a_token_authenticated_head(tmp_path):
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        pytest.skip("needs the git checkout (the upload honours its .gitignore)")
    home_token = Path.home() / ".ray" / "auth_token"
    home_token_before = home_token.read_bytes() if home_token.exists() else None
    storage = tmp_path / "runs"
    overrides = [f"{k}={json.dumps(v, separators=(',', ':')) if isinstance(v, list) else v}"
                 for k, v in {**JOB, "output.storage": str(storage)}.items()]
    submission_id = f"distforget-test-{uuid.uuid4().hex[:12]}"
    # An ignored file of this test's own (bench/out/ is in .gitignore), so the check below
    # does not depend on which caches happen to exist in the working tree.
    probe = REPO / "bench" / "out" / f"ignored-probe-{submission_id}.txt"
    probe_dir_existed = probe.parent.exists()
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text("git ignores this file; the job upload must leave it out\n")

    head = Head(tmp_path)
    try:
        head.wait_ready(timeout=180)
        # Authentication is on: the job API refuses a request without the token, or with
        # another one.
        assert head.get("/api/jobs/", None) == 401
        assert head.get("/api/jobs/", "0" * 64) in (401, 403)

        submit = head.ray("job", "submit", "--address", head.address,
                          "--submission-id", submission_id, "--working-dir", str(REPO),
                          "--no-wait", "--", "python", "-m", "distforget.search",
                          *overrides)  # ray job submit quotes each word (shlex.join)
        assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
        assert submission_id in submit.stdout + submit.stderr

        # Wait (bounded) for the job: `ray job logs --follow` returns when the job ends.
        follow = subprocess.Popen([RAY, "job", "logs", "--address", head.address, "--follow",
                                   submission_id], env=head.env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        try:
            logs, _ = follow.communicate(timeout=420)
        except subprocess.TimeoutExpired:
            follow.kill()
            logs, _ = follow.communicate()
            head.ray("job", "stop", "--address", head.address, submission_id)
            pytest.fail("the job did not finish within 7 minutes:\n" + logs[-4000:])
        status = head.ray("job", "status", "--address", head.address, submission_id)
        assert status.returncode == 0, status.stdout[-2000:] + status.stderr[-2000:]
        assert head.job(submission_id)["status"] == "SUCCEEDED", logs[-6000:]

        # The job ran the search from the uploaded copy of the repository ...
        packages = [p for p in head.temp_dir.glob(
            "session_2*/runtime_resources/working_dir_files/_ray_pkg_*") if p.is_dir()]
        assert len(packages) == 1, packages
        upload = packages[0]
        for path in ("distforget/search.py", "distforget/distributed/tuner.py",
                     "search_spaces/embedded.yaml", "pyproject.toml", "README.md"):
            assert (upload / path).is_file(), path
        tracked = subprocess.run(["git", "ls-files", "distforget", "search_spaces", "configs"],
                                 cwd=REPO, capture_output=True, text=True, check=True).stdout
        missing = [p for p in tracked.splitlines()
                   if (REPO / p).is_file() and not (upload / p).is_file()]
        assert not missing, f"tracked files not uploaded: {missing[:10]}"
        # ... which left out what git ignores (build folders, caches, wheels) and .git.
        assert not (upload / ".git").exists()
        ignored = git_ignored(REPO)
        assert any(probe.name in p or p.rstrip("/") in ("bench/out", "bench") for p in ignored)
        assert not (upload / "bench" / "out" / probe.name).exists()
        shipped = [p for p in ignored if (upload / p.rstrip("/")).exists()]
        assert not shipped, f"ignored paths were uploaded: {shipped[:10]}"
        assert "distforget search embedded-default: 2 trials" in logs
        assert f"run folder {storage / 'embedded-default'}" in logs

        # The outputs.
        run = storage / "embedded-default"
        results = pd.read_parquet(run / "results.parquet")
        trials = results[results["source"] == "trial"]
        assert len(trials) == 2 and trials["trial_id"].is_unique
        assert (results["status"] == "ok").all()
        assert trials["forget_acc"].between(0, 1).all()
        report = run / "report.md"
        assert report.is_file() and "## Pareto front" in report.read_text()
        assert (run / "best" / "model.safetensors").stat().st_size > 0
        assert json.loads((run / "run.json").read_text())["config"]["search"]["num_trials"] == 2
    finally:
        head.stop()
        probe.unlink(missing_ok=True)
        if not probe_dir_existed:
            shutil.rmtree(probe.parent, ignore_errors=True)

    assert not head.left, f"processes of the head still running: {head.left}"
    assert head.proc.returncode is not None
    # The head's own token was used; the user's token file was neither created nor changed.
    assert (home_token.read_bytes() if home_token.exists() else None) == home_token_before
