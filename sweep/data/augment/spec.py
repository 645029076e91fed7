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


def dropblock(x: torch.Tensor, draw: Draw, p: Mapping[str, Any], rate: int) -> torch.Tensor:
    """DropBlock (Ghiasi et al., 2018) on the input: block seeds drawn at a rate γ chosen so that about
    `drop_prob` of the spectrogram is dropped, each seed zeroing the `block_f` × `block_t` block it starts,
    the kept values scaled by area / kept area per example so the example's sum is kept on average."""
    bins, frames = x.shape[2], x.shape[3]
    bf, bt = min(p["block_f"], bins), min(p["block_t"], frames)
    valid = (bins - bf + 1) * (frames - bt + 1)
    gamma = p["drop_prob"] / (bf * bt) * bins * frames / valid
    seeds = (draw.rand((len(x), 1, bins - bf + 1, frames - bt + 1), x.device) < gamma).to(x.dtype)
    blocks = torch.nn.functional.max_pool2d(torch.nn.functional.pad(seeds, (bt - 1, bt - 1, bf - 1, bf - 1)),
                                            (bf, bt), stride=1)
    keep = 1 - blocks
    kept = keep.sum((2, 3), keepdim=True)
    return x * keep * (bins * frames / kept.clamp_min(1))


AUGMENTATIONS.add("time_masking", AugmentSpec(
    {"tmp": Field(int, 20, low=0), "num": Field(int, 1, low=0)}, time_masking, "spec",
    "zero `num` spans of frames, each up to `tmp` frames wide (SpecAugment)",
))
AUGMENTATIONS.add("freq_masking", AugmentSpec(
    {"fmp": Field(int, 8, low=0), "num": Field(int, 1, low=0)}, freq_masking, "spec",
    "zero `num` bands of bins, each up to `fmp` bins wide (SpecAugment)",
))
AUGMENTATIONS.add("dropblock", AugmentSpec(
    {"drop_prob": Field(float, 0.1, low=0.0, high=1.0), "block_t": Field(int, 5, low=1),
     "block_f": Field(int, 5, low=1)}, dropblock, "spec",
    "DropBlock: zero blocks of block_f bins × block_t frames, about drop_prob of the spectrogram, kept values "
    "rescaled by area / kept area",
))
