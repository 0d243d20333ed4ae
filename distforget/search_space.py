"""Search spaces as YAML files (``search_spaces/*.yaml``), turned into Optuna distributions.

A space file::

    method: three_stage          # the method every trial of the search runs
    fixed:                       # config overrides for every trial (optional)
      restore.choose: fixed
    params:                      # dotted config keys -> distributions
      forget.lr: {type: float, low: 1e-4, high: 3e-3, log: true}
      forget.top_k: {type: int, low: 1, high: 4}
      forget.loss: {type: categorical, choices: [margin, similarity]}
      restore.alpha: {type: float, low: 0.0, high: 1.0}
    sweep:                       # extra soups measured in every trial, evaluations only
      restore.alpha: [0.4, 0.6, 0.8, 1.0]

Every key must be a config key, and both ends of every range must be values the config
accepts, so a bad space is refused before any trial starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from operator import attrgetter
from pathlib import Path
from typing import Any

import optuna.distributions as od

from distforget.config import METHODS, RunConfig, apply_overrides, build, read_yaml
from distforget.errors import ConfigError

SPACE_KEYS = ("method", "fixed", "params", "sweep")
SOUP_KEYS = ("restore.alpha", "restore.beta")


@dataclass(frozen=True)
class SearchSpace:
    method: str
    fixed: dict[str, Any] = field(default_factory=dict)
    params: dict[str, od.BaseDistribution] = field(default_factory=dict)
    sweep: tuple[tuple[float, float], ...] = ()
    source: str = ""

    def trial_config(self, base: RunConfig, values: dict[str, Any]) -> RunConfig:
        """The config of one trial: the base, the fixed overrides, then the sampled values."""
        data = apply_overrides(base.to_dict(), {"method": self.method, **self.fixed, **values})
        return build(RunConfig, data)

    def config_point(self, base: RunConfig) -> tuple[dict[str, Any], list[str]]:
        """``base``'s own value of each searched key (after the fixed overrides), for the
        search's first trial (``search.start_from_config``); the keys whose value lies outside
        their range or choices are left out (for the sampler) and listed second."""
        cfg = self.trial_config(base, {})
        point, outside = {}, []
        for key, dist in self.params.items():
            value = attrgetter(key)(cfg)
            if _within(dist, value):
                point[key] = value
            else:
                outside.append(key)
        return point, outside

    def with_soups_of(self, other: "SearchSpace") -> "SearchSpace":
        """This space with ``other``'s soup handling: its ``restore.*`` fixed values and
        searched ranges and its sweep. A searched baseline gets the method's soups this way."""
        soup = {k: v for k, v in other.params.items()
                if k.startswith("restore.") and k != "restore.beta"}
        fixed = {k: v for k, v in other.fixed.items() if k.startswith("restore.")}
        sweep = tuple(dict.fromkeys((a, 0.0) for a, _ in other.sweep))
        return SearchSpace(method=self.method, fixed={**self.fixed, **fixed},
                           params={**self.params, **soup}, sweep=sweep, source=self.source)


def shipped_spaces() -> dict[str, Path]:
    """Spaces that ship with distforget (the repository's ``search_spaces/`` folder)."""
    folder = resources.files("distforget.search_spaces")
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def resolve_space_path(space: str) -> Path:
    """A file path, or the name of a shipped space ("embedded", "cifar10", ...)."""
    path = Path(space)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"search.space {space!r}: no such file")
        return path
    shipped = shipped_spaces()
    if space not in shipped:
        raise ConfigError(f"search.space {space!r} is neither a file nor a shipped space "
                          f"({', '.join(sorted(shipped))})")
    return shipped[space]


def _within(dist: od.BaseDistribution, value: Any) -> bool:
    """Whether ``value`` is one the distribution can propose."""
    if isinstance(dist, od.CategoricalDistribution):
        return any(type(value) is type(c) and value == c for c in dist.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(dist, od.IntDistribution) and value != int(value):
        return False
    if not dist.low <= value <= dist.high:
        return False
    step = getattr(dist, "step", None)
    return step is None or abs((value - dist.low) / step - round((value - dist.low) / step)) < 1e-8


def _distribution(key: str, spec: Any) -> od.BaseDistribution:
    where = f"search space params.{key}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping with 'type', got {spec!r}")
    kind = spec.get("type")
    allowed = {"float": {"type", "low", "high", "log", "step"},
               "int": {"type", "low", "high", "log", "step"},
               "categorical": {"type", "choices"}}
    if kind not in allowed:
        raise ConfigError(f"{where}.type: got {kind!r}, expected float, int or categorical")
    unknown = sorted(set(spec) - allowed[kind])
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} for type {kind}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}.choices: expected a non-empty list, got {choices!r}")
        return od.CategoricalDistribution(choices)
    try:
        low, high = float(spec["low"]), float(spec["high"])
    except KeyError as exc:
        raise ConfigError(f"{where}: missing {exc.args[0]!r}") from None
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: low and high must be numbers, got {spec.get('low')!r} and "
                          f"{spec.get('high')!r}") from None
    if not low < high:
        raise ConfigError(f"{where}: empty or inverted range low={spec['low']} "
                          f"high={spec['high']}: expected low < high")
    log = bool(spec.get("log", False))
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0, got low={spec['low']}")
    step = spec.get("step")
    if log and step is not None:
        raise ConfigError(f"{where}: log and step cannot be combined")
    if kind == "int":
        if low != int(low) or high != int(high):
            raise ConfigError(f"{where}: int range needs integer ends, got {low} and {high}")
        return od.IntDistribution(int(low), int(high), log=log, step=int(step or 1))
    return od.FloatDistribution(low, high, log=log, step=None if step is None else float(step))


def _range_values(dist: od.BaseDistribution) -> list[Any]:
    if isinstance(dist, od.CategoricalDistribution):
        return list(dist.choices)
    return [dist.low, dist.high]


def load_space(space: str, base: RunConfig | None = None) -> SearchSpace:
    """Read and validate a space file against the run config."""
    path = resolve_space_path(space)
    data = read_yaml(path)
    unknown = sorted(set(data) - set(SPACE_KEYS))
    if unknown:
        raise ConfigError(f"search space {str(path)!r}: unknown key {unknown[0]!r}: expected "
                          f"{', '.join(SPACE_KEYS)}")
    method = data.get("method", "three_stage")
    if method not in METHODS or method == "retrain":  # a reference with nothing to search
        raise ConfigError(f"search space {str(path)!r}: method {method!r} is not one of "
                          f"{', '.join(m for m in METHODS if m != 'retrain')}")
    fixed = data.get("fixed") or {}
    params_spec = data.get("params") or {}
    if not isinstance(fixed, dict) or not isinstance(params_spec, dict):
        raise ConfigError(f"search space {str(path)!r}: 'fixed' and 'params' must be mappings")
    params = {str(k): _distribution(str(k), v) for k, v in params_spec.items()}
    if not params:
        raise ConfigError(f"search space {str(path)!r} has no params to search")

    base = base or RunConfig()
    space_obj = SearchSpace(method=method, fixed=dict(fixed), params=params, source=str(path))
    # Every end of every range must make a valid config (unknown keys, types, bounds).
    for key, dist in params.items():
        for value in _range_values(dist):
            try:
                space_obj.trial_config(base, {key: value})
            except ConfigError as exc:
                raise ConfigError(f"search space {str(path)!r}, params.{key} = {value!r}: "
                                  f"{exc}") from None

    sweep_spec = data.get("sweep") or {}
    if not isinstance(sweep_spec, dict) or set(sweep_spec) - set(SOUP_KEYS):
        raise ConfigError(f"search space {str(path)!r}: sweep may only list "
                          f"{' and '.join(SOUP_KEYS)}")
    alphas = sweep_spec.get("restore.alpha", [])
    betas = sweep_spec.get("restore.beta", [0.0])
    sweep = []
    for a in alphas:
        for b in betas:
            for key, v in (("restore.alpha", a), ("restore.beta", b)):
                if not isinstance(v, (int, float)) or not 0 <= v <= 1:
                    raise ConfigError(f"search space {str(path)!r}: sweep {key} value {v!r} is "
                                      "not a number in [0, 1]")
                dist = params.get(key)
                if dist is not None and not dist._contains(dist.to_internal_repr(float(v))):
                    raise ConfigError(f"search space {str(path)!r}: sweep {key} value {v!r} is "
                                      f"outside the searched range of {key}")
            sweep.append((float(a), float(b)))
    if sweep and method != "three_stage":
        raise ConfigError(f"search space {str(path)!r}: a soup sweep needs method three_stage")
    return SearchSpace(method=method, fixed=dict(fixed), params=params, sweep=tuple(sweep),
                       source=str(path))
