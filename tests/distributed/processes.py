"""Processes the multi-node tests start: free loopback ports, bounded waits, and stopping a
process tree by pid (never by name: other people's Ray may run on the same machine)."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from typing import Callable

import ray  # noqa: F401  (puts Ray's vendored psutil on sys.path when psutil is not installed)
import psutil  # noqa: E402


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for(check: Callable[[], object], timeout: float, what: str, poll: float = 0.5,
             proc: subprocess.Popen | None = None) -> object:
    """Poll ``check`` until it returns something true, at most ``timeout`` seconds; fail naming
    ``what``. With ``proc``, also fail as soon as that process has exited."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {proc.returncode} first")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        if proc is not None:  # wakes at once when the process exits
            try:
                proc.wait(timeout=poll)
            except subprocess.TimeoutExpired:
                pass
        else:
            threading.Event().wait(poll)


def tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants (empty when it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_tree(pid: int) -> list[psutil.Process]:
    """SIGKILL a process and then every descendant, collected first (once the process is gone
    they leave its tree), as when the machine under them goes down. Returns the descendants."""
    procs = tree(pid)
    _kill(procs)
    return procs[1:]


def _kill(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def stop_tree(pid: int, timeout: float = 20) -> list[psutil.Process]:
    """Stop a process and every descendant (collected first, so orphans are not missed):
    SIGTERM, then SIGKILL after ``timeout`` s. Returns the processes still running."""
    procs = tree(pid)
    for p in reversed(procs):
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    _kill(alive)
    psutil.wait_procs(alive, timeout=10)
    left = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(p)
        except psutil.NoSuchProcess:
            pass
    return left


def stop_process(proc: subprocess.Popen) -> list[psutil.Process]:
    """Stop ``proc`` and its whole tree (``stop_tree``), then reap it; returns the processes
    still running."""
    left = stop_tree(proc.pid)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return left
