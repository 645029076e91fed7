"""Label-mixing batch augmentations of `augment.mix`, EAT's four: each mixes every example of the batch with
a partner and says how much of each label the result keeps."""

from __future__ import annotations

import torch

from sweep.data.augment.registry import MIXES, Draw, MixSpec


def mixup(x: torch.Tensor, partner: torch.Tensor, draw: Draw, rate: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A blend with λ drawn per example from [0.1, 1]."""
    lam = draw.uniform(len(x), 0.1, 1.0, x.device)
    w = lam.view(-1, *([1] * (x.dim() - 1)))
    return w * x + (1 - w) * x[partner], lam


MIXES.add("mixup", MixSpec(mixup, ("wave", "spec"), "blend each example with its partner, λ from [0.1, 1]"))
