"""`audio_cnn`: a small residual CNN on log-mel input (the ESC-50 AudioCNN recipe), width and depth set."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from sweep.models.registry import MODELS, ModelSpec
from sweep.schema import Field


class Block(nn.Module):
    """Two 3×3 convs with a shortcut; halves the resolution when the width grows."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        stride = 2 if c_out != c_in else 1
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.skip = (
            nn.Identity()
            if stride == 1
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class AudioCNN(nn.Module):
    def __init__(self, n_classes: int, width: int, depth: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(1)  # standardises log-mel levels without dataset statistics
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        widths = [width * 2**i for i in range(depth)]
        self.blocks = nn.Sequential(*(Block(a, b) for a, b in zip([width] + widths[:-1], widths)))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(widths[-1], n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(self.norm(x)))
        return self.head(x.mean(dim=(2, 3)))


PARAMS = {
    "width": Field(int, 16, low=1),
    "depth": Field(int, 3, low=1, high=8),
    "dropout": Field(float, 0.1, low=0.0, high=1.0),
}


def build(cfg: Mapping[str, Any], n_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return AudioCNN(n_classes, cfg["width"], cfg["depth"], cfg["dropout"])


MODELS.add("audio_cnn", ModelSpec(PARAMS, build))
