"""Metrics on held-out images.

- ``forget_acc``: top-1 accuracy over all classes on held-out images of the forget subgroup
  (lower is better);
- ``retain_acc``: top-1 on held-out images of the retained subgroups (and retained classes);
- ``zeroshot_acc``: top-1 on held-out images of the zero-shot classes, which no stage trains on;
- ``forget_sim``: mean cosine similarity between held-out forget images and their class text
  embedding (the zero-shot head row);
- ``mia_auc``: membership inference on the forget set: the AUC with which the per-image
  cross-entropy separates the trained forget images (members) from held-out forget images of
  the same subgroup (lower loss = member). 0.5 means the two cannot be told apart.

The ``base_`` twins are the same metrics for the untouched base model. Calibration metrics
(``calib_forget_acc``, ``calib_retain_acc``) use the calibration set D_m and only choose soup
coefficients.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from distforget.data.transforms import DevicePreprocess
from distforget.training import autocast, embed, eval_mode



@torch.no_grad()
def image_features(visual: torch.nn.Module, images: np.ndarray, prep: DevicePreprocess, *,
                   batch_size: int = 512, precision: str = "auto") -> torch.Tensor:
    """L2-normalised image embeddings [N, D] in fp32 on the preprocessing device."""
    out = []
    with eval_mode(visual), autocast(prep.device, precision):
        for i in range(0, len(images), batch_size):
            out.append(embed(visual, prep(images[i:i + batch_size])))
    if not out:
        return torch.empty(0, 0, device=prep.device)
    return torch.cat(out)


def zero_shot_logits(visual: torch.nn.Module, images: np.ndarray, prep: DevicePreprocess,
                     head: torch.Tensor, logit_scale: float, *, precision: str = "auto"
                     ) -> np.ndarray:
    """``logit_scale * features @ head.T`` for ``images`` as fp32 numpy: a frozen model's
    teacher outputs (retain images, synthetic images, forget images)."""
    feats = image_features(visual, images, prep, precision=precision)
    if len(feats) == 0:
        return np.zeros((0, head.shape[0]), np.float32)
    return (logit_scale * feats @ head.to(feats.device).T).float().cpu().numpy()


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    if len(labels) == 0:
        return float("nan")
    return (logits.argmax(dim=-1) == labels).float().mean().item()


def membership_auc(member_losses: np.ndarray, nonmember_losses: np.ndarray) -> float:
    """AUC of the loss-threshold attack: P(member loss < non-member loss), ties count half."""
    m = np.asarray(member_losses, dtype=np.float64)
    n = np.asarray(nonmember_losses, dtype=np.float64)
    if len(m) == 0 or len(n) == 0:
        return float("nan")
    less = (m[:, None] < n[None, :]).sum()
    ties = (m[:, None] == n[None, :]).sum()
    return float((less + 0.5 * ties) / (len(m) * len(n)))


class Evaluator:
    """Metrics of image towers on fixed sets; features of the sets are not cached (weights
    change), but the images and labels are moved to the device once."""

    def __init__(self, images: np.ndarray, splits: Mapping[str, tuple[np.ndarray, np.ndarray]],
                 head: torch.Tensor, logit_scale: float, prep: DevicePreprocess,
                 precision: str = "auto", batch_size: int = 512):
        self.images = images
        self.splits = splits
        self.head = head.to(prep.device)
        self.logit_scale = float(logit_scale)
        self.prep = prep
        self.precision = precision
        self.batch_size = batch_size

    def _features(self, visual, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        idx, labels = self.splits[split]
        feats = image_features(visual, self.images[idx], self.prep,
                               batch_size=self.batch_size, precision=self.precision)
        return feats, torch.tensor(labels, device=self.prep.device)

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * feats @ self.head.T

    def metrics(self, visual: torch.nn.Module) -> dict[str, float]:
        """The held-out metrics of one image tower."""
        out = {}
        f_feats, f_labels = self._features(visual, "eval_forget")
        f_logits = self.logits(f_feats)
        out["forget_acc"] = accuracy(f_logits, f_labels)
        out["forget_sim"] = (f_feats * self.head[f_labels]).sum(-1).mean().item()
        for name, split in (("retain_acc", "eval_retain"), ("zeroshot_acc", "eval_zeroshot")):
            feats, labels = self._features(visual, split)
            out[name] = accuracy(self.logits(feats), labels)
        m_feats, m_labels = self._features(visual, "forget_train")
        member = F.cross_entropy(self.logits(m_feats), m_labels, reduction="none")
        nonmember = F.cross_entropy(f_logits, f_labels, reduction="none")
        out["mia_auc"] = membership_auc(member.cpu().numpy(), nonmember.cpu().numpy())
        return out

    def calibration(self, visual: torch.nn.Module) -> dict[str, float]:
        """Accuracy on the calibration set D_m (forget and retain parts)."""
        out = {}
        for name, split in (("calib_forget_acc", "calib_forget"),
                            ("calib_retain_acc", "calib_retain")):
            feats, labels = self._features(visual, split)
            out[name] = accuracy(self.logits(feats), labels)
        return out
