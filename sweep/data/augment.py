"""SpecAugment, mixup and EAT's waveform augmentations, all scaled by one `augment.strength` in [0, 1].

At strength 0 all are off; at 1, masks reach `freq_mask`/`time_mask` of the spectrogram, mixup draws its
weight from Beta(mixup_alpha, mixup_alpha), and each waveform augmentation (`augment.waveform`: gain,
polarity, time shift, a 0.1 s time mask, white noise at 30 dB SNR, as in "End-to-End Audio Strikes Back")
hits an example with probability 1/2, the EAT recipe's rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from sweep.config.typed import typed


class Augment:
    """Batched, on-device augmentation of log-mel features.

    Its random streams are reseeded at every epoch from (seed, epoch), so a trial resumed from a
    checkpoint draws the same masks and mixes as one that never stopped.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        cfg = typed(config)
        a = cfg.augment
        s = a.strength
        self.n_masks = a.n_masks if a.specaugment else 0
        self.freq_frac, self.time_frac = s * a.freq_mask, s * a.time_mask
        self.alpha = s * a.mixup_alpha if a.mixup else 0.0
        self.wave_p = s / 2 if a.waveform else 0.0
        self.mask_samples = int(0.1 * cfg.data.sample_rate)
        self.reseed(0)

    def reseed(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)

    def wave(self, x: torch.Tensor) -> torch.Tensor:
        """EAT's label-preserving waveform augmentations on a batch of clips [B, samples]."""
        if self.wave_p <= 0:
            return x
        batch, n = x.shape

        def hit() -> torch.Tensor:
            return (torch.rand(batch, 1, generator=self.generator) < self.wave_p).to(x.device)

        def uniform(low: float, high: float) -> torch.Tensor:
            return (low + (high - low) * torch.rand(batch, 1, generator=self.generator)).to(x.device)

        x = torch.where(hit(), x * uniform(0.5, 1.3), x)  # gain
        x = torch.where(hit(), -x, x)  # polarity
        shift = (uniform(-0.1, 0.1) * n).long()  # time shift by up to a tenth of the clip, zero-filled
        source = torch.arange(n, device=x.device).unsqueeze(0) - shift
        shifted = x.gather(1, source.clamp(0, n - 1)) * ((source >= 0) & (source < n))
        x = torch.where(hit(), shifted, x)
        width = min(self.mask_samples, n)
        x = x * ~(self._band(batch, n, width, x.device, exact=True) & hit())  # a 0.1 s time mask
        rms = x.pow(2).mean(1, keepdim=True).sqrt()
        noise = torch.randn(x.shape, generator=self.generator).to(x.device) * rms * 10 ** (-30 / 20)
        return torch.where(hit(), x + noise, x)

    def spec(self, x: torch.Tensor) -> torch.Tensor:
        """Zero `n_masks` random frequency bands and time spans per example (x: [B, 1, F, T])."""
        if x.dim() != 4:  # raw waveforms: their own augmentations ran in `wave`
            return x
        for axis, frac in ((2, self.freq_frac), (3, self.time_frac)):
            width = int(frac * x.shape[axis])
            for _ in range(self.n_masks if width > 0 else 0):
                x = x * ~self._band(x.shape[0], x.shape[axis], width, x.device).view(
                    (-1, 1, x.shape[axis], 1) if axis == 2 else (-1, 1, 1, x.shape[axis])
                )
        return x

    def _band(self, batch: int, size: int, width: int, device: torch.device, exact: bool = False) -> torch.Tensor:
        """A random span per example of `width` (exact) or up to `width` positions; True inside it."""
        if exact:
            w = torch.full((batch, 1), width)
        else:
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
