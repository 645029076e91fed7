"""SpecAugment and mixup, both scaled by one `augment.strength` in [0, 1] that a search can tune.

At strength 0 both are off; at 1, masks reach `freq_mask`/`time_mask` of the spectrogram and mixup
draws its weight from Beta(mixup_alpha, mixup_alpha).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


class Augment:
    """Batched, on-device augmentation of log-mel features.

    Its random streams are reseeded at every epoch from (seed, epoch), so a trial resumed from a
    checkpoint draws the same masks and mixes as one that never stopped.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        a = config["augment"]
        s = a["strength"]
        self.n_masks = a["n_masks"] if a["specaugment"] else 0
        self.freq_frac, self.time_frac = s * a["freq_mask"], s * a["time_mask"]
        self.alpha = s * a["mixup_alpha"] if a["mixup"] else 0.0
        self.reseed(0)

    def reseed(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)

    def spec(self, x: torch.Tensor) -> torch.Tensor:
        """Zero `n_masks` random frequency bands and time spans per example (x: [B, 1, F, T])."""
        for axis, frac in ((2, self.freq_frac), (3, self.time_frac)):
            width = int(frac * x.shape[axis])
            for _ in range(self.n_masks if width > 0 else 0):
                x = x * ~self._band(x.shape[0], x.shape[axis], width, x.device).view(
                    (-1, 1, x.shape[axis], 1) if axis == 2 else (-1, 1, 1, x.shape[axis])
                )
        return x

    def _band(self, batch: int, size: int, width: int, device: torch.device) -> torch.Tensor:
        w = (torch.rand(batch, 1, generator=self.generator) * (width + 1)).long()
        start = (torch.rand(batch, 1, generator=self.generator) * (size - w + 1)).long()
        pos = torch.arange(size).unsqueeze(0)
        return ((pos >= start) & (pos < start + w)).to(device)

    def mixup(self, x: torch.Tensor, y: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix each example with a shuffled partner; labels become soft targets [B, n_classes]."""
        target = torch.nn.functional.one_hot(y, n_classes).float()
        if self.alpha <= 0:
            return x, target
        lam = float(self.rng.beta(self.alpha, self.alpha))
        lam = max(lam, 1 - lam)
        perm = torch.randperm(x.shape[0], generator=self.generator).to(x.device)
        return lam * x + (1 - lam) * x[perm], lam * target + (1 - lam) * target[perm]
