"""Waveform augmentations of `augment.chain` that move, scale or warp the clip's own samples (noise.py holds
those that add a synthetic signal): each works on the hit clips of a batch at once, [n, samples].

Label-preserving, on the training device, before the features are computed. The defaults are those of
"End-to-End Audio Strikes Back" (EAT) where it has the augmentation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from sweep.data.augment.registry import AUGMENTATIONS, AugmentSpec, Draw, on_device
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


def cyclic_shift(x: torch.Tensor, draw: Draw, p: Mapping[str, Any], rate: int) -> torch.Tensor:
    """Roll the clip by d samples, d drawn from [0, max_fraction × length): its last d samples move to the
    front (EAT's cycshift; the circular shift of the classic Optuna study)."""
    n = x.shape[1]
    by = _column(draw.integers(len(x), 0, max(1, min(n, round(p["max_fraction"] * n))), x.device))
    return x.gather(1, (torch.arange(n, device=x.device).unsqueeze(0) - by) % n)


def amp_segment(x: torch.Tensor, draw: Draw, p: Mapping[str, Any], rate: int) -> torch.Tensor:
    """Multiply one span, up to `max_fraction` of the clip long at a random place, by a factor drawn from
    [low, high] (EAT's ampsegment)."""
    n = x.shape[1]
    width = _column(draw.integers(len(x), 1, max(1, round(p["max_fraction"] * n)) + 1, x.device))
    start = (_column(draw.uniform(len(x), 0.0, 1.0, x.device)) * (n - width + 1)).long()
    factor = _column(draw.uniform(len(x), p["low"], p["high"], x.device))
    pos = torch.arange(n, device=x.device).unsqueeze(0)
    inside = (pos >= start) & (pos < start + width)
    return torch.where(inside, x * factor, x)


def _read(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """x at fractional sample positions [n, samples] by linear interpolation; positions past the end read 0."""
    n = x.shape[1]
    left = pos.floor().clamp(0, n - 1)
    w = (pos - left).clamp(0, 1).to(x.dtype)
    i = left.long()
    value = x.gather(1, i) * (1 - w) + x.gather(1, (i + 1).clamp(max=n - 1)) * w
    return value * (pos <= n - 1)


def speed(x: torch.Tensor, draw: Draw, p: Mapping[str, Any], rate: int) -> torch.Tensor:
    """Play the clip `factor` times as fast, a factor drawn per clip from `factors`: sample j of the result
    is the clip at j × factor, by linear interpolation (not a sinc resampler), so a tone's frequency is
    multiplied by the factor; cropped to the clip's length, or zero-padded when the factor is above 1."""
    factors = torch.tensor(p["factors"])
    rates = _column(on_device(factors[draw.integers(len(x), 0, len(factors), torch.device("cpu"))], x.device))
    return _read(x, torch.arange(x.shape[1], device=x.device).unsqueeze(0) * rates)


def time_shift(x: torch.Tensor, draw: Draw, p: Mapping[str, Any], rate: int) -> torch.Tensor:
    """Split the clip at `parts` − 1 random points and stretch or compress each part by a factor from
    [1 − max_stretch, 1 + max_stretch], the parts' new lengths renormalised to the clip's: a monotone
    piecewise-linear time warp that keeps both ends in place, read by linear interpolation."""
    n, k = x.shape[1], p["parts"]
    cuts = torch.sort(draw.uniform(len(x) * (k - 1), 0.0, 1.0, x.device).view(-1, k - 1), dim=1).values
    zero, one = torch.zeros(len(x), 1, device=x.device), torch.ones(len(x), 1, device=x.device)
    source = torch.cat([zero, cuts, one], 1)  # part boundaries in the clip, [n, parts + 1], as fractions
    stretch = draw.uniform(len(x) * k, 1 - p["max_stretch"], 1 + p["max_stretch"], x.device).view(-1, k)
    sizes = source.diff(dim=1) * stretch
    target = torch.cat([zero, sizes.cumsum(1) / sizes.sum(1, keepdim=True)], 1)  # the same boundaries warped
    target[:, -1] = 1.0
    slope = source.diff(dim=1) / target.diff(dim=1).clamp_min(1e-12)  # clip time per warped time, per part
    offset = source[:, :-1] - target[:, :-1] * slope
    t = torch.linspace(0.0, 1.0, n, device=x.device).expand(len(x), -1)
    part = torch.zeros(t.shape, dtype=torch.long, device=x.device)
    for b in range(1, k):  # which part each sample falls in: a comparison per inner boundary
        part += t >= target[:, b : b + 1]
    pos = offset.gather(1, part) + t * slope.gather(1, part)
    return _read(x, (pos * (n - 1)).clamp(0, n - 1))


def _range_order(p: Mapping[str, Any]) -> str | None:
    return f"low ({p['low']}) is above high ({p['high']})" if p["low"] > p["high"] else None


def _factors(p: Mapping[str, Any]) -> str | None:
    if not p["factors"] or any(not f > 0 for f in p["factors"]):
        return f"factors are speeds above 0 (1 is unchanged), at least one, got {p['factors']}"
    return None


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
AUGMENTATIONS.add("cyclic_shift", AugmentSpec(
    {"max_fraction": Field(float, 1.0, low=0.0, high=1.0)}, cyclic_shift, "wave",
    "roll the clip by up to max_fraction of its length: the end moved to the front",
))
AUGMENTATIONS.add("amp_segment", AugmentSpec(
    {"max_fraction": Field(float, 0.1, low=0.0, high=1.0), "low": Field(float, 0.5, low=0.0),
     "high": Field(float, 1.3, low=0.0)}, amp_segment, "wave",
    "multiply one span of up to max_fraction of the clip by a factor drawn from [low, high]", check=_range_order,
))
AUGMENTATIONS.add("speed", AugmentSpec(
    {"factors": Field(list, [0.8, 0.9, 1.1, 1.2], item=float)}, speed, "wave",
    "play the clip at a speed drawn from `factors` (linear interpolation), cropped or zero-padded to its length",
    check=_factors,
))
AUGMENTATIONS.add("time_shift", AugmentSpec(
    {"parts": Field(int, 3, low=2), "max_stretch": Field(float, 0.2, low=0.0, high=0.9)}, time_shift, "wave",
    "stretch or compress each of `parts` random parts of the clip by up to max_stretch, keeping its length",
))
