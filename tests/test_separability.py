"""bench/separability.py's probes: on frozen base features, and trained with the whole tower."""

import pytest
import torch

from bench.separability import finetune_probe, fit_probe
from distforget.evaluate import image_features


def scores(prepared, visual, probe, split):
    w, b = probe
    images = prepared.images[prepared.split(split).indices]
    with torch.no_grad():
        return image_features(visual, images, prepared.preprocess(torch.device("cpu"))) @ w + b


def test_the_frozen_probe_ranks_forget_images_above_retained_ones(tiny_prepared):
    visual = tiny_prepared.model().visual
    prep = tiny_prepared.preprocess(torch.device("cpu"))
    feats = {s: image_features(visual, tiny_prepared.images[tiny_prepared.split(s).indices], prep)
             for s in ("forget_train", "retain_train")}
    probe = fit_probe(feats["forget_train"], feats["retain_train"])
    assert (scores(tiny_prepared, visual, probe, "forget_train").mean()
            > scores(tiny_prepared, visual, probe, "retain_train").mean())


def test_the_finetuned_probe_trains_every_layer_of_the_tower(tiny_prepared, cpu):
    visual = tiny_prepared.model().visual
    before = {n: p.detach().clone() for n, p in visual.named_parameters()}
    probe = finetune_probe(visual, tiny_prepared, tiny_prepared.preprocess(cpu), epochs=2,
                           seed=0, lr=1e-3)
    changed = [n for n, p in visual.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)
    assert not visual.training
    forget = scores(tiny_prepared, visual, probe, "forget_train")
    retain = scores(tiny_prepared, visual, probe, "retain_train")
    # Trained to tell them apart: the training forget images score above the retained ones.
    assert forget.mean() > retain.mean()


def test_a_missing_section_is_refused_before_any_scenario_is_prepared(tmp_path, capsys):
    from bench.separability import main

    results = tmp_path / "RESULTS.md"
    results.write_text("# results\n<!-- separability:begin -->\n<!-- separability:end -->\n")
    before = results.read_text()
    # The config does not exist: preparing it would fail otherwise than with a usage error.
    with pytest.raises(SystemExit):
        main([str(tmp_path / "none.yaml"), "--section", "vehicle", "--results", str(results)])
    err = capsys.readouterr().err
    assert "--section 'vehicle'" in err and "<!-- vehicle:begin -->" in err
    assert results.read_text() == before
    with pytest.raises(SystemExit):  # --finetune's default section is its own
        main([str(tmp_path / "none.yaml"), "--finetune", "1", "--results", str(results)])
    assert "--section 'separability-finetune'" in capsys.readouterr().err


def test_a_bad_override_is_refused_before_any_scenario_is_prepared(capsys):
    from bench.separability import main

    with pytest.raises(SystemExit):  # pretrain has `epochs`, not `epoch`
        main(["-", "--set", "pretrain.epoch=30", "--no-write"])
    err = capsys.readouterr().err
    assert "pretrain.epoch" in err and "epochs" in err
    with pytest.raises(SystemExit):
        main(["-", "--set", "pretrain.epochs", "--no-write"])
    assert "expected key=value" in capsys.readouterr().err
