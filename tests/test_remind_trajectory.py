"""bench/remind_trajectory.py: the rows it prints are the models the remind stage would return."""

import pytest

from bench.remind_trajectory import trajectory
from distforget.config import ForgetConfig, RemindConfig
from distforget.forget import run_forget


@pytest.fixture(scope="module")
def forgotten(tiny_prepared, cpu):
    return run_forget(tiny_prepared, ForgetConfig(epochs=1, top_k=2, fisher_samples=4), device=cpu)


@pytest.mark.parametrize("ema_decay", [0.5, None])
def test_the_last_row_is_the_stage_output(tiny_prepared, forgotten, cpu, ema_decay):
    p = tiny_prepared
    cfg = RemindConfig(epochs=3, lr=5e-3, batch_size=8, bn_align_images=0, ema_decay=ema_decay)
    rows, out = trajectory(p, cfg, forgotten, every=2, device=cpu)
    assert [r["epoch"] for r in rows] == [2, 3]
    visual = p.model(out.state).visual.eval()
    evaluator = p.evaluator(cpu)
    final = {**evaluator.metrics(visual), **evaluator.calibration(visual)}
    assert rows[-1]["F"] == final["forget_acc"] and rows[-1]["Z"] == final["zeroshot_acc"]
    assert rows[-1]["calib_R"] == final["calib_retain_acc"]
    assert rows[-1]["train_R"] == out.meta["history"][-1]["train_retain_acc"]


@pytest.mark.parametrize("ema_decay", [0.5, None])
def test_a_snapshot_gives_the_weights_the_stage_returns(tiny_prepared, forgotten, cpu,
                                                        ema_decay):
    import torch

    from bench.remind_trajectory import stopped_here
    from distforget.remind import run_remind
    from distforget.training import StageHooks

    p = tiny_prepared
    last = {}
    cfg = RemindConfig(epochs=1, lr=5e-3, batch_size=8, bn_align_images=0, ema_decay=ema_decay)
    out = run_remind(p, cfg, forgotten, device=cpu, hooks=StageHooks(
        on_epoch=lambda epoch, metrics, snapshot: last.update(stopped_here(snapshot()))))
    assert set(out.state) == {f"visual.{k}" for k in last}
    assert all(torch.equal(out.state[f"visual.{k}"].float(), v.float()) for k, v in last.items())
    assert any(not torch.equal(forgotten.state[f"visual.{k}"], v) for k, v in last.items())
