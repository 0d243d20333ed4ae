"""A Ray cluster of this test session's own on this machine: ``cluster/local-autoscaling.yaml``
started with Ray's fake multi-node provider (extra raylets driven by the real autoscaler).

The head has its own GCS and node ports, its own temporary folder and its own token
(``RAY_AUTH_TOKEN_PATH``, so ``~/.ray/auth_token`` is neither read nor written), and it is
stopped by killing the process tree of the ``ray start --block`` process that started it (the
fake worker raylets are children of the head's autoscaler, inside that tree). Never
``ray stop``: it would end other people's Ray too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import yaml

from tests.distributed.processes import free_ports, stop_process, stop_tree, tree

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# The fake provider names the head fff...00000 and worker nodes fff...00001, ...
HEAD_NODE_ID = "f" * 51 + "00000"


class FakeCluster:
    """``ray start --head --block --autoscaling-config`` on the local YAML, in its own session,
    with this cluster's GCS port, the given idle timeout, extra environment variables for
    every Ray process (``extra_env``), a dashboard if asked (Ray's state API needs it: Ray Train
    removes a dead controller's placement group through it) and any ``worker_type`` settings
    (``min_workers``, ...) of the YAML's ``cpu-worker`` type."""

    def __init__(self, tmp_path: Path, idle_timeout_s: float, extra_env: dict | None = None,
                 dashboard: bool = False, **worker_type):
        # Unix socket paths are limited to ~107 bytes: the Ray folder must be short.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="dfas-", dir="/tmp"))
        token = tmp_path / "auth_token"
        token.write_text(uuid.uuid4().hex + uuid.uuid4().hex)
        token.chmod(0o600)
        gcs, node_manager, object_manager, client, dashboard_port = free_ports(5)
        self.address = f"127.0.0.1:{gcs}"
        config = yaml.safe_load((REPO / "cluster" / "local-autoscaling.yaml").read_text())
        config["provider"]["gcs_address"] = self.address
        config["idle_timeout_minutes"] = idle_timeout_s / 60
        config["available_node_types"]["cpu-worker"].update(worker_type)
        config["max_workers"] = max(config["max_workers"],
                                    config["available_node_types"]["cpu-worker"]["max_workers"])
        self.config_path = tmp_path / "local-autoscaling.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.max_workers = config["available_node_types"]["cpu-worker"]["max_workers"]
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("RAY_") or k == "RAY_TRAIN_V2_ENABLED"}
        self.env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
                    "RAY_TMPDIR": str(self.temp_dir), "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
                    "OMP_NUM_THREADS": "1", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
                    "PYTHONPATH": os.pathsep.join(
                        p for p in (str(REPO), env.get("PYTHONPATH")) if p),
                    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                    # Ray code that looks for "the" cluster (the state API: Ray Train's
                    # placement group cleaner) must find this one among others on the machine.
                    "RAY_ADDRESS": self.address,
                    **(extra_env or {})}
        self.log = open(tmp_path / "ray-start.log", "w")
        self.proc = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
             "--port", str(gcs), "--node-manager-port", str(node_manager),
             "--object-manager-port", str(object_manager), "--ray-client-server-port",
             str(client), "--num-cpus", "0",
             *(["--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                "--dashboard-port", str(dashboard_port)] if dashboard
               else ["--include-dashboard", "false"]),
             "--object-store-memory", str(200 * 2**20), "--temp-dir", str(self.temp_dir),
             "--autoscaling-config", str(self.config_path), "--disable-usage-stats"],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def raylets(self) -> dict[str, int]:
        """Node id -> raylet pid, for every raylet of this cluster (head and workers)."""
        out = {}
        for p in tree(self.proc.pid):
            try:
                if p.name() == "raylet":
                    # A raylet being started may not show its arguments yet: skipped until then.
                    for arg in p.cmdline():
                        if arg.startswith("--node_id="):
                            out[arg.split("=", 1)[1]] = p.pid
            except Exception:  # exited while being read
                pass
        return out

    def workers(self) -> set[str]:
        return set(self.raylets()) - {HEAD_NODE_ID}

    def start_search(self, overrides: dict, cwd: Path, log: Path) -> subprocess.Popen:
        """``python -m distforget.search`` as a driver of this cluster (``RAY_ADDRESS``), in its
        own session; stop it with ``stop_tree``."""
        args = [f"{k}={json.dumps(v) if isinstance(v, (list, bool)) else v}"
                for k, v in overrides.items()]
        return subprocess.Popen(
            [sys.executable, "-m", "distforget.search", *args],
            env={**self.env, "RAY_ADDRESS": self.address,
                 "DISTFORGET_CACHE": os.environ["DISTFORGET_CACHE"]},
            cwd=cwd, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)

    def monitor_log(self) -> str:
        logs = list(self.temp_dir.glob("session_2*/logs/monitor.log"))
        return logs[0].read_text() if logs else ""

    def stop(self) -> list:
        left = stop_process(self.proc)
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return left
