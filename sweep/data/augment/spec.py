"""Spectrogram augmentations of `augment.chain`: each works on the hit examples of a batch at once,
[n, 1, bins, frames], after the features (log-mel or fbank) and before the model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from sweep.data.augment.registry import AUGMENTATIONS, AugmentSpec, Draw
from sweep.schema import Field


def _masks(x: torch.Tensor, draw: Draw, axis: int, widest: int, num: int) -> torch.Tensor:
    """`num` bands per example along `axis`, each of a width drawn from [0, widest] (torchaudio's
    `mask_param`), zeroed."""
    size = x.shape[axis]
    widest = min(widest, size)
    pos = torch.arange(size, device=x.device).unsqueeze(0)
    shape = (-1, 1, size, 1) if axis == 2 else (-1, 1, 1, size)
    for _ in range(num):
        width = draw.integers(len(x), 0, widest + 1, x.device).unsqueeze(1)
        start = (draw.uniform(len(x), 0.0, 1.0, x.device).unsqueeze(1) * (size - width + 1)).long()
        x = x * ~((pos >= start) & (pos < start + width)).view(shape)
    return x


def time_masking(x: torch.Tensor, draw: Draw, p: Mapping[str, Any], rate: int) -> torch.Tensor:
    return _masks(x, draw, 3, p["tmp"], p["num"])


def freq_masking(x: torch.Tensor, draw: Draw, p: Mapping[str, Any], rate: int) -> torch.Tensor:
    return _masks(x, draw, 2, p["fmp"], p["num"])


AUGMENTATIONS.add("time_masking", AugmentSpec(
    {"tmp": Field(int, 20, low=0), "num": Field(int, 1, low=0)}, time_masking, "spec",
    "zero `num` spans of frames, each up to `tmp` frames wide (SpecAugment)",
))
AUGMENTATIONS.add("freq_masking", AugmentSpec(
    {"fmp": Field(int, 8, low=0), "num": Field(int, 1, low=0)}, freq_masking, "spec",
    "zero `num` bands of bins, each up to `fmp` bins wide (SpecAugment)",
))
