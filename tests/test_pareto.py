import numpy as np
import pandas as pd
import pytest

from distforget.errors import ConfigError
from distforget.objectives import margin_sizes, margins, parse_rule, parse_target
from distforget.pareto import (hypervolume, knee, non_dominated, normalized_hypervolume,
                               pareto_front, pick, to_minimize)


def table(rows):
    return pd.DataFrame([dict(zip(["trial_id", "forget_acc", "retain_acc", "zeroshot_acc"], r),
                              status="ok") for r in rows])


def test_objectives_become_lower_is_better_in_one_place():
    pts = to_minimize(table([("a", 0.1, 0.8, 0.9)]))
    assert pts.tolist() == [[0.1, -0.8, -0.9]]


def test_front_keeps_ties_and_drops_dominated_rows():
    t = table([("a", 0.1, 0.8, 0.9), ("b", 0.1, 0.8, 0.9), ("c", 0.2, 0.7, 0.8),
               ("d", 0.0, 0.5, 0.95)])
    assert set(pareto_front(t)["trial_id"]) == {"a", "b", "d"}


def test_one_point_and_all_dominated_but_one():
    assert list(pareto_front(table([("a", 0.3, 0.3, 0.3)]))["trial_id"]) == ["a"]
    t = table([("best", 0.0, 1.0, 1.0), ("x", 0.1, 0.9, 0.9), ("y", 0.5, 0.2, 0.3)])
    assert list(pareto_front(t)["trial_id"]) == ["best"]


def test_nan_rows_and_failed_trials_are_excluded():
    t = table([("a", 0.1, 0.8, 0.9), ("nan", float("nan"), 1.0, 1.0), ("f", 0.0, 1.0, 1.0)])
    t.loc[t["trial_id"] == "f", "status"] = "failed"
    assert list(pareto_front(t)["trial_id"]) == ["a"]
    assert non_dominated(np.array([[np.nan, 0.0], [1.0, 1.0]])).tolist() == [False, True]


def test_empty_table_has_an_empty_front():
    empty = pd.DataFrame(columns=["trial_id", "status", "forget_acc", "retain_acc",
                                  "zeroshot_acc"])
    assert pareto_front(empty).empty


def test_hypervolume_hand_cases_and_cross_check():
    assert hypervolume(np.array([[0.5, 0.5]]), [1, 1]) == pytest.approx(0.25)
    assert hypervolume(np.array([[0.0, 0.5], [0.5, 0.0]]), [1, 1]) == pytest.approx(0.75)
    assert hypervolume(np.array([[0.5, 0.5, 0.5]]), [1, 1, 1]) == pytest.approx(0.125)
    assert hypervolume(np.array([[2.0, 0.0, 0.0]]), [1, 1, 1]) == 0.0  # outside the box
    from optuna._hypervolume import compute_hypervolume

    rng = np.random.default_rng(1)
    pts = rng.random((25, 3))
    assert hypervolume(pts, [1, 1, 1]) == pytest.approx(compute_hypervolume(pts, np.ones(3)))


def test_normalized_hypervolume_of_the_ideal_point_is_one():
    base = {"forget_acc": 0.9, "retain_acc": 0.8, "zeroshot_acc": 0.7}
    assert normalized_hypervolume(table([("ideal", 0.0, 0.8, 0.7)]), base) == pytest.approx(1)
    assert normalized_hypervolume(table([("base", 0.9, 0.8, 0.7)]), base) == 0.0


def test_knee_is_the_point_nearest_the_ideal_after_scaling():
    t = table([("forget-only", 0.0, 0.1, 0.1), ("keep-only", 0.9, 0.9, 0.9),
               ("balanced", 0.1, 0.8, 0.8)])
    assert knee(pareto_front(t))["trial_id"] == "balanced"


def test_constraint_rules_and_the_closest_point_fallback():
    t = table([("a", 0.04, 0.8, 0.70), ("b", 0.02, 0.7, 0.90), ("c", 0.30, 0.9, 0.95)])
    row, why = pick(t, "forget_acc<=0.05, max zeroshot_acc")
    assert row["trial_id"] == "b" and "2 points meeting" in why
    row, why = pick(t, "forget_acc<=0.01, max zeroshot_acc")
    assert row["trial_id"] == "b" and "closest" in why
    row, _ = pick(t, "retain_acc>=0.75, min forget_acc")
    assert row["trial_id"] == "a"


@pytest.mark.parametrize("rule", ["best", "forget_acc<=0.05", "forget_acc<=x, max retain_acc"])
def test_bad_rules_are_refused(rule):
    with pytest.raises(ConfigError):
        parse_rule(rule)
    with pytest.raises(ConfigError, match="unknown metric"):
        pick(table([("a", 0.1, 0.5, 0.5)]), "speed<=1, max retain_acc")


BASE = {"forget_acc": 0.9, "retain_acc": 0.8, "zeroshot_acc": 0.9}
TARGET = parse_target("forget_acc<=0.05, retain_acc>=0.9*base, zeroshot_acc>=0.95*base")


def test_the_target_pick_takes_the_feasible_point_where_the_knee_does_not():
    # The knee is the balanced point, which misses the retain target (0.71 < 0.72); the
    # feasible point keeps retain and zero-shot above their thresholds.
    t = table([("balanced", 0.0, 0.71, 0.95), ("feasible", 0.05, 0.73, 0.86),
               ("forgets-nothing", 0.9, 0.95, 0.95), ("forgets-all", 0.0, 0.1, 0.2)])
    assert knee(pareto_front(t))["trial_id"] == "balanced"
    row, why = pick(t, "target", target=TARGET, base=BASE)
    assert row["trial_id"] == "feasible"
    assert "1 validation points that meet the target" in why and "NOT MET" not in why


def test_the_target_pick_prefers_zero_shot_then_retain_among_feasible_points():
    t = table([("a", 0.03, 0.80, 0.90), ("b", 0.00, 0.90, 0.90), ("c", 0.05, 0.73, 0.91)])
    row, _ = pick(t, "target", target=TARGET, base=BASE)
    assert row["trial_id"] == "c"
    row, _ = pick(t[t["trial_id"] != "c"], "target", target=TARGET, base=BASE)
    assert row["trial_id"] == "b"


# Validation images behind each accuracy, as run.json's prepared.splits gives them.
SIZES = margin_sizes({"val_forget": 30, "val_retain": 60, "val_zeroshot": 500})


def test_the_target_pick_passes_over_a_point_just_over_a_threshold_for_one_with_a_margin():
    # Retain threshold 0.72 on 60 images: one standard error is 0.058. "edge" clears it by
    # 0.01 (under one image) for 0.002 more zero-shot accuracy than "clear" (0.10 above).
    t = table([("edge", 0.0, 0.73, 0.952), ("clear", 0.0, 0.82, 0.950)])
    assert pick(t, "target", target=TARGET, base=BASE)[0]["trial_id"] == "edge"
    assert pick(t, "target", target=TARGET, base=BASE, sizes=SIZES,
                margin=0.0)[0]["trial_id"] == "edge"
    row, why = pick(t, "target", target=TARGET, base=BASE, sizes=SIZES, margin=1.0)
    assert row["trial_id"] == "clear"
    assert "among the 1 validation points that meet the target" in why
    assert "by at least 1 standard errors" in why
    _, why = pick(t, "target", target=TARGET, base=BASE, sizes=SIZES, margin=1.0,
                  unit="validation-test")
    assert "by at least 1 standard errors of the validation-test difference" in why


def test_without_a_point_clear_by_the_margin_the_largest_margin_is_picked_and_said():
    # Forget 1 of 30 (0.033) clears 0.05 by 0.4 standard errors; 0 of 30 by 1.26, but "zero"
    # sits 0.02 over the retain threshold (0.34 standard errors): "one" has the larger margin.
    t = table([("one", 0.033, 0.80, 0.95), ("zero", 0.0, 0.74, 0.96), ("miss", 0.1, 0.9, 0.96)])
    row, why = pick(t, "target", target=TARGET, base=BASE, sizes=SIZES, margin=1.0)
    assert row["trial_id"] == "one"
    assert why.startswith("the largest margin (0.4") and "none meets it by 1" in why
    assert pick(t, "target", target=TARGET, base=BASE, sizes=SIZES,
                margin=0.3)[0]["trial_id"] == "zero"


def test_margins_are_in_standard_errors_at_the_threshold():
    row = {"forget_acc": 0.0, "retain_acc": 0.72 + 0.0579, "zeroshot_acc": 0.9}
    (m,) = margins([row], TARGET, BASE, SIZES)
    assert m == pytest.approx(0.0579 / (0.72 * 0.28 / 60) ** 0.5, rel=1e-3)
    # A metric without a size does not limit the margin; a missed constraint is negative.
    assert margins([row], TARGET, BASE, {}) == [float("inf")]
    assert margins([{**row, "forget_acc": 0.2}], TARGET, BASE, SIZES)[0] < 0
    assert margin_sizes(None) == {}


def test_the_margin_unit_covers_the_test_sample_as_well_as_the_validation_sample():
    # The variance of a validation estimate minus a test estimate is p (1 - p) (1/n_val +
    # 1/n_test): the unit's images are n_val n_test / (n_val + n_test).
    sizes = margin_sizes({"val_forget": 200, "test_forget": 200, "val_retain": 60,
                          "test_zeroshot": 500})
    assert sizes == {"forget_acc": 100.0, "retain_acc": 60.0}
    # The validation unit (search.pick_margin_unit) reads the validation sizes alone.
    assert margin_sizes({"val_forget": 200, "test_forget": 200}, "validation") == \
        {"forget_acc": 200}
    with pytest.raises(ConfigError, match="search.pick_margin_unit 'test'"):
        margin_sizes({"val_forget": 200}, "test")
    # forget 0.03 clears 0.05 by 1.3 standard errors of the validation estimate alone (0.0154)
    # but by 0.92 of the difference (0.0218); forget 0.015 clears it by 1.6.
    t = table([("close", 0.03, 0.9, 0.96), ("clear", 0.015, 0.9, 0.95)])
    alone = margin_sizes({"val_forget": 200})
    assert pick(t, "target", target=TARGET, base=BASE, sizes=alone,
                margin=1.0)[0]["trial_id"] == "close"
    row, why = pick(t, "target", target=TARGET, base=BASE, sizes=sizes, margin=1.0)
    assert row["trial_id"] == "clear" and "among the 1 validation points" in why


def test_a_value_at_its_bound_clears_its_constraint_by_any_margin():
    # 30 validation and 30 test forget images: one standard error of the difference (0.056)
    # is more than forget 0 clears 0.05 by; the bound is as far as a value can go.
    sizes = margin_sizes({"val_forget": 30, "test_forget": 30, "val_retain": 60})
    t = table([("zero", 0.0, 0.9, 0.95), ("one", 1 / 30, 0.9, 0.96)])
    row, why = pick(t, "target", target=TARGET, base=BASE, sizes=sizes, margin=1.0)
    assert row["trial_id"] == "zero" and "among the 1 validation points" in why
    assert margins([{"forget_acc": 0.0, "retain_acc": 1.0, "zeroshot_acc": 0.95}], TARGET,
                   BASE, sizes) == [float("inf")]


def test_when_nothing_meets_the_target_the_nearest_point_is_named_with_its_shortfall():
    t = table([("near", 0.08, 0.75, 0.90), ("far", 0.40, 0.50, 0.90)])
    row, why = pick(t, "target", target=TARGET, base=BASE)
    assert row["trial_id"] == "near"
    assert why.startswith("TARGET NOT MET") and "forget_acc 0.080 > 0.050 (by 0.030)" in why
    assert "total shortfall 0.030" in why


def test_target_constraints_read_absolute_and_relative_thresholds():
    a, b, c = TARGET
    assert (a.metric, a.op, a.threshold(BASE), a.relative) == ("forget_acc", "<=", 0.05, False)
    assert b.threshold(BASE) == pytest.approx(0.72) and b.relative
    assert b.gap(0.70, BASE) == pytest.approx(0.02) and not b.met(0.70, BASE)
    assert c.met(0.855, BASE) and c.gap(0.9, BASE) < 0
    with pytest.raises(ConfigError, match="unknown metric 'speed'"):
        parse_target("speed<=3")
    with pytest.raises(ConfigError, match="cannot read 'retain_acc>>0.9'"):
        parse_target("retain_acc>>0.9")


def test_a_base_model_that_already_meets_the_forget_target_has_nothing_to_forget():
    from distforget.objectives import nothing_to_forget

    reason = nothing_to_forget({**BASE, "forget_acc": 0.02}, TARGET)
    assert "forget_acc is 0.020" in reason and "nothing to forget" in reason
    assert nothing_to_forget(BASE, TARGET) is None


def test_a_base_model_at_chance_on_the_kept_images_is_named():
    from distforget.objectives import weak_base

    assert weak_base(BASE, 10) is None
    one = weak_base({**BASE, "zeroshot_acc": 0.1}, 10)
    assert "zeroshot_acc 0.100 is at or below chance" in one and "1 in 10" in one
    assert "retain_acc" not in one
    both = weak_base({**BASE, "retain_acc": 0.0, "zeroshot_acc": 0.05}, 10)
    assert "retain_acc 0.000 and zeroshot_acc 0.050 are" in both
    assert weak_base({**BASE, "zeroshot_acc": float("nan")}, 10) is None  # no zero-shot set
    assert weak_base({**BASE, "zeroshot_acc": 0.2}, 4) is not None  # 1 in 4 is 0.25
