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


def choose_alpha(evaluate: Callable[[float], Mapping[str, float]], grid: Sequence[float],
                 forget_target: float) -> tuple[float, list[dict]]:
    """Choose alpha on the calibration set: the best ``calib_retain_acc`` among the alphas whose
    ``calib_forget_acc`` is at most ``forget_target`` (ties: the smaller alpha, nearer the
    base); if none is, the lowest ``calib_forget_acc`` (ties: the best retain accuracy).
    ``evaluate`` costs an evaluation only, never training."""
    rows = [{"alpha": float(a), **evaluate(float(a))} for a in grid]
    ok = [r for r in rows if r["calib_forget_acc"] <= forget_target]
    if ok:
        best = max(ok, key=lambda r: (r["calib_retain_acc"], -r["alpha"]))
    else:
        best = min(rows, key=lambda r: (r["calib_forget_acc"], -r["calib_retain_acc"]))
    return best["alpha"], rows


def explain_choice(cfg, alpha: float, beta: float, rows: Sequence[Mapping[str, float]]) -> str:
    """Why the soup is at (alpha, beta), in words: the rule of ``choose_alpha`` applied to its
    calibration ``rows``, or the configured point (``cfg`` is a ``RestoreConfig``)."""
    if cfg.choose != "calibration" or not rows:
        return (f"restore.choose is {cfg.choose}: alpha {alpha:g}, beta {beta:g} as set (by the "
                "config, or proposed by the search)")
    ok = [r for r in rows if r["calib_forget_acc"] <= cfg.forget_target]
    chosen = next(r for r in rows if r["alpha"] == alpha)
    if ok:
        return (f"alpha {alpha:g}: the best calibration retain accuracy "
                f"({chosen['calib_retain_acc']:.3f}) among the {len(ok)} of {len(rows)} grid "
                f"alphas whose calibration forget accuracy is <= {cfg.forget_target:g} "
                f"(this one: {chosen['calib_forget_acc']:.3f})")
    return (f"alpha {alpha:g}: no grid alpha brings calibration forget accuracy to <= "
            f"{cfg.forget_target:g}; this one has the lowest "
            f"({chosen['calib_forget_acc']:.3f}, retain {chosen['calib_retain_acc']:.3f})")
