import numpy as np
import pytest
import torch

from distforget.data.transforms import DevicePreprocess
from distforget.evaluate import Evaluator, membership_auc


class ColourTower(torch.nn.Module):
    """A fake image tower: the embedding is the mean colour of the image."""

    def forward(self, x):
        return x.mean(dim=(2, 3))


def test_metrics_match_a_hand_computed_case():
    # Colours: pure red, green, blue images; the head maps class 0 -> red, 1 -> green, 2 -> blue.
    def solid(rgb, n):
        return np.tile(np.array(rgb, np.uint8), (n, 4, 4, 1))
    images = np.concatenate([solid((255, 0, 0), 3), solid((0, 255, 0), 2), solid((0, 0, 255), 4)])
    head = torch.eye(3)
    prep = DevicePreprocess(4, (0, 0, 0), (1, 1, 1), "cpu")
    splits = {
        # 3 red images labelled [0, 0, 1]: 2 of 3 right.
        "val_forget": (np.array([0, 1, 2]), np.array([0, 0, 1])),
        # 2 green labelled 1: all right.
        "val_retain": (np.array([3, 4]), np.array([1, 1])),
        # 4 blue labelled [2, 2, 2, 0]: 3 of 4 right.
        "val_zeroshot": (np.array([5, 6, 7, 8]), np.array([2, 2, 2, 0])),
        # The test twins: the retain set swapped for 2 green images labelled [1, 0].
        "test_forget": (np.array([0, 1, 2]), np.array([0, 0, 1])),
        "test_retain": (np.array([3, 4]), np.array([1, 0])),
        "test_zeroshot": (np.array([5, 6, 7, 8]), np.array([2, 2, 2, 0])),
        "forget_train": (np.array([0, 1]), np.array([0, 0])),
        "calib_forget": (np.array([0]), np.array([1])),
        "calib_retain": (np.array([3]), np.array([1])),
    }
    ev = Evaluator(images, splits, head, logit_scale=10.0, prep=prep)
    m = ev.metrics(ColourTower())
    assert ev.reads["test_forget"] == ev.reads["test_retain"] == 0  # validation reads no test
    t = ev.metrics(ColourTower(), "test")
    assert set(t) >= {"test_forget_acc", "test_retain_acc_lo", "test_zeroshot_acc_hi"}
    assert t["test_retain_acc"] == pytest.approx(0.5) and t["test_forget_acc"] == m["forget_acc"]
    assert 0.0 < t["test_retain_acc_lo"] < 0.5 < t["test_retain_acc_hi"] < 1.0
    assert ev.reads["test_retain"] == 2
    assert m["forget_acc"] == pytest.approx(2 / 3)
    assert m["retain_acc"] == pytest.approx(1.0)
    assert m["zeroshot_acc"] == pytest.approx(0.75)
    # Cosine of a pure red embedding with the head rows of labels [0, 0, 1].
    assert m["forget_sim"] == pytest.approx((1 + 1 + 0) / 3)
    assert 0.0 <= m["mia_auc"] <= 1.0
    c = ev.calibration(ColourTower())
    assert c == {"calib_forget_acc": 0.0, "calib_retain_acc": 1.0}


def test_membership_auc():
    assert membership_auc(np.array([0.1, 0.2]), np.array([0.5, 0.9])) == 1.0
    assert membership_auc(np.array([0.5, 0.9]), np.array([0.1, 0.2])) == 0.0
    assert membership_auc(np.array([0.3]), np.array([0.3])) == 0.5
    assert membership_auc(np.array([0.1, 0.6]), np.array([0.5])) == 0.5
    assert np.isnan(membership_auc(np.array([]), np.array([0.1])))


def test_wilson_interval_matches_known_values_and_stays_in_range():
    from distforget.evaluate import wilson_interval

    lo, hi = wilson_interval(8, 10)  # the textbook case: (0.490, 0.943)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and 0.1 < hi < 0.2
    lo, hi = wilson_interval(20, 20)
    assert hi == 1.0 and 0.8 < lo < 0.9
    assert all(v != v for v in wilson_interval(0, 0))
