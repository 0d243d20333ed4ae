import pytest
import torch

from distforget.config import RestoreConfig
from distforget.errors import CheckpointError
from distforget.restore import (calibration_retain_bound, calibration_shortfall, choose_alpha,
                                interpolate, soup, soup_weights)


def states():
    base = {"w": torch.zeros(2, 2), "h": torch.ones(3, dtype=torch.float16),
            "n": torch.tensor(5)}
    forgotten = {"w": torch.full((2, 2), 4.0), "h": torch.full((3,), 3.0, dtype=torch.float16),
                 "n": torch.tensor(9)}
    reminded = {"w": torch.full((2, 2), 2.0), "h": torch.full((3,), 2.0, dtype=torch.float16),
                "n": torch.tensor(7)}
    return base, forgotten, reminded


def test_alpha_zero_is_the_base_and_one_the_reminded_model():
    base, forgotten, reminded = states()
    at0 = soup(base, forgotten, reminded, 0.0)
    at1 = soup(base, forgotten, reminded, 1.0)
    assert all(torch.equal(at0[k], base[k]) for k in base)
    assert torch.equal(at1["w"], reminded["w"]) and torch.equal(at1["h"], reminded["h"])


def test_simplex_point_and_dtypes():
    base, forgotten, reminded = states()
    mid = soup(base, forgotten, reminded, 0.5, beta=0.5)
    # 0.5 * base + 0.25 * forgotten + 0.25 * reminded
    assert torch.allclose(mid["w"], torch.full((2, 2), 1.5))
    assert mid["h"].dtype == torch.float16 and torch.allclose(mid["h"].float(),
                                                              torch.full((3,), 1.75))
    assert torch.equal(mid["n"], base["n"])  # integer buffers are copied from the base
    assert soup_weights(0.5, 0.5) == (0.5, 0.25, 0.25)


def test_mismatched_keys_and_shapes_are_refused():
    base, forgotten, _ = states()
    with pytest.raises(CheckpointError, match="different keys"):
        interpolate([base, {**forgotten, "extra": torch.zeros(1)}], [0.5, 0.5])
    with pytest.raises(CheckpointError, match="has shape"):
        interpolate([base, {**forgotten, "w": torch.zeros(3, 3)}], [0.5, 0.5])


def test_choose_alpha_by_the_calibration_rule():
    table = {0.0: (0.9, 0.9), 0.5: (0.04, 0.7), 0.8: (0.01, 0.8), 1.0: (0.0, 0.6)}
    calls = []

    def evaluate(a):
        calls.append(a)
        f, r = table[a]
        return {"calib_forget_acc": f, "calib_retain_acc": r}

    alpha, rows = choose_alpha(evaluate, [0.0, 0.5, 0.8, 1.0], forget_target=0.05)
    assert alpha == 0.8 and calls == [0.0, 0.5, 0.8, 1.0] and len(rows) == 4
    alpha, _ = choose_alpha(evaluate, [0.0, 0.5], forget_target=0.01)
    assert alpha == 0.5  # nothing meets the target: the lowest forget accuracy


def test_the_calibration_rule_bounds_retain_accuracy_too():
    """With a retain bound an alpha that forgets but loses the retained images loses to one that
    meets both bounds; when none does, the nearest to both wins, not the lowest forget."""
    table = {0.0: (0.9, 0.9), 0.6: (0.04, 0.2), 0.8: (0.05, 0.85), 1.0: (0.12, 0.85)}

    def evaluate(a):
        f, r = table[a]
        return {"calib_forget_acc": f, "calib_retain_acc": r}

    grid = [0.0, 0.6, 0.8, 1.0]
    assert choose_alpha(evaluate, grid, 0.05)[0] == 0.8   # best retain among those that forget
    assert choose_alpha(evaluate, grid, 0.05, retain_bound=0.81)[0] == 0.8
    assert choose_alpha(evaluate, grid, 0.045)[0] == 0.6   # no bound: the lowest forget
    # 0.6 is 0.61 short of retain 0.81, 0.8 is 0.005 above forget 0.045: 0.8 is nearest.
    assert choose_alpha(evaluate, grid, 0.045, retain_bound=0.81)[0] == 0.8
    assert calibration_shortfall({"calib_forget_acc": 0.12, "calib_retain_acc": 0.7},
                                 0.05, 0.81) == pytest.approx(0.07 + 0.11)


def test_the_retain_floor_is_a_share_of_the_base_models_calibration_retain_accuracy():
    cfg = RestoreConfig(retain_floor=0.9)
    bound = calibration_retain_bound
    assert bound(cfg, {"calib_retain_acc": 0.8}) == pytest.approx(0.72)
    assert bound(cfg, {"calib_retain_acc": float("nan")}) == 0.0
    assert bound(RestoreConfig(retain_floor=0.0), {"calib_retain_acc": 0.8}) == 0.0
