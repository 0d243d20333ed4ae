import math

import numpy as np
import torch
import torch.nn.functional as F

from distforget.config import ForgetConfig
from distforget.forget import relative_fisher, run_forget, select_layers
from distforget.losses import forget_loss
from distforget.training import StageHooks, image_layers


def visual_params(prepared):
    return {k[len("visual."):]: torch.from_numpy(np.array(v)) for k, v in
            prepared.base_state.items() if k.startswith("visual.")}


def changed_layers(prepared, state):
    base = visual_params(prepared)
    groups = image_layers(prepared.model().visual)
    changed = set()
    for layer, names in groups.items():
        if any(not torch.equal(base[n], state[f"visual.{n}"]) for n in names):
            changed.add(layer)
    return changed


def test_relative_fisher_scores_every_layer(tiny_prepared, cpu):
    p = tiny_prepared
    visual = p.model().visual
    f, r = p.split("forget_train"), p.split("retain_train")
    scores = relative_fisher(visual, p.head_tensor(cpu), p.preprocess(cpu), p.images,
                             (f.indices, f.labels), (r.indices, r.labels), samples=6,
                             parallel=__import__("distforget.training").training.Parallel(),
                             precision="fp32")
    assert set(scores) == set(image_layers(visual))
    assert all(math.isfinite(v) and v > 0 for v in scores.values())
    # The computation leaves no gradients and no trainable flags behind.
    assert all(p_.grad is None for p_ in visual.parameters())


def test_select_layers():
    scores = {"a": 1.0, "b": 3.0, "c": 2.0}
    assert select_layers(scores, 2) == ["b", "c"]
    assert select_layers(scores, 0) == ["b", "c", "a"]


def test_forget_trains_only_the_selected_layers(tiny_prepared, cpu):
    out = run_forget(tiny_prepared, ForgetConfig(epochs=2, top_k=2, fisher_samples=6,
                                                 target_acc=0.0), device=cpu)
    layers = out.meta["layers"]
    assert len(layers) == 2
    assert changed_layers(tiny_prepared, out.state) == set(layers)
    assert set(out.meta["fisher"]) == set(image_layers(tiny_prepared.model().visual))
    assert out.meta["steps"] > 0 and len(out.meta["history"]) == out.meta["epochs_run"]


def test_lora_changes_only_matrices_of_selected_layers_and_merges(tiny_prepared, cpu):
    out = run_forget(tiny_prepared, ForgetConfig(epochs=1, top_k=1, lora_rank=2, lr=1e-2,
                                                 fisher_samples=6), device=cpu)
    base = visual_params(tiny_prepared)
    assert set(out.state) == {f"visual.{k}" for k in base}  # adapters merged: plain keys
    changed = {k for k in base if not torch.equal(base[k], out.state[f"visual.{k}"])}
    groups = image_layers(tiny_prepared.model().visual)
    assert changed and changed <= set(groups[out.meta["layers"][0]])
    assert all(base[k].ndim >= 2 for k in changed)


def test_early_stop_when_the_target_is_reached(tiny_prepared, cpu):
    out = run_forget(tiny_prepared, ForgetConfig(epochs=5, target_acc=1.0, fisher_samples=4),
                     device=cpu)
    assert out.meta["epochs_run"] == 1 and out.meta["stopped_early"]


def test_forget_losses_match_hand_computation():
    feats = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), dim=-1)
    head = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]), dim=-1)
    labels = torch.tensor([0, 1])
    sims = feats @ head.T  # [[1, 0, .6], [.6, .8, 1]]
    sim = forget_loss(feats, head, labels, 10.0, "similarity", 0.0)
    assert torch.allclose(sim, torch.tensor([1.0, 0.8]))
    margin = forget_loss(feats, head, labels, 10.0, "margin", 0.1)
    assert torch.allclose(margin, torch.tensor([1.0 - 0.6 + 0.1, 0.0]))
    away = forget_loss(feats, head, labels, 10.0, "ce_away", 0.0)
    p = torch.softmax(10.0 * sims, dim=1)
    assert torch.allclose(away, -torch.log(1 - p[[0, 1], [0, 1]]), atol=1e-5)


def test_resuming_from_a_snapshot_continues_the_epochs(tiny_prepared, cpu):
    snaps = []
    cfg = ForgetConfig(epochs=3, target_acc=0.0, fisher_samples=4)
    full = run_forget(tiny_prepared, cfg, device=cpu,
                      hooks=StageHooks(on_epoch=lambda e, m, snap: snaps.append(snap())))
    resumed = run_forget(tiny_prepared, cfg, device=cpu, hooks=StageHooks(resume=snaps[0]))
    assert resumed.meta["steps"] == full.meta["steps"]
    for k, v in full.state.items():
        assert torch.allclose(v, resumed.state[k], atol=1e-5), k
