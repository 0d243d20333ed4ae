"""torch's intra-op threads follow the CPUs a process was given."""

import argparse

import pytest
import torch

from distforget import threads
from distforget.cli import run_cli


@pytest.fixture
def four_cpus(monkeypatch):
    """A process allowed to run on 4 CPUs, without OMP_NUM_THREADS; torch's threads restored."""
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(threads, "cgroup_cpus", lambda: None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_thread_count_follows_the_cpus_given(four_cpus, monkeypatch):
    assert threads.thread_count() == 4           # a command: every CPU it may run on
    assert threads.thread_count(0.95) == 1       # the default Ray worker share
    assert threads.thread_count(0.05) == 1       # never 0
    assert threads.thread_count(2) == 2
    assert threads.thread_count(16) == 4         # never more than the machine has
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.thread_count() == 3 and threads.thread_count(2) == 2


def test_without_an_affinity_mask_the_cpu_count_is_used(monkeypatch):
    monkeypatch.delattr(threads.os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 6)
    monkeypatch.setattr(threads, "cgroup_cpus", lambda: None)
    assert threads.machine_cpus() == 6


def test_a_container_quota_caps_the_machine(monkeypatch, tmp_path):
    cpu_max = tmp_path / "cpu.max"
    for text, expected in (("max 100000\n", None), ("200000 100000\n", 2),
                           ("150000 100000\n", 2), ("50000 100000\n", 1)):
        cpu_max.write_text(text)
        assert threads.cgroup_cpus(str(cpu_max)) == expected
    assert threads.cgroup_cpus(str(tmp_path / "absent")) is None
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(64)),
                        raising=False)
    monkeypatch.setattr(threads, "cgroup_cpus", lambda: 2)
    assert threads.machine_cpus() == 2


def test_set_torch_threads_sets_the_pool(four_cpus):
    assert threads.set_torch_threads(2) == 2 and torch.get_num_threads() == 2
    assert threads.set_torch_threads(1) == 1 and torch.get_num_threads() == 1


def test_every_command_sets_the_pool_before_it_runs(four_cpus):
    torch.set_num_threads(1)
    seen = []
    assert run_cli(argparse.ArgumentParser(prog="x"), lambda args: seen.append(
        torch.get_num_threads()), []) == 0
    assert seen == [4]


def test_ray_worker_entry_points_set_the_pool():
    """The Ray entry points call the helper with the CPUs Ray gave them (read, not run: a
    cluster is the distributed tests' job)."""
    import inspect

    from distforget.distributed import train, trainable

    for fn in (train._stages_worker, train._evaluate_task._function, train._prepare_task._function,
               trainable.run_one_trial):
        assert "set_torch_threads(" in inspect.getsource(fn), fn


@pytest.mark.slow  # pretrains a small CLIP from scratch
def test_pretraining_prints_images_per_second(cpu):
    import re

    from distforget.config import PretrainConfig
    from distforget.data.load import load_data
    from distforget.config import load_config
    from distforget.pretraining import pretrain_clip, split_rows
    from distforget.zeroshot import GENERATED_TEMPLATES
    from tests.factories import TINY

    data = load_data(load_config(None, TINY).data)
    rows, _ = split_rows(data)
    lines = []
    pretrain_clip(data, rows[:64], name="DF-RN-Tiny-32", cfg=PretrainConfig(epochs=2,
                  batch_size=32), templates=GENERATED_TEMPLATES, device=cpu, log=lines.append)
    assert len(lines) == 2
    assert re.search(r"epoch 2/2: loss [0-9.]+, [0-9]+ images/s, [0-9]+s elapsed", lines[1])
    n = torch.get_num_threads()
    assert lines[1].endswith(f"({n} thread{'s' if n > 1 else ''})"), lines[1]
