"""Datasets: a name → loader registry, and the clips a trainer consumes.

A loader returns every clip of the folds asked for as one float32 waveform tensor (decoded, mono,
resampled, fixed length), so features and augmentation can run batched on the training device.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sweep.config import Field


@dataclass
class Clips:
    """Fixed-length mono clips of one split, with their labels."""

    waves: torch.Tensor  # float32 [N, samples]
    labels: torch.Tensor  # int64 [N]
    classes: list[str]
    sample_rate: int

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class DatasetSpec:
    params: dict[str, Field]
    load: Callable[[Mapping[str, Any], Sequence[int]], Clips]


DATASETS: dict[str, DatasetSpec] = {}


def register(name: str, params: dict[str, Field]) -> Callable:
    def wrap(load: Callable[[Mapping[str, Any], Sequence[int]], Clips]) -> Callable:
        DATASETS[name] = DatasetSpec(params, load)
        return load

    return wrap


def dataset_params(name: str) -> dict[str, Field]:
    return DATASETS[name].params


def load_split(config: Mapping[str, Any], split: str) -> Clips:
    """The clips of one split (`train`, `val` or `test`) as the config's folds define it."""
    data = config["data"]
    return DATASETS[data["dataset"]].load(config, data["folds"][split])


from sweep.data import synthetic  # noqa: E402,F401  (registers itself)
