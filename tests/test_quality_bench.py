"""bench/quality.py's scenarios: the suite's configs, named as bench/suite.py names them."""

import dataclasses

import pytest

from bench.quality import (PAIRED, chosen_scenarios, paired_table, read_seed_rows, scenario_table,
                           seeded, with_paired_tables)
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


def result(method, f, r, z, seed):
    rates = {"forget_acc": f, "retain_acc": r, "zeroshot_acc": z}
    return {"method": method, "failed": False, "points": 7, "trials": 2, "wall_s": 1.0,
            "test_met": f <= 0.05, **rates,
            **{f"base_{k}": 0.9 for k in rates},
            **{f"test_{k}{end}": v + d for k, v in rates.items()
               for end, d in (("", 0.0), ("_lo", -0.01), ("_hi", 0.01))}}


RUNS = {s: [result("three_stage", 0.0, 0.8, 0.9 - s / 100, s),
            result("neggrad", 0.1, 0.8, 0.8 - s / 50, s),
            {"method": "salun", "failed": True, "wall_s": 1.0, "trials": 2}]
        for s in range(3)}


def test_the_paired_table_differences_each_seed_and_skips_a_failed_baseline():
    table = "\n".join(scenario_table("shapes", RUNS))
    assert PAIRED in table
    # three-stage minus NegGrad+: forget -0.1, retain 0 and zero-shot 0.1 + s/100 on seed s.
    assert "| neggrad | 3 | -0.100 ± 0.000 | 0.000 ± 0.000 | 0.110 ± 0.025 |" in table
    assert "| salun |" not in table.split(PAIRED)[1]


def test_paired_tables_are_made_anew_from_a_written_section():
    written = "\n".join(["intro", ""] + scenario_table("shapes", RUNS) + ["Wall time: 3 s."])
    without = written.replace("\n".join(paired_table(read_seed_rows(written)["shapes"])), "")
    assert PAIRED not in without
    assert read_seed_rows(without)["shapes"][2]["neggrad"] == pytest.approx(
        {"test_forget_acc": 0.1, "test_retain_acc": 0.8, "test_zeroshot_acc": 0.76})
    again = with_paired_tables(without)
    assert again.count(PAIRED) == 1 and with_paired_tables(again) == again
    assert again.index("</details>") < again.index(PAIRED) < again.index("Wall time")
