import numpy as np
import optuna
import pytest

from distforget.config import SearchConfig
from distforget.errors import ConfigError
from distforget.objectives import DIRECTIONS, margins, parse_target
from distforget.study import (Steering, add_sweep_points, make_sampler, nsga2_population,
                              set_constraints, start_from_config)


def test_nsga2_population_is_a_quarter_of_the_budget_within_bounds():
    assert [nsga2_population(n) for n in (2, 16, 32, 120, 1000)] == [4, 4, 8, 30, 50]


def test_a_small_nsga2_search_breeds_after_its_first_generation():
    """With 16 trials NSGA-II runs generations of 4; with Optuna's default population of 50 the
    whole search would be its first, random, generation."""
    study = optuna.create_study(directions=["minimize", "minimize"],
                                sampler=make_sampler("nsga2", 0, 16))
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), 1 - t.suggest_float("x", 0, 1)),
                   n_trials=16)
    generations = {t.system_attrs.get("NSGAIISampler:generation") for t in study.trials}
    assert generations == {0, 1, 2, 3}


def test_unknown_sampler_is_refused_by_name():
    with pytest.raises(ConfigError, match="'cmaes'"):
        make_sampler("cmaes", 0)


def test_sweep_points_join_the_study_as_completed_trials():
    study = optuna.create_study(directions=DIRECTIONS, sampler=make_sampler("random", 0))
    dist = {"restore.alpha": optuna.distributions.FloatDistribution(0, 1),
            "forget.lr": optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)}
    record = {"trial_id": "t1", "status": "ok",
              "params": {"restore.alpha": 0.5, "forget.lr": 1e-4},
              "sweep": [{"recipe": {"alpha": a, "beta": 0.0},
                         "metrics": {"forget_acc": 0.1, "retain_acc": 0.8, "zeroshot_acc": 0.9}}
                        for a in (0.2, 0.8)]}
    assert add_sweep_points(study, dist, record) == 2
    assert sorted(t.params["restore.alpha"] for t in study.trials) == [0.2, 0.8]
    assert all(t.params["forget.lr"] == 1e-4 for t in study.trials)
    assert [t.user_attrs["sweep_of"] for t in study.trials] == ["t1", "t1"]


def test_a_constrained_search_steers_towards_points_that_meet_the_target():
    """Minimise forget_acc = x on [0, 1] under the target retain_acc >= 0.5 with retain_acc = x:
    after TPE's random start-up trials, the trials with constraints set propose mostly
    feasible points; without them TPE chases x = 0, which misses the target."""
    target = parse_target("retain_acc>=0.5")

    def late_feasible(constrained: bool) -> int:
        study = optuna.create_study(sampler=make_sampler("tpe", 0, 40))
        for _ in range(40):
            trial = study.ask()
            x = trial.suggest_float("x", 0, 1)
            if constrained:
                set_constraints(trial, {"retain_acc": x}, Steering(target))
            study.tell(trial, x)
        return sum(t.params["x"] >= 0.5 for t in study.trials[20:])

    assert late_feasible(True) >= 10 > 2 >= late_feasible(False)


def test_sweep_points_carry_their_constraint_values_for_the_sampler():
    target = parse_target("forget_acc<=0.05, retain_acc>=0.9*base")
    study = optuna.create_study(directions=DIRECTIONS, sampler=make_sampler("tpe", 0))
    dist = {"restore.alpha": optuna.distributions.FloatDistribution(0, 1)}
    record = {"trial_id": "t1", "status": "ok", "params": {"restore.alpha": 0.5},
              "base_retain_acc": 0.8,
              "sweep": [{"recipe": {"alpha": 1.0, "beta": 0.0},
                         "metrics": {"forget_acc": 0.1, "retain_acc": 0.7, "zeroshot_acc": 0.9}}]}
    assert add_sweep_points(study, dist, record, Steering(target)) == 1
    trial, = study.trials
    assert trial.constraints == pytest.approx({"forget_acc<=0.05": 0.05,
                                               "retain_acc>=0.9*base": 0.02})
    assert Steering(target).values({"forget_acc": 0.0, "retain_acc": 0.8,
                                    "base_retain_acc": 0.8}) == pytest.approx(
        {"forget_acc<=0.05": -0.05, "retain_acc>=0.9*base": -0.08})


def test_the_pick_margin_moves_each_constraint_by_its_standard_errors():
    """forget_acc<=0.05 over 100 validation images: one standard error is
    sqrt(0.05 x 0.95 / 100) = 0.0218, so a point at 0.04 meets the target but not by the
    margin; a metric without a size asks for no margin."""
    steering = Steering(parse_target("forget_acc<=0.05, zeroshot_acc>=0.5"),
                        {"forget_acc": 100}, 1.0)
    values = steering.values({"forget_acc": 0.04, "zeroshot_acc": 0.6})
    assert values == pytest.approx({"forget_acc<=0.05": -0.01 + 0.0218,
                                    "zeroshot_acc>=0.5": -0.1}, abs=1e-4)
    search = SearchConfig(target="forget_acc<=0.05", pick_margin=2.0)
    assert Steering.of_run(search, {"val_forget": 100}).values(
        {"forget_acc": 0.0})["forget_acc<=0.05"] == pytest.approx(-0.05 + 2 * 0.0218, abs=1e-4)
    assert Steering.of_run(search, None).values(
        {"forget_acc": 0.0}) == pytest.approx({"forget_acc<=0.05": -0.05})
    # The margin's unit follows search.pick_margin_unit: over validation and test images, or
    # over the validation images alone.
    splits = {"val_forget": 100, "test_forget": 100}
    both = SearchConfig(target="forget_acc<=0.05", pick_margin_unit="validation-test")
    assert Steering.of_run(both, splits).sizes == {"forget_acc": 50}
    alone = SearchConfig(target="forget_acc<=0.05", pick_margin_unit="validation")
    assert Steering.of_run(alone, splits).sizes == {"forget_acc": 100}
    # Only the target pick reads the margin; under another rule the sampler asks for none.
    knee = SearchConfig(target="forget_acc<=0.05", pick="knee", pick_margin=2.0)
    assert Steering.of_run(knee, {"val_forget": 100}).values(
        {"forget_acc": 0.0}) == pytest.approx({"forget_acc<=0.05": -0.05})


@pytest.mark.parametrize("margin", [0.0, 1.0, 1.8])
def test_the_sampler_counts_as_feasible_exactly_the_points_the_pick_accepts(margin):
    """Every constraint value <= 0 if and only if the pick's margin (objectives.margins) is
    at least ``margin``: the sampler and the pick (pareto.pick) agree on every point."""
    target = parse_target("forget_acc<=0.05, retain_acc>=0.9*base, zeroshot_acc>=0.95*base")
    # 15 forget images: one standard error (0.056) is more than a forget value can clear
    # 0.05 by, so only forget 0 (at its bound, a fifth of the rows) meets the margin there.
    sizes = {"forget_acc": 15, "retain_acc": 274, "zeroshot_acc": 500}
    base = {"forget_acc": 1.0, "retain_acc": 0.6, "zeroshot_acc": 0.72}
    steering = Steering(target, sizes, margin)
    rng = np.random.default_rng(0)
    agree, feasible = 0, 0
    for _ in range(2000):
        forget = 0.0 if rng.uniform() < 0.2 else rng.uniform(0, 0.12)
        row = {"forget_acc": forget, "retain_acc": rng.uniform(0.45, 0.7),
               "zeroshot_acc": rng.uniform(0.62, 0.8),
               **{f"base_{k}": v for k, v in base.items()}}
        sampler_ok = all(v <= 0 for v in steering.values(row).values())
        pick_ok = margins([row], target, base, sizes)[0] >= margin
        agree += sampler_ok == pick_ok
        feasible += sampler_ok
    assert agree == 2000 and 0 < feasible < 2000


def test_a_search_starts_at_the_configs_settings_once():
    from distforget.config import RunConfig, load_config
    from distforget.search_space import load_space

    space = load_space("embedded")
    study = optuna.create_study(directions=DIRECTIONS, sampler=make_sampler("random", 0))
    line = start_from_config(study, space, RunConfig())
    assert line and "forget.lr=0.001" in line and "sampled" not in line
    first = study.ask(space.params)
    assert first.params == space.config_point(RunConfig())[0]
    assert first.user_attrs["start"] == "config"
    study.tell(first, [0.0, 1.0, 1.0])
    # Resumed: a trial with those values exists, so it is not queued again.
    assert start_from_config(study, space, RunConfig()) is None
    assert study.ask(space.params).params != first.params
    # A key whose value lies outside the space is sampled and named; off, nothing is queued.
    fresh = optuna.create_study(directions=DIRECTIONS, sampler=make_sampler("random", 0))
    line = start_from_config(fresh, space, load_config(None, ["forget.top_k=9"]))
    assert line.endswith("outside the space: forget.top_k")
    trial = fresh.ask(space.params)
    assert trial.params["forget.lr"] == RunConfig().forget.lr
    assert 1 <= trial.params["forget.top_k"] <= 3
    off = optuna.create_study(directions=DIRECTIONS, sampler=make_sampler("random", 0))
    assert start_from_config(off, space, load_config(None, ["search.start_from_config=false"])
                             ) is None
    assert off.trials == []
