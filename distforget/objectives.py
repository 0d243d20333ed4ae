"""The names every result speaks in, declared once and free of torch: the metrics a model is
measured by, the three objectives of the search with their senses, Optuna's directions, and the
target and pick rules written over them.

A **target** is a comma-separated list of constraints on validation metrics, each absolute or
relative to the base model's validation value::

    forget_acc<=0.05, retain_acc>=0.9*base, zeroshot_acc>=0.95*base

A **pick rule** chooses the exported point: ``target`` (the default: among points that meet the
target by a margin, the highest ``zeroshot_acc``, then ``retain_acc``; see ``pareto.pick``),
``knee``, or constraints then an objective, e.g. ``forget_acc<=0.05, max zeroshot_acc``.

A point's **margin** to the target is its smallest slack over the constraints, each in standard
errors of the difference between two binomial proportions at the constraint's threshold: the
metric's estimate on the validation images that choose the point, and its estimate on the test
images that then report it (``margin_sizes``; ``search.pick_margin_unit: validation`` counts the
validation estimate's alone). It is how far, in units of the noise between the
sample that chooses and the sample that reports, the point is from missing the target. A value
at the metric's bound (no forget image recognised, every retained one kept) cannot clear its
threshold by more, so it counts as clearing it by any margin.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from distforget.errors import ConfigError

# Every metric of one model (see distforget.evaluate for their definitions).
METRICS = ("forget_acc", "retain_acc", "zeroshot_acc", "forget_sim", "mia_auc")
# The accuracies among them: these get test twins with 95% intervals.
ACCURACIES = ("forget_acc", "retain_acc", "zeroshot_acc")

# The search's objectives and their senses; the Pareto front, the hypervolume and the study all
# read them from here.
OBJECTIVES: dict[str, str] = {"forget_acc": "min", "retain_acc": "max", "zeroshot_acc": "max"}

# The same senses as Optuna's study directions, in the same order.
DIRECTIONS = ["minimize" if sense == "min" else "maximize" for sense in OBJECTIVES.values()]

DEFAULT_TARGET = "forget_acc<=0.05, retain_acc>=0.9*base, zeroshot_acc>=0.95*base"


def as_test(metric: str) -> str:
    """The test-split twin of a (validation) metric name: ``test_<name>``."""
    return f"test_{metric}"


@dataclass(frozen=True)
class Constraint:
    """``metric op value`` or, when ``relative``, ``metric op value * base_<metric>``."""

    metric: str
    op: str
    value: float
    relative: bool = False

    def threshold(self, base: Mapping[str, float] | None = None) -> float:
        if not self.relative:
            return self.value
        if base is None or self.metric not in base:
            raise ValueError(f"constraint {self}: needs the base model's {self.metric}")
        return self.value * float(base[self.metric])

    def gap(self, value: float, base: Mapping[str, float] | None = None) -> float:
        """How far ``value`` is from meeting the constraint: <= 0 when it meets it (the form
        Optuna's ``constraints_func`` takes), else the shortfall in the metric's units."""
        t = self.threshold(base)
        return float(value) - t if self.op in ("<=", "<") else t - float(value)

    def met(self, value: float, base: Mapping[str, float] | None = None) -> bool:
        g = self.gap(value, base)
        return g < 0 or (g == 0 and self.op in ("<=", ">="))

    def __str__(self) -> str:
        value = f"{self.value:g}*base" if self.relative else f"{self.value:g}"
        return f"{self.metric}{self.op}{value}"


_CONSTRAINT = re.compile(r"^\s*([a-z_]+)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*(\*\s*base)?\s*$")
_OBJECTIVE = re.compile(r"^\s*(max|min)\s+([a-z_]+)\s*$")


def _check_metric(name: str, where: str, text: str) -> None:
    if name not in METRICS:
        raise ConfigError(f"{where} {text!r}: unknown metric {name!r}; expected one of "
                          f"{', '.join(METRICS)}")


def parse_target(text: str, where: str = "search.target") -> tuple[Constraint, ...]:
    """The constraints of a target (see the module docstring)."""
    out = []
    for part in [p for p in text.split(",") if p.strip()]:
        m = _CONSTRAINT.match(part)
        if not m:
            raise ConfigError(f"{where} {text!r}: cannot read {part.strip()!r}; expected e.g. "
                              f"{DEFAULT_TARGET!r}")
        _check_metric(m.group(1), where, text)
        out.append(Constraint(m.group(1), m.group(2), float(m.group(3)), bool(m.group(4))))
    if not out:
        raise ConfigError(f"{where} {text!r}: expected at least one constraint, e.g. "
                          f"{DEFAULT_TARGET!r}")
    return tuple(out)


@dataclass(frozen=True)
class PickRule:
    """A parsed pick rule: ``kind`` is ``target``, ``knee`` or ``rule`` (constraints, then
    ``objective`` = (sense, metric))."""

    kind: str
    constraints: tuple[Constraint, ...] = ()
    objective: tuple[str, str] | None = None


def parse_rule(rule: str, where: str = "search.pick") -> PickRule:
    """``target``, ``knee``, or constraints then an objective (see the module docstring)."""
    if rule.strip() in ("target", "knee"):
        return PickRule(rule.strip())
    constraints, objective = [], None
    for part in [p for p in rule.split(",") if p.strip()]:
        o = _OBJECTIVE.match(part)
        if o and objective is None:
            _check_metric(o.group(2), where, rule)
            objective = (o.group(1), o.group(2))
        elif _CONSTRAINT.match(part):
            constraints += parse_target(part, where)
        else:
            raise ConfigError(f"{where} {rule!r}: cannot read {part.strip()!r}; expected "
                              "'target', 'knee' or e.g. 'forget_acc<=0.05, max zeroshot_acc'")
    if objective is None:
        raise ConfigError(f"{where} {rule!r}: expected an objective such as 'max zeroshot_acc'")
    return PickRule("rule", tuple(constraints), objective)


def constraint_gaps(metrics: Mapping[str, float], target: Sequence[Constraint],
                    base: Mapping[str, float] | None) -> list[float]:
    """Each constraint's gap for one point (<= 0: met); NaN metrics count as unmet by 1."""
    out = []
    for c in target:
        value = metrics.get(c.metric)
        value = float("nan") if value is None else float(value)
        out.append(1.0 if value != value else c.gap(value, base))
    return out


# The held-out set behind each accuracy: run.json's prepared.splits names its validation and
# test parts val_<set> and test_<set>.
HELD_OUT_SETS = {"forget_acc": "forget", "retain_acc": "retain", "zeroshot_acc": "zeroshot"}

# What a margin's standard error is of (search.pick_margin_unit): the validation estimate alone,
# or the difference between the validation and the test estimate.
MARGIN_UNIT_WORDS = {"validation": "validation estimate",
                     "validation-test": "validation-test difference"}
MARGIN_UNITS = tuple(MARGIN_UNIT_WORDS)


def margin_sizes(splits: Mapping[str, int] | None,
                 unit: str = "validation-test") -> dict[str, float]:
    """The images behind each accuracy's margin unit, from a split summary (``run.json``'s
    ``prepared.splits``). ``validation-test``: ``n_val * n_test / (n_val + n_test)``, so that
    ``p (1 - p) / n`` is the variance of the difference between the validation and the test
    estimate of a proportion ``p`` (a set without test images gives its validation images
    alone); ``validation``: ``n_val``. A metric whose validation split is missing is left out.
    Only the splits' sizes are read, which the config fixes before any image is: no choice
    reads a test image."""
    if unit not in MARGIN_UNITS:
        raise ConfigError(f"search.pick_margin_unit {unit!r}: expected one of "
                          f"{', '.join(MARGIN_UNITS)}")
    splits = splits or {}
    out = {}
    for metric, name in HELD_OUT_SETS.items():
        n_val = splits.get(f"val_{name}")
        n_test = splits.get(f"test_{name}") if unit == "validation-test" else None
        if n_val:
            out[metric] = n_val * n_test / (n_val + n_test) if n_test else float(n_val)
    return out


def margins(rows: Sequence[Mapping[str, float]], target: Sequence[Constraint],
            base: Mapping[str, float] | None, sizes: Mapping[str, float] | None) -> list[float]:
    """Each row's margin to the target in standard errors (see the module docstring): the
    smallest over the constraints of ``slack / sqrt(p (1 - p) / n)``, ``p`` the threshold
    (kept at least half an image from 0 and 1), ``n`` the metric's images from
    ``margin_sizes``; a value at the metric's bound clears its constraint by any margin
    (``inf``). A constraint whose metric has no known size does not limit the margin (``inf``
    when none does); a missed constraint gives a negative margin."""
    out = []
    for row in rows:
        worst = float("inf")
        for c, gap in zip(target, constraint_gaps(row, target, base)):
            n = (sizes or {}).get(c.metric)
            if n and -gap < room(c, base):
                worst = min(worst, -gap / standard_error(c, base, n))
        out.append(worst)
    return out


def required_slack(c: Constraint, base: Mapping[str, float] | None, n: float,
                   margin: float) -> float:
    """How far a value must clear ``c`` to meet it by ``margin`` standard errors over ``n``
    images: ``margin`` standard errors, or the room between the threshold and the metric's
    bound where that is less (see ``margins``)."""
    return min(margin * standard_error(c, base, n), room(c, base))


def room(c: Constraint, base: Mapping[str, float] | None) -> float:
    """The most an accuracy can clear ``c`` by: from the threshold to 0 (``<=``) or to 1."""
    t = c.threshold(base)
    return t if c.op in ("<=", "<") else 1.0 - t


def standard_error(c: Constraint, base: Mapping[str, float] | None, n: float) -> float:
    """The standard error of a proportion at ``c``'s threshold over ``n`` images, the
    threshold kept at least half an image from 0 and 1: the unit of a margin."""
    p = min(max(c.threshold(base), 0.5 / n), 1 - 0.5 / n)
    return (p * (1 - p) / n) ** 0.5


def shortfalls(metrics: Mapping[str, float], target: Sequence[Constraint],
               base: Mapping[str, float] | None) -> list[str]:
    """Readable misses of a target, e.g. ``forget_acc 0.080 > 0.050 (by 0.030)``."""
    out = []
    for c, gap in zip(target, constraint_gaps(metrics, target, base)):
        if not c.met(metrics.get(c.metric, float("nan")), base) or gap != gap:
            sign = ">" if c.op in ("<=", "<") else "<"
            out.append(f"{c.metric} {float(metrics.get(c.metric, float('nan'))):.3f} {sign} "
                       f"{c.threshold(base):.3f} (by {max(gap, 0.0):.3f})")
    return out


def nothing_to_forget(base: Mapping[str, float], target: Sequence[Constraint]) -> str | None:
    """Why a search would be pointless, or None: the base model already meets the target's
    forget constraint (it does not recognise the forget subgroup, so there is nothing to
    forget and every point of a front would be the same)."""
    for c in target:
        if c.metric == "forget_acc" and c.op in ("<=", "<") and c.met(base["forget_acc"], base):
            return (f"the base model's validation forget_acc is {base['forget_acc']:.3f}, which "
                    f"already meets the target's {c}: it does not recognise the forget "
                    "subgroup, so there is nothing to forget; check scenario.forget_class and "
                    "scenario.forget_subgroup, or the base weights")
    return None


def weak_base(base: Mapping[str, float], num_classes: int) -> str | None:
    """A note when the base model's validation retained or zero-shot accuracy is at or below
    chance (one in ``num_classes`` class texts), else None. Such a model names those images no
    better than a guess, so the target's relative bounds on them ask almost nothing and a met
    target says little about keeping what the model knew."""
    chance = 1.0 / num_classes
    weak = [f"{m} {base[m]:.3f}" for m in ("retain_acc", "zeroshot_acc")
            if m in base and base[m] == base[m] and base[m] <= chance]
    if not weak:
        return None
    verb = "is" if len(weak) == 1 else "are"
    return (f"the base model's validation {' and '.join(weak)} {verb} at or below chance (1 "
            f"in {num_classes} class texts, {chance:.3f}): it does not know those images to begin "
            "with, so the target's bounds relative to it ask almost nothing and a met target says "
            "little; pretrain the small CLIP longer or on more images (pretrain.epochs, the "
            "data), or check data.templates and the base weights")
