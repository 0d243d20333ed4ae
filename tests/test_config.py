from pathlib import Path

import pytest

from distforget.config import (RunConfig, from_dict, load_config, parse_overrides, replace,
                               small_clip_settings_note)
from distforget.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_defaults_are_the_embedded_default_and_round_trip():
    cfg = load_config()
    assert cfg == RunConfig()
    assert cfg.data.format == "generated" and cfg.model.pretrained == "embedded"
    assert from_dict(cfg.to_dict()) == cfg


def test_yaml_and_overrides_are_applied(tmp_path):
    path = write(tmp_path, "forget:\n  lr: 1e-4\n  loss: ce_away\n"
                           "scenario:\n  retain_classes: [square]\n")
    cfg = load_config(path, ["forget.top_k=3", "remind.ema_decay=null"])
    assert cfg.forget.lr == pytest.approx(1e-4)  # YAML 1.1 reads 1e-4 as a string
    assert cfg.forget.loss == "ce_away" and cfg.forget.top_k == 3
    assert cfg.scenario.retain_classes == ("square",)
    assert cfg.remind.ema_decay is None


@pytest.mark.parametrize("overrides, message", [
    (["forget.lrr=1"], "unknown key forget.lrr: expected one of"),
    (["nosuch=1"], "unknown key nosuch"),
    (["forget.epochs=1.5"], "forget.epochs: got 1.5, expected an integer"),
    (["forget.lr=fast"], "forget.lr: got 'fast', expected a number"),
    (["forget.lr=-1"], "forget.lr: got -1.0, expected a value > 0 and <= 1"),
    (["forget.loss=banana"], "forget.loss: got 'banana', expected one of 'similarity'"),
    (["restore.grid=[0.5, 2]"], "restore.grid[1]"),
    (["model.compile=maybe"], "model.compile: got 'maybe', expected true or false"),
    (["scenario=3"], "scenario: got 3, expected a mapping"),
    (["resources.workers=0"], "resources.workers: got 0, expected a value >= 1"),
])
def test_bad_values_name_the_key_and_the_expected_form(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value)


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path, "forget:\n  lr: 0.1\n  epochs: [1, 2\nremind: {}\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        load_config(path)


def test_missing_file_and_non_mapping_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_override_syntax_is_checked():
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["forget.lr"])
    assert parse_overrides(["a.b=[1, 2]", "c=null"]) == {"a.b": [1, 2], "c": None}


def test_replace_returns_a_new_validated_config():
    cfg = RunConfig()
    new = replace(cfg, {"method": "ga"})
    assert new.method == "ga" and cfg.method == "three_stage"
    with pytest.raises(ConfigError):
        replace(cfg, {"method": "nonsense"})


def test_shipped_configs_load():
    paths = sorted((ROOT / "configs").rglob("*.yaml"))  # suite/, dev/ and presets/ too
    assert paths, "configs/ should hold ready-made run configs"
    assert {p.parent.name for p in paths} >= {"configs", "suite", "dev", "presets"}
    for path in paths:
        load_config(path)


def test_the_embedded_config_file_is_the_default():
    assert load_config(ROOT / "configs" / "embedded.yaml") == RunConfig()


@pytest.mark.parametrize("name", ["cifar10", "cifar10-styles"])
def test_the_small_clip_ready_configs_run_the_default_recipe(name):
    # The stage settings and the search space the scenario suite checks, not a recipe of their
    # own: a user who starts from a ready config gets the defaults.
    cfg, default = load_config(ROOT / "configs" / f"{name}.yaml"), RunConfig()
    assert cfg.model.pretrained == "embedded"
    for section in ("forget", "remind", "restore", "baseline"):
        assert getattr(cfg, section) == getattr(default, section), section
    assert cfg.search.space == default.search.space
    assert cfg.search.num_trials == default.search.num_trials


def test_an_unknown_baseline_is_refused_when_the_config_is_built():
    with pytest.raises(ConfigError, match=r"search.baselines\[1\].*'sallun'.*'salun'"):
        load_config(None, {"search.baselines": ["ft", "sallun"]})


def test_open_clip_weights_with_the_small_clips_learning_rates_get_a_note():
    assert small_clip_settings_note(RunConfig()) is None  # the small CLIP: its own defaults
    own_file = load_config(None, {"model.pretrained": "exported/model.safetensors"})
    assert small_clip_settings_note(own_file) is None  # a small CLIP's weights from a file
    note = small_clip_settings_note(load_config(None, {"model.name": "ViT-B-32",
                                                       "model.pretrained": "openai",
                                                       "forget.lr": 1e-5}))
    assert note is not None and "'openai'" in note
    assert "search.space 'embedded'" in note and "remind.lr 0.0001" in note
    assert "remind.epochs 32" in note  # the small CLIP's remind length
    assert "forget.lr" not in note  # set by the user, so not named
    assert "configs/cifar10-vit-b-32.yaml" in note
    # The shipped configs for open_clip weights set every one of those settings.
    for name in ("cifar10-vit-b-32", "imagenet-vit-b-32", "imagenet-rn50"):
        cfg = load_config(ROOT / "configs" / f"{name}.yaml")
        assert cfg.model.pretrained == "openai"
        assert small_clip_settings_note(cfg) is None, name
