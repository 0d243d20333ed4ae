import pytest
import torch

from distforget.errors import CheckpointError
from distforget.restore import choose_alpha, interpolate, soup, soup_weights


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
