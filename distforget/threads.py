"""How many threads torch's intra-op pool uses in this process.

torch's default is one thread per core of the machine. On a shared machine, or in a Ray worker
given one CPU of many, that oversubscribes the cores: on a busy 2-core machine pretraining made
no visible progress for 12 minutes with the default threads and finished in 2 with one. Every
command and every Ray worker entry point therefore sets the pool from the CPUs it was given.
"""

from __future__ import annotations

import math
import os


CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"


def cgroup_cpus(path: str = CGROUP_CPU_MAX) -> int | None:
    """The container's CPU quota (cgroup v2 ``cpu.max``: "quota period", or "max"), rounded up;
    None when there is none. A container limited to 2 CPUs on a 64-core host sees 64 in its
    affinity mask."""
    try:
        quota, period = open(path).read().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def machine_cpus() -> int:
    """The CPUs this process may run on: its affinity mask where the OS has one (else the CPU
    count), and no more than the container's CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        n = os.cpu_count() or 1
    quota = cgroup_cpus()
    return max(1, min(n, quota) if quota else n)


def thread_count(cpus: float | None = None) -> int:
    """Threads for ``cpus`` CPUs (a Ray worker's ``resources.cpus_per_worker``, rounded, at
    least 1), or for every CPU this process may run on when ``cpus`` is None; never more than
    the machine has, nor more than ``OMP_NUM_THREADS`` when that is set."""
    machine = machine_cpus()
    n = machine if cpus is None else max(1, round(float(cpus)))
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        n = min(n, int(omp))
    return min(n, machine)


def set_torch_threads(cpus: float | None = None) -> int:
    """Set torch's intra-op threads to ``thread_count(cpus)``; returns that number."""
    import torch

    n = thread_count(cpus)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
