"""Per-image losses the stages share (as open_clip keeps its ``loss.py``).

- ``forget_loss``: pushes normalised image features away from their class text (the forget
  stage's loss, and the remind stage's optional forget term);
- ``distillation_loss``: ``T^2 * KL(teacher_T || student_T)`` (the remind stage's distillation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def forget_loss(feats: torch.Tensor, head: torch.Tensor, labels: torch.Tensor, scale: float,
                kind: str, margin: float) -> torch.Tensor:
    """Per-image loss that pushes normalised image features away from their class text.

    similarity: the cosine to the class text; margin: hinge on that cosine until another class
    leads by ``margin``; ce_away: ``-log(1 - p(class))`` under the zero-shot softmax.
    """
    sims = feats @ head.T
    own = sims.gather(1, labels[:, None]).squeeze(1)
    if kind == "similarity":
        return own
    others = sims.masked_fill(F.one_hot(labels, sims.shape[1]).bool(), float("-inf"))
    if kind == "margin":
        return F.relu(own - others.max(dim=1).values + margin)
    if kind == "ce_away":
        logits = scale * sims
        return -(torch.logsumexp(scale * others, dim=1) - torch.logsumexp(logits, dim=1))
    raise ValueError(f"unknown forget loss {kind!r}")


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float
                      ) -> torch.Tensor:
    """Per-image ``T^2 * KL(softmax(teacher/T) || softmax(student/T))``."""
    t = temperature
    kl = F.kl_div(F.log_softmax(student / t, dim=-1), F.log_softmax(teacher / t, dim=-1),
                  log_target=True, reduction="none").sum(-1)
    return t * t * kl
