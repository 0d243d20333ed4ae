"""Batch preprocessing on the training device.

Images stay uint8 until they reach the device; resizing to the model's input size and
normalising with its mean and std happen there, one batch at a time, never per image in Python.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


class DevicePreprocess:
    """uint8 NHWC batches -> normalised float NCHW batches at the model's input size."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float],
                 device: torch.device | str):
        self.size = int(size)
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)

    def __call__(self, batch: np.ndarray | torch.Tensor, flip: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """``flip``: optional bool mask [N]; those images are mirrored left-right."""
        x = torch.as_tensor(np.asarray(batch)) if not torch.is_tensor(batch) else batch
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        else:
            x = x.to(self.device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        if flip is not None and bool(flip.any()):
            flip = flip.to(self.device)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            # Bicubic as open_clip's transforms; antialias when shrinking.
            x = F.interpolate(x, size=(self.size, self.size), mode="bicubic",
                              align_corners=False, antialias=x.shape[-1] > self.size)
            x = x.clamp_(0.0, 1.0)
        return (x - self.mean) / self.std
