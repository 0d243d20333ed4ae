from pathlib import Path

import optuna
import pytest

from distforget.config import RunConfig
from distforget.errors import ConfigError
from distforget.search_space import load_space, shipped_spaces

ROOT = Path(__file__).resolve().parents[1]


def space(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


def test_shipped_spaces_load_against_their_configs():
    from distforget.config import load_config

    assert "embedded" in shipped_spaces()
    s = load_space("embedded")
    assert s.method == "three_stage" and s.sweep
    assert isinstance(s.params["forget.lr"], optuna.distributions.FloatDistribution)
    assert s.params["forget.lr"].log
    for cfg_path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_config(cfg_path)
        load_space(cfg.search.space, cfg)


def test_trial_config_applies_fixed_then_sampled_values():
    s = load_space("embedded")
    cfg = s.trial_config(RunConfig(), {"forget.lr": 1e-3, "forget.loss": "similarity"})
    assert cfg.forget.lr == 1e-3 and cfg.forget.loss == "similarity"
    assert cfg.restore.choose == "fixed"


@pytest.mark.parametrize("text, message", [
    ("params:\n  forget.lr: {type: float, low: 1.0e-2, high: 1.0e-3, log: true}\n",
     "empty or inverted range"),
    ("params:\n  forget.lr: {type: float, low: 1.0e-3, high: 1.0e-3}\n", "empty or inverted"),
    ("params:\n  forget.lr: {type: float, low: 0, high: 1.0e-3, log: true}\n",
     "a log range needs low > 0"),
    ("params:\n  forget.lrr: {type: float, low: 1.0e-4, high: 1.0e-3}\n", "unknown key forget.lrr"),
    ("params:\n  forget.lr: {type: float, low: 1.0e-4, high: 3}\n",
     "forget.lr: got 3.0, expected a value > 0 and <= 1"),
    ("params:\n  forget.top_k: {type: int, low: 1.5, high: 3}\n", "needs integer ends"),
    ("params:\n  forget.loss: {type: categorical, choices: []}\n", "non-empty list"),
    ("params:\n  forget.loss: {type: categorical, choices: [margin, hinge]}\n",
     "forget.loss: got 'hinge'"),
    ("params:\n  forget.lr: {type: uniform, low: 0.1, high: 0.2}\n", "expected float, int or"),
    ("params: {}\n", "has no params to search"),
    ("method: three_stage\nparams:\n  restore.alpha: {type: float, low: 0.5, high: 1.0}\n"
     "sweep:\n  restore.alpha: [0.2]\n", "outside the searched range"),
    ("parms: {}\n", "unknown key 'parms'"),
])
def test_bad_spaces_are_refused(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        load_space(space(tmp_path, text))
    assert message in str(err.value)


def test_missing_space_is_named():
    with pytest.raises(ConfigError, match="neither a file nor a shipped space"):
        load_space("no-such-space")


def test_the_config_point_holds_the_configs_own_values_inside_the_space(tmp_path):
    from distforget.config import load_config

    s = load_space("embedded")
    point, outside = s.config_point(RunConfig())
    defaults = RunConfig()
    assert outside == [] and list(point) == list(s.params)
    assert point["forget.lr"] == defaults.forget.lr and point["forget.loss"] == defaults.forget.loss
    assert point["remind.ema_decay"] == defaults.remind.ema_decay
    assert point["restore.alpha"] == defaults.restore.alpha
    # A value the config sets is its own; one outside a range or the choices is left out.
    cfg = load_config(None, ["forget.lr=5e-4", "forget.top_k=7", "remind.ema_decay=0.5"])
    point, outside = s.config_point(cfg)
    assert point["forget.lr"] == 5e-4
    assert outside == ["forget.top_k", "remind.ema_decay"]
    stepped = load_space(space(tmp_path, "params:\n  forget.top_k: {type: int, low: 1, high: 5, "
                                         "step: 2}\n  forget.lr: {type: float, low: 1.0e-4, "
                                         "high: 1.0e-3, step: 3.0e-4}\n"))
    assert stepped.config_point(load_config(None, ["forget.top_k=3", "forget.lr=7e-4"]))[1] == []
    assert stepped.config_point(load_config(None, ["forget.top_k=2", "forget.lr=6e-4"]))[1] == [
        "forget.top_k", "forget.lr"]
