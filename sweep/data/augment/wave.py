"""Waveform augmentations of `augment.chain`: each works on the hit clips of a batch at once, [n, samples].

Label-preserving, on the training device, before the features are computed. The defaults are those of
"End-to-End Audio Strikes Back" (EAT) where it has the augmentation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from sweep.data.augment.registry import AUGMENTATIONS, AugmentSpec, Draw
from sweep.schema import Field


def _column(values: torch.Tensor) -> torch.Tensor:
    return values.unsqueeze(1)


def gain(x: torch.Tensor, draw: Draw, p: Mapping[str, Any], rate: int) -> torch.Tensor:
    return x * _column(draw.uniform(len(x), p["low"], p["high"], x.device))


def polarity(x: torch.Tensor, draw: Draw, p: Mapping[str, Any], rate: int) -> torch.Tensor:
    return -x


def shift(x: torch.Tensor, draw: Draw, p: Mapping[str, Any], rate: int) -> torch.Tensor:
    """Move the clip by up to `max_fraction` of its length either way; the uncovered end is silence."""
    n = x.shape[1]
    by = _column((draw.uniform(len(x), -p["max_fraction"], p["max_fraction"], x.device) * n).long())
    source = torch.arange(n, device=x.device).unsqueeze(0) - by
    return x.gather(1, source.clamp(0, n - 1)) * ((source >= 0) & (source < n))


def mask(x: torch.Tensor, draw: Draw, p: Mapping[str, Any], rate: int) -> torch.Tensor:
    """Silence one span of `seconds` (the whole clip if it is shorter) at a random place."""
    n = x.shape[1]
    width = min(round(p["seconds"] * rate), n)
    start = _column(draw.integers(len(x), 0, n - width + 1, x.device))
    pos = torch.arange(n, device=x.device).unsqueeze(0)
    return x * ~((pos >= start) & (pos < start + width))


def noise(x: torch.Tensor, draw: Draw, p: Mapping[str, Any], rate: int) -> torch.Tensor:
    """Add white noise at a signal-to-noise ratio drawn per clip from [min_snr_db, max_snr_db]."""
    snr = _column(draw.uniform(len(x), p["min_snr_db"], p["max_snr_db"], x.device))
    rms = x.pow(2).mean(1, keepdim=True).sqrt()
    return x + draw.normal(tuple(x.shape), x.device) * rms * 10 ** (-snr / 20)


def _snr_order(p: Mapping[str, Any]) -> str | None:
    if p["min_snr_db"] > p["max_snr_db"]:
        return f"min_snr_db ({p['min_snr_db']}) is above max_snr_db ({p['max_snr_db']})"
    return None


def _range_order(p: Mapping[str, Any]) -> str | None:
    return f"low ({p['low']}) is above high ({p['high']})" if p["low"] > p["high"] else None


AUGMENTATIONS.add("gain", AugmentSpec(
    {"low": Field(float, 0.5, low=0.0), "high": Field(float, 1.3, low=0.0)}, gain, "wave",
    "multiply the clip by a factor drawn from [low, high]", check=_range_order,
))
AUGMENTATIONS.add("polarity", AugmentSpec({}, polarity, "wave", "invert the clip's sign"))
AUGMENTATIONS.add("shift", AugmentSpec(
    {"max_fraction": Field(float, 0.1, low=0.0, high=1.0)}, shift, "wave",
    "move the clip by up to max_fraction of its length either way, filling with silence",
))
AUGMENTATIONS.add("mask", AugmentSpec(
    {"seconds": Field(float, 0.1, low=0.0)}, mask, "wave", "silence one span of `seconds` at a random place",
))
AUGMENTATIONS.add("noise", AugmentSpec(
    {"min_snr_db": Field(float, 30.0), "max_snr_db": Field(float, 30.0)}, noise, "wave",
    "add noise at an SNR drawn from [min_snr_db, max_snr_db]", check=_snr_order,
))
