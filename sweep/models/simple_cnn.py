"""`simple_cnn`: the small from-scratch CNN of the classic Optuna + PyTorch example, as a baseline to beat.

Its depth, width, hidden size and dropout are exactly the knobs that example searches, so a study over them
reproduces that recipe on audio.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from sweep.models.registry import MODELS, ModelSpec
from sweep.schema import Field


class SimpleCNN(nn.Module):
    def __init__(self, n_classes: int, n_layers: int, channels: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(1)  # standardises log-mel levels without dataset statistics
        blocks: list[nn.Module] = []
        c_in = 1
        for i in range(n_layers):
            c_out = channels * 2**i
            # ceil_mode: a 1-pixel-wide map still pools to 1 instead of vanishing, so depth is not capped by n_mels
            blocks += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
            c_in = c_out
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Linear(c_in, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, n_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.norm(x)).mean(dim=(2, 3)))


PARAMS = {
    "n_layers": Field(int, 3, low=1, high=8),  # conv blocks; each halves time and frequency
    "channels": Field(int, 16, low=1),  # channels of the first block, doubled by each next one
    "hidden": Field(int, 128, low=1),  # units of the hidden fully connected layer
    "dropout": Field(float, 0.3, low=0.0, high=1.0),  # before the output layer
}


def build(cfg: Mapping[str, Any], n_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return SimpleCNN(n_classes, cfg["n_layers"], cfg["channels"], cfg["hidden"], cfg["dropout"])


MODELS.add("simple_cnn", ModelSpec(PARAMS, build))
