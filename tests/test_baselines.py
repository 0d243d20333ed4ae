import numpy as np
import pytest
import torch

from distforget.baselines import random_other_labels, run_baseline
from distforget.config import BASELINES, BaselineConfig


@pytest.mark.parametrize("method", BASELINES)
def test_every_baseline_runs_and_changes_the_tower(tiny_prepared, cpu, method):
    out = run_baseline(tiny_prepared, method, BaselineConfig(epochs=1, target_acc=-1.0),
                       device=cpu)
    base = tiny_prepared.base_visual_state()
    assert set(out.state) == set(base)
    assert any(not torch.equal(base[k], out.state[k]) for k in base)
    assert out.meta["method"] == method and out.meta["steps"] >= 1
    if method == "salun":
        assert out.meta["salun_kept"] == pytest.approx(0.5, abs=0.02)


def test_salun_changes_only_salient_weights(tiny_prepared, cpu):
    out = run_baseline(tiny_prepared, "salun", BaselineConfig(epochs=1, salun_sparsity=0.1,
                                                              target_acc=-1.0), device=cpu)
    base = tiny_prepared.base_visual_state()
    floats = [k for k in base if base[k].is_floating_point() and "running" not in k]
    changed = sum(int((base[k] != out.state[k]).sum()) for k in floats)
    total = sum(base[k].numel() for k in floats)
    assert 0 < changed <= 0.11 * total


def test_random_labels_never_equal_the_true_label():
    labels = np.arange(1000) % 7
    other = random_other_labels(labels, 7, seed=0, epoch=3)
    assert not np.any(other == labels)
    assert np.array_equal(other, random_other_labels(labels, 7, seed=0, epoch=3))


def test_unknown_baseline_is_refused(tiny_prepared, cpu):
    with pytest.raises(ValueError, match="unknown baseline"):
        run_baseline(tiny_prepared, "gd", BaselineConfig(), device=cpu)
