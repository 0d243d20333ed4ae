"""bench/quality.py's scenarios: the suite's configs, named as bench/suite.py names them."""

import dataclasses

import pytest

from bench.quality import chosen_scenarios, seeded
from bench.suite import CHECKS, SCENARIOS, config_path
from distforget.config import RunConfig, load_config


def test_all_is_the_suite_and_names_pick_suite_or_check_scenarios():
    assert chosen_scenarios("all") == list(SCENARIOS)
    assert chosen_scenarios("cifar10-styles, check-automobile-cartoon") == [
        "cifar10-styles", "check-automobile-cartoon"]
    assert set(CHECKS) <= set(chosen_scenarios(",".join(CHECKS)))


@pytest.mark.parametrize("names", ["nope", "embedded,cifar10", " , "])
def test_an_unknown_or_empty_scenario_is_refused_naming_the_value(names):
    with pytest.raises(ValueError, match="expected 'all' or names from embedded") as err:
        chosen_scenarios(names)
    assert repr(names) in str(err.value)


def test_the_embedded_row_runs_the_embedded_default_with_every_seed_moved():
    cfg = seeded(load_config(str(config_path("embedded"))), 2)
    default = RunConfig()
    for section in ("model", "data", "scenario", "forget", "remind", "restore", "baseline",
                    "search"):
        ours, theirs = getattr(cfg, section), getattr(default, section)
        if hasattr(ours, "seed"):
            assert ours.seed == 2, section
            ours = dataclasses.replace(ours, seed=theirs.seed)
        assert ours == theirs, section
