"""Metrics on held-out images: validation (what every choice sees; unprefixed names) or test
(read only after the choice; ``test_<name>``, with 95% Wilson score intervals
``test_<name>_lo``/``_hi`` for the accuracies).

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

import math
from collections import Counter
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from distforget.data.transforms import DevicePreprocess
from distforget.objectives import as_test
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
    """Top-1 accuracy (NaN for no images)."""
    return correct_count(logits, labels)[0]


def correct_count(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, tuple[int, int]]:
    """Top-1 accuracy and (correct, n)."""
    correct = int((logits.argmax(dim=-1) == labels).sum().item()) if len(labels) else 0
    return (correct / len(labels) if len(labels) else float("nan")), (correct, len(labels))


def membership_auc(member_losses: np.ndarray, nonmember_losses: np.ndarray) -> float:
    """AUC of the loss-threshold attack: P(member loss < non-member loss), ties count half."""
    m = np.asarray(member_losses, dtype=np.float64)
    n = np.asarray(nonmember_losses, dtype=np.float64)
    if len(m) == 0 or len(n) == 0:
        return float("nan")
    less = (m[:, None] < n[None, :]).sum()
    ties = (m[:, None] == n[None, :]).sum()
    return float((less + 0.5 * ties) / (len(m) * len(n)))


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``correct / n`` (NaN for n = 0); unlike the
    normal approximation it stays inside [0, 1] and is not empty at 0 or n correct."""
    if n == 0:
        return float("nan"), float("nan")
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


class Evaluator:
    """Metrics of image towers on fixed sets; features of the sets are not cached (weights
    change), but the images and labels are moved to the device once. ``reads`` counts the
    images read per split (the tests check that test images are read only after the
    choice)."""

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
        self.reads: Counter = Counter()

    def _features(self, visual, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        idx, labels = self.splits[split]
        self.reads[split] += len(idx)
        feats = image_features(visual, self.images[idx], self.prep,
                               batch_size=self.batch_size, precision=self.precision)
        return feats, torch.tensor(labels, device=self.prep.device)

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * feats @ self.head.T

    def metrics(self, visual: torch.nn.Module, part: str = "val") -> dict[str, float]:
        """The held-out metrics of one image tower on the validation (``part="val"``, plain
        names) or the test images (``"test"``: ``test_<name>``, and intervals)."""
        if part not in ("val", "test"):
            raise ValueError(f"part {part!r}: expected 'val' or 'test'")
        out, counts = {}, {}
        f_feats, f_labels = self._features(visual, f"{part}_forget")
        f_logits = self.logits(f_feats)
        out["forget_acc"], counts["forget_acc"] = correct_count(f_logits, f_labels)
        out["forget_sim"] = (f_feats * self.head[f_labels]).sum(-1).mean().item()
        for name, split in (("retain_acc", "retain"), ("zeroshot_acc", "zeroshot")):
            feats, labels = self._features(visual, f"{part}_{split}")
            out[name], counts[name] = correct_count(self.logits(feats), labels)
        m_feats, m_labels = self._features(visual, "forget_train")
        member = F.cross_entropy(self.logits(m_feats), m_labels, reduction="none")
        nonmember = F.cross_entropy(f_logits, f_labels, reduction="none")
        out["mia_auc"] = membership_auc(member.cpu().numpy(), nonmember.cpu().numpy())
        if part == "val":
            return out
        test = {as_test(k): v for k, v in out.items()}
        for name, (correct, n) in counts.items():
            lo, hi = wilson_interval(correct, n)
            test[f"{as_test(name)}_lo"], test[f"{as_test(name)}_hi"] = lo, hi
        return test

    def calibration(self, visual: torch.nn.Module) -> dict[str, float]:
        """Accuracy on the calibration set D_m (forget and retain parts)."""
        out = {}
        for name, split in (("calib_forget_acc", "calib_forget"),
                            ("calib_retain_acc", "calib_retain")):
            feats, labels = self._features(visual, split)
            out[name] = accuracy(self.logits(feats), labels)
        return out
