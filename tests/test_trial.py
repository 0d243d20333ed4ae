import math

import pytest
import torch

from distforget.config import replace
from distforget.objectives import METRICS
from distforget.trial import (Recipe, StageCache, local_evaluator, local_launcher, recipe_state,
                              run_trial)


class Counting:
    """Wraps a launcher and an evaluator and counts what they are asked to do."""

    def __init__(self, prepared, cache, device):
        self.stages, self.evaluations = [], []
        self._launch = local_launcher(prepared, cache, device)
        self._evaluate = local_evaluator(prepared, cache, device, "auto")

    def launch(self, cfg, tasks):
        self.stages += [t.stage for t in tasks]
        return self._launch(cfg, tasks)

    def evaluate(self, recipes, which):
        self.evaluations.append((which, len(recipes)))
        return self._evaluate(recipes, which)


def trial(prepared, cfg, counting, cache, **kw):
    return run_trial(prepared, cfg, launch=counting.launch, cache=cache,
                     evaluate=counting.evaluate, **kw)


def test_three_stages_then_reuse_of_the_forget_stage(tiny_prepared, tiny_cfg, cpu, tmp_path):
    cache = StageCache(str(tmp_path / "stages"))
    c = Counting(tiny_prepared, cache, cpu)
    first = trial(tiny_prepared, tiny_cfg, c, cache)
    assert c.stages == ["forget", "remind"]
    rec = first.record()
    for k in METRICS:
        assert math.isfinite(rec[k]) and f"base_{k}" in rec
    assert rec["stage_cache_misses"] == 2 and rec["train_steps"] > 0
    # Calibration chose alpha among the grid, by evaluations only.
    assert ("calibration", 3) in c.evaluations and rec["alpha"] in (0.0, 0.5, 1.0)

    # Same forget settings, other remind settings: the forget stage comes from the cache.
    again = Counting(tiny_prepared, StageCache(str(tmp_path / "stages")), cpu)
    second = trial(tiny_prepared, replace(tiny_cfg, {"remind.lr": 3e-4}), again,
                   StageCache(str(tmp_path / "stages")))
    assert again.stages == ["remind"]
    assert second.stages["forget"]["cached"] and not second.stages["remind"]["cached"]
    assert second.stages["forget"]["key"] == first.stages["forget"]["key"]
    f1 = cache.get("forget", first.stages["forget"]["key"]).state
    f2 = StageCache(str(tmp_path / "stages")).get("forget", second.stages["forget"]["key"]).state
    assert all(torch.equal(f1[k], f2[k]) for k in f1)


def test_a_soup_sweep_costs_evaluations_only(tiny_prepared, tiny_cfg, cpu):
    cache = StageCache()
    c = Counting(tiny_prepared, cache, cpu)
    cfg = replace(tiny_cfg, {"restore.choose": "fixed", "restore.alpha": 0.3})
    result = trial(tiny_prepared, cfg, c, cache, sweep=[(0.0, 0.0), (0.6, 0.0), (1.0, 0.5)])
    assert c.stages == ["forget", "remind"]
    assert c.evaluations == [("val", 4)]
    assert [p.alpha for p, _ in result.sweep] == [0.0, 0.6, 1.0]
    # The sweep point at alpha 0 is the base model.
    at_base = result.sweep[0][1]
    assert at_base["forget_acc"] == pytest.approx(tiny_prepared.base_metrics["forget_acc"])
    assert at_base["zeroshot_acc"] == pytest.approx(tiny_prepared.base_metrics["zeroshot_acc"])

    # A whole second trial with identical settings trains nothing.
    c2 = Counting(tiny_prepared, cache, cpu)
    trial(tiny_prepared, cfg, c2, cache)
    assert c2.stages == []


def test_baseline_and_base_methods(tiny_prepared, tiny_cfg, cpu):
    cache = StageCache()
    c = Counting(tiny_prepared, cache, cpu)
    ga = trial(tiny_prepared, replace(tiny_cfg, {"method": "ga"}), c, cache)
    assert c.stages == ["baseline"] and ga.recipe.method == "ga"
    base = trial(tiny_prepared, replace(tiny_cfg, {"method": "base"}), c, cache)
    assert c.stages == ["baseline"]
    assert base.metrics["forget_acc"] == pytest.approx(tiny_prepared.base_metrics["forget_acc"])
    state = recipe_state(tiny_prepared.base_visual_state(), cache, Recipe("base"))
    assert all(torch.equal(v, tiny_prepared.base_visual_state()[k]) for k, v in state.items())


def test_a_non_finite_loss_fails_the_stage(tiny_prepared, tiny_cfg, cpu, monkeypatch):
    import distforget.forget as forget

    monkeypatch.setattr(forget, "forget_loss", lambda feats, *a: feats.sum(-1) * float("nan"))
    cache = StageCache()
    c = Counting(tiny_prepared, cache, cpu)
    with pytest.raises(FloatingPointError, match="the loss became nan"):
        trial(tiny_prepared, tiny_cfg, c, cache)


class Died(Exception):
    """Stands for the trial's process dying after an epoch's snapshot was written."""


def test_a_launch_run_again_after_its_process_died_resumes_the_stage(
        tiny_prepared, tiny_cfg, cpu, tmp_path):
    from distforget.trial import StageTask, stage_key

    # A short forget stage, then a remind stage of several short epochs (it never stops early).
    cfg = replace(tiny_cfg, {"forget.epochs": 1, "remind.epochs": 6, "remind.batch_size": 4,
                             "remind.lr": 1e-4})
    fkey = stage_key(tiny_prepared.fingerprint, "forget", "three_stage", {"t": "resume"}, None,
                     "auto")
    rkey = stage_key(tiny_prepared.fingerprint, "remind", "three_stage", {"t": "resume"}, fkey,
                     "auto")
    tasks = [StageTask("forget", fkey, None), StageTask("remind", rkey, fkey)]
    plain_snapshots = tmp_path / "plain" / "train"
    epochs = []
    plain = local_launcher(tiny_prepared, StageCache(str(tmp_path / "plain" / "stages")), cpu,
                           snapshots=str(plain_snapshots), on_epoch=epochs.append)(cfg, tasks)
    assert [(e["stage"], e["epoch"]) for e in epochs] == (
        [("forget", 0)] + [("remind", i) for i in range(6)])
    assert not plain_snapshots.exists()  # removed once every stage was in the cache

    def dies_after_remind_epoch_2(metrics):
        if metrics["stage"] == "remind" and metrics["epoch"] == 2:
            raise Died

    root, snapshots = tmp_path / "killed", str(tmp_path / "killed" / "train")
    with pytest.raises(Died):
        local_launcher(tiny_prepared, StageCache(str(root / "stages")), cpu,
                       snapshots=snapshots, on_epoch=dies_after_remind_epoch_2)(cfg, tasks)
    at_death = torch.load(root / "train" / "snapshot.pt", weights_only=True)
    assert at_death["stage_key"] == rkey and at_death["epoch"] == 2
    # Run again in a new process (a fresh cache object): only the missing stage is launched.
    cache = StageCache(str(root / "stages"))
    assert cache.has("forget", fkey) and not cache.has("remind", rkey)
    again = []
    out = local_launcher(tiny_prepared, cache, cpu, snapshots=snapshots,
                         on_epoch=again.append)(cfg, [tasks[1]])[rkey]
    assert [e["epoch"] for e in again] == [3, 4, 5]  # resumed, not started over
    ref = plain[rkey]
    assert [h["epoch"] for h in out.meta["history"]] == list(range(6))
    assert out.meta["history"][:3] == at_death["history"]  # the epochs before are the snapshot's
    assert out.meta["steps"] == ref.meta["steps"] and out.meta["layers"] == ref.meta["layers"]
    for k in ref.state:
        assert torch.allclose(out.state[k], ref.state[k], atol=1e-5, rtol=1e-5), k
    assert not (root / "train").exists()
