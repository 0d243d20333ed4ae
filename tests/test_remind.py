import dataclasses

import numpy as np
import pytest
import torch

from distforget.config import ForgetConfig, RemindConfig
from distforget.errors import ConfigError
from distforget.forget import run_forget
from distforget.losses import distillation_loss
from distforget.remind import run_remind
from distforget.synthetic import bn_align_count, bn_aligned_images
from distforget.training import image_layers


@pytest.fixture(scope="module")
def forgotten(tiny_prepared, cpu):
    return run_forget(tiny_prepared, ForgetConfig(epochs=1, top_k=2, fisher_samples=4), device=cpu)


def test_remind_trains_the_forget_stage_layers_only(tiny_prepared, forgotten, cpu):
    out = run_remind(tiny_prepared, RemindConfig(epochs=1, bn_align_images=0), forgotten,
                     device=cpu)
    groups = image_layers(tiny_prepared.model().visual)
    changed = {layer for layer, names in groups.items()
               if any(not torch.equal(forgotten.state[f"visual.{n}"], out.state[f"visual.{n}"])
                      for n in names)}
    assert changed == set(forgotten.meta["layers"]) == set(out.meta["layers"])


def test_stored_teacher_outputs_drive_the_distillation(tiny_prepared, forgotten, cpu):
    """The remind stage distils on the teacher logits computed once in prepare: swapping the
    stored logits for ones that favour another class moves the student there."""
    p = tiny_prepared
    target = (p.scenario.forget_label + 1) % len(p.classes)
    fake = np.full_like(p.teacher_logits, -20.0)
    fake[:, target] = 20.0
    swapped = dataclasses.replace(p, teacher_logits=fake)
    cfg = RemindConfig(epochs=2, lr=5e-3, lambda_kd=50.0, layers="all", bn_align_images=0,
                       ema_decay=None, forget_weight=0.0)
    honest = run_remind(p, cfg, forgotten, device=cpu)
    misled = run_remind(swapped, cfg, forgotten, device=cpu)

    def share_of_target(out):
        visual = p.model(out.state).visual
        r = p.split("retain_train")
        feats = torch.nn.functional.normalize(visual(p.preprocess(cpu)(p.images[r.indices])),
                                              dim=-1)
        return ((feats @ p.head_tensor(cpu).T).argmax(-1) == target).float().mean().item()

    assert share_of_target(misled) > share_of_target(honest) + 0.3


def test_shared_synthetic_images_are_reused(tiny_prepared, forgotten, cpu, monkeypatch):
    import distforget.remind as remind

    def no_synthesis(*a, **k):
        raise AssertionError("synthetic images were made again")

    monkeypatch.setattr(remind, "bn_aligned_images", no_synthesis)
    count, steps, seed = tiny_prepared.synthetic_key
    out = run_remind(tiny_prepared, RemindConfig(epochs=1, bn_align_images=count,
                                                 bn_align_steps=steps, seed=seed),
                     forgotten, device=cpu)
    assert out.meta["synthetic_images"] == count == len(tiny_prepared.synthetic) == 8


def test_ema_output_differs_from_the_last_step(tiny_prepared, forgotten, cpu):
    plain = run_remind(tiny_prepared, RemindConfig(epochs=1, ema_decay=None, lr=5e-3, batch_size=8,
                                                   bn_align_images=0), forgotten, device=cpu)
    ema = run_remind(tiny_prepared, RemindConfig(epochs=1, ema_decay=0.5, lr=5e-3, batch_size=8,
                                                 bn_align_images=0), forgotten, device=cpu)
    diffs = [not torch.equal(plain.state[k], ema.state[k]) for k in plain.state]
    assert any(diffs)


def test_bn_alignment_matches_stored_statistics(tiny_prepared, cpu):
    visual = tiny_prepared.model().visual
    prep = tiny_prepared.preprocess(cpu)
    bns = remind_bns = [m for m in visual.modules()
                        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert remind_bns

    def gap(images):
        stats = []
        hooks = [bn.register_forward_hook(lambda m, i, o: stats.append(
            (i[0].mean((0, 2, 3)) - m.running_mean).pow(2).sum().item())) for bn in bns]
        with torch.no_grad():
            visual.eval()(prep(images))
        for h in hooks:
            h.remove()
        return sum(stats)

    noise = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    a = bn_aligned_images(visual, prep, count=16, steps=30, seed=1)
    b = bn_aligned_images(visual, prep, count=16, steps=30, seed=1)
    assert a.dtype == np.uint8 and a.shape == (16, 32, 32, 3)
    assert np.array_equal(a, b)
    assert gap(a) < gap(noise)


def test_bn_alignment_needs_batchnorm():
    import open_clip

    import distforget.model  # noqa: F401
    vit = open_clip.create_model("DF-ViT-Tiny-32").visual
    assert bn_align_count(RemindConfig(bn_align_images=None), vit) == 0
    with pytest.raises(ConfigError, match="needs an image tower with BatchNorm"):
        bn_align_count(RemindConfig(bn_align_images=4), vit)


def test_distillation_loss_is_zero_for_equal_logits_and_positive_otherwise():
    t = torch.tensor([[2.0, 0.0, -1.0]])
    assert distillation_loss(t, t, 2.0).item() == pytest.approx(0.0, abs=1e-7)
    s = torch.tensor([[0.0, 2.0, -1.0]])
    kl = torch.nn.functional.kl_div(torch.log_softmax(s / 2, -1), torch.softmax(t / 2, -1),
                                    reduction="sum")
    assert distillation_loss(s, t, 2.0).item() == pytest.approx(4 * kl.item(), rel=1e-5)


def _forget_acc(prepared, out, cpu) -> tuple[float, torch.Tensor]:
    visual = prepared.model(out.state).visual.eval()
    f = prepared.split("forget_train")
    with torch.no_grad():
        feats = torch.nn.functional.normalize(
            visual(prepared.preprocess(cpu)(prepared.images[f.indices])), dim=-1)
    pred = (feats @ prepared.head_tensor(cpu).T).argmax(-1)
    return (pred == torch.as_tensor(f.labels)).float().mean().item(), pred


@pytest.mark.parametrize("loss", ["margin", "distill"])
def test_forget_term_keeps_the_forget_subgroup_away(tiny_prepared, forgotten, cpu, loss):
    """Without a forget term the remind stage gives the forget images their class back; with
    one (either loss) it does not, and the history reports their training accuracy."""
    knobs = dict(epochs=3, lr=3e-3, layers="all", bn_align_images=0, ema_decay=None,
                 forget_loss=loss)
    plain = run_remind(tiny_prepared, RemindConfig(forget_weight=0.0, **knobs), forgotten,
                       device=cpu)
    away = run_remind(tiny_prepared, RemindConfig(forget_weight=10.0, **knobs), forgotten,
                      device=cpu)
    plain_acc, _ = _forget_acc(tiny_prepared, plain, cpu)
    away_acc, _ = _forget_acc(tiny_prepared, away, cpu)
    assert away_acc < plain_acc - 0.3
    assert "train_forget_acc" not in plain.meta["history"][-1]
    assert away.meta["history"][-1]["train_forget_acc"] == pytest.approx(away_acc, abs=1e-6)


def test_distill_forget_term_uses_the_base_logits_without_the_class(tiny_prepared, forgotten,
                                                                    cpu, monkeypatch):
    """``distill`` distils each forget image towards the base model's logits for it with its
    own class taken out (and nothing else changes the stored retain teacher)."""
    import distforget.remind as remind

    p = tiny_prepared
    f = p.split("forget_train")
    with torch.no_grad():
        feats = torch.nn.functional.normalize(
            p.model().visual.eval()(p.preprocess(cpu)(p.images[f.indices])), dim=-1)
    base = (p.logit_scale * feats @ p.head_tensor(cpu).T).numpy()
    seen = []
    real = remind.distillation_loss

    def recording(student, teacher, temperature):
        seen.append(teacher.detach().numpy().copy())
        return real(student, teacher, temperature)

    monkeypatch.setattr(remind, "distillation_loss", recording)
    run_remind(p, RemindConfig(epochs=1, bn_align_images=0, forget_weight=1.0,
                               forget_loss="distill"), forgotten, device=cpu)
    rows = np.concatenate(seen)
    masked = rows[(rows < -1e3).any(axis=1)]
    assert len(masked) == len(f)
    assert ((masked < -1e3).sum(axis=1) == 1).all()
    assert (masked.argmin(axis=1) == p.scenario.forget_label).all()
    keep = np.ones(base.shape[1], bool)
    keep[p.scenario.forget_label] = False
    expected = {tuple(np.round(r[keep], 3)) for r in base}
    assert {tuple(np.round(r[keep], 3)) for r in masked} == expected
    retain_rows = rows[~(rows < -1e3).any(axis=1)]
    assert np.allclose(np.sort(retain_rows, axis=0), np.sort(p.teacher_logits, axis=0))


def _retained_embedding_drift(prepared, state, cpu):
    """Mean 1 - cosine between the base model's and ``state``'s retained training embeddings."""
    r = prepared.split("retain_train")
    pixels = prepared.preprocess(cpu)(prepared.images[r.indices])
    with torch.no_grad():
        base, other = (torch.nn.functional.normalize(v.eval()(pixels), dim=-1)
                       for v in (prepared.model().visual, prepared.model(state).visual))
    return (1.0 - (base * other).sum(-1)).mean().item()


def test_feature_distillation_holds_the_retained_embeddings_near_the_base(tiny_prepared,
                                                                          forgotten, cpu):
    """With ``feature_kd`` the retained images' embeddings end closer to the base model's than
    without it, at the same steps; the distillation set holds the base embeddings of the
    retained images and zeros for the forget images."""
    from distforget.remind import FORGET, RETAIN, distillation_set

    knobs = dict(epochs=2, lr=3e-3, layers="all", bn_align_images=0, ema_decay=None,
                 lambda_kd=0.0, forget_weight=10.0)
    cfg = RemindConfig(feature_kd=100.0, **knobs)
    kd = distillation_set(tiny_prepared, cfg, cpu)
    assert kd.features is not None and len(kd.features) == len(kd.images)
    assert np.allclose(np.linalg.norm(kd.features[kd.roles == RETAIN], axis=1), 1.0, atol=1e-4)
    assert not kd.features[kd.roles == FORGET].any()
    assert distillation_set(tiny_prepared, RemindConfig(**knobs), cpu).features is None

    plain = run_remind(tiny_prepared, RemindConfig(**knobs), forgotten, device=cpu)
    held = run_remind(tiny_prepared, cfg, forgotten, device=cpu)
    plain_drift = _retained_embedding_drift(tiny_prepared, plain.state, cpu)
    held_drift = _retained_embedding_drift(tiny_prepared, held.state, cpu)
    assert held_drift < 0.75 * plain_drift


def test_lr_schedules_over_the_stage_steps():
    from distforget.training import lr_schedule

    def factors(kind, total):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
        sched, seen = lr_schedule(opt, kind, total), []
        for _ in range(total + 1):
            seen.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return seen

    cosine = factors("cosine", 10)
    assert cosine[0] == pytest.approx(2.0) and cosine[5] == pytest.approx(1.0)
    assert cosine[10] == pytest.approx(0.0, abs=1e-12)
    assert all(a > b for a, b in zip(cosine, cosine[1:]))
    assert factors("constant", 4) == [2.0] * 5
    with pytest.raises(ValueError, match="'step'.*'constant' or 'cosine'"):
        lr_schedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), "step", 3)


def test_cosine_remind_ends_at_a_zero_learning_rate(tiny_prepared, forgotten, cpu):
    """The schedule spans every step of the stage and travels with its resumable state."""
    from distforget.training import StageHooks

    seen = {}

    def on_epoch(epoch, metrics, snapshot):
        seen[epoch] = snapshot()["schedule"]

    cfg = RemindConfig(epochs=2, lr=1e-3, batch_size=8, bn_align_images=0,
                       lr_schedule="cosine")
    out = run_remind(tiny_prepared, cfg, forgotten, device=cpu,
                     hooks=StageHooks(on_epoch=on_epoch))
    assert seen[1]["last_epoch"] == out.meta["steps"] > seen[0]["last_epoch"] > 0
    assert seen[1]["_last_lr"] == [pytest.approx(0.0, abs=1e-12)]
    assert 0 < seen[0]["_last_lr"][0] < 1e-3
