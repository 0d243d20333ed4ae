"""Stage 3, restore: model soups in weight space, as pure functions over state dicts.

``theta(alpha, beta) = theta_0 + alpha * ((1 - beta) * (theta_2 - theta_0)
                                          + beta * (theta_1 - theta_0))``
with theta_0 the base, theta_1 the forgotten and theta_2 the reminded model: beta = 0 is the
line between base and reminded model, other values reach the simplex over all three.
Floating-point tensors are mixed in fp32 and cast back to their dtype; integer buffers (such as
BatchNorm's ``num_batches_tracked``) are copied from the first state dict; key sets must match.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch

from distforget.errors import CheckpointError

StateDict = Mapping[str, torch.Tensor]


def check_keys(states: Sequence[StateDict]) -> None:
    """All state dicts have the same keys and shapes; otherwise a ``CheckpointError``."""
    first = states[0]
    for i, other in enumerate(states[1:], start=1):
        if set(other) != set(first):
            diff = sorted(set(other) ^ set(first))
            raise CheckpointError(f"soup ingredients 0 and {i} have different keys "
                                  f"({len(diff)} differ, e.g. {diff[0]!r})")
        for k, v in first.items():
            if tuple(other[k].shape) != tuple(v.shape):
                raise CheckpointError(f"soup ingredient {i}: {k!r} has shape "
                                      f"{tuple(other[k].shape)}, expected {tuple(v.shape)}")


def interpolate(states: Sequence[StateDict], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """``sum_i weights[i] * states[i]`` for floating tensors (in fp32); the rest from states[0]."""
    if len(states) != len(weights) or not states:
        raise ValueError("interpolate needs one weight per state dict")
    check_keys(states)
    out = {}
    for k, v in states[0].items():
        if v.is_floating_point():
            mixed = sum(float(w) * s[k].float() for w, s in zip(weights, states))
            out[k] = mixed.to(v.dtype)
        else:
            out[k] = v.clone()
    return out


def soup_weights(alpha: float, beta: float = 0.0) -> tuple[float, float, float]:
    """Weights of (base, forgotten, reminded) for the point (alpha, beta)."""
    return 1.0 - alpha, alpha * beta, alpha * (1.0 - beta)


def soup(base: StateDict, forgotten: StateDict, reminded: StateDict, alpha: float,
         beta: float = 0.0) -> dict[str, torch.Tensor]:
    """The soup at (alpha, beta); see the module docstring."""
    return interpolate([base, forgotten, reminded], soup_weights(alpha, beta))


def calibration_shortfall(row: Mapping[str, float], forget_target: float,
                          retain_bound: float) -> float:
    """How far a calibration row is from the rule's two bounds: forget accuracy above
    ``forget_target`` plus retain accuracy below ``retain_bound`` (0 when it meets both)."""
    return (max(0.0, row["calib_forget_acc"] - forget_target)
            + max(0.0, retain_bound - row["calib_retain_acc"]))


def choose_alpha(evaluate: Callable[[float], Mapping[str, float]], grid: Sequence[float],
                 forget_target: float, retain_bound: float = 0.0) -> tuple[float, list[dict]]:
    """Choose alpha on the calibration set: the best ``calib_retain_acc`` among the alphas whose
    ``calib_forget_acc`` is at most ``forget_target`` and whose ``calib_retain_acc`` is at
    least ``retain_bound`` (ties: the smaller alpha, nearer the base); if none is, the alpha
    nearest to both bounds (``calibration_shortfall``; ties: the best retain accuracy). With
    ``retain_bound`` 0 that is the lowest forget accuracy. ``evaluate`` costs an evaluation
    only, never training."""
    rows = [{"alpha": float(a), **evaluate(float(a))} for a in grid]
    best = min(rows, key=lambda r: (calibration_shortfall(r, forget_target, retain_bound),
                                    -r["calib_retain_acc"], r["alpha"]))
    return best["alpha"], rows


def calibration_retain_bound(cfg, base_metrics: Mapping[str, float]) -> float:
    """The calibration rule's retain bound, an accuracy: ``cfg.retain_floor`` (a share; ``cfg``
    is a ``RestoreConfig``) times the base model's calibration retain accuracy (0 where that is
    unknown)."""
    base = base_metrics.get("calib_retain_acc", float("nan"))
    return cfg.retain_floor * base if base == base else 0.0


def explain_choice(cfg, alpha: float, beta: float, rows: Sequence[Mapping[str, float]],
                   retain_bound: float = 0.0) -> str:
    """Why the soup is at (alpha, beta), in words: the rule of ``choose_alpha`` applied to its
    calibration ``rows`` with ``retain_bound``, or the configured point (``cfg`` is a
    ``RestoreConfig``)."""
    if cfg.choose != "calibration" or not rows:
        return (f"restore.choose is {cfg.choose}: alpha {alpha:g}, beta {beta:g} as set (by the "
                "config, or proposed by the search)")
    ok = [r for r in rows if calibration_shortfall(r, cfg.forget_target, retain_bound) == 0]
    chosen = next(r for r in rows if r["alpha"] == alpha)
    bounds = f"forget accuracy is <= {cfg.forget_target:g}"
    if retain_bound:
        bounds += (f" and retain accuracy >= {retain_bound:.3f} ({cfg.retain_floor:g} x the base "
                   "model's)")
    if ok:
        return (f"alpha {alpha:g}: the best calibration retain accuracy "
                f"({chosen['calib_retain_acc']:.3f}) among the {len(ok)} of {len(rows)} grid "
                f"alphas whose calibration {bounds} (this one: forget "
                f"{chosen['calib_forget_acc']:.3f})")
    return (f"alpha {alpha:g}: no grid alpha's calibration {bounds}; this one comes nearest "
            f"(forget {chosen['calib_forget_acc']:.3f}, retain {chosen['calib_retain_acc']:.3f})")
