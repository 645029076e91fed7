"""`eat_s`, `eat_m`: EAT, the raw-waveform network of "End-to-End Audio Strikes Back" (arXiv 2204.11479).

A 1-D conv front end downsamples the waveform 1024× (with the default strides) with anti-aliased strided
stages and dilated residual blocks; a small transformer then reads the resulting ~20 ms tokens through a CLS
token. No spectrogram: the model learns its own filterbank, which is why it is searched separately.
Written after the paper and its reference code (Alibaba-MIIL/AudioClassfication, modules/soundnet.py), with
zero instead of reflection padding so that short clips (1 s at 16 kHz) work too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sweep.models.registry import MODELS, ModelSpec
from sweep.schema import ConfigError, Field

VARIANTS = {
    "eat_s": {"emb": 128, "nf": 16, "ff": 512, "layers": 4, "heads": 8},
    "eat_m": {"emb": 256, "nf": 32, "ff": 2048, "layers": 6, "heads": 16},
}
LATE_FACTORS = (2, 2)  # the two downsampling stages after the dilated blocks, fixed in the paper


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2, inplace=True)


class ResBlock(nn.Module):
    """Depthwise dilated conv (time context) + pointwise conv (channel mixing) + a linear shortcut, summed."""

    def __init__(self, dim: int, dilation: int, kernel: int = 15) -> None:
        super().__init__()
        self.temporal = nn.Sequential(
            nn.Conv1d(dim, dim, kernel, padding="same", dilation=dilation, groups=dim, bias=False),
            nn.BatchNorm1d(dim),
            _act(),
        )
        self.pointwise = nn.Sequential(nn.Conv1d(dim, dim, 1, bias=False), nn.BatchNorm1d(dim), _act())
        self.shortcut = nn.Conv1d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.temporal(x) + self.pointwise(x)


class Down(nn.Module):
    """Doubles the channels, then low-passes (triangular filter) before subsampling by `factor`, against aliasing."""

    def __init__(self, channels: int, factor: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv1d(channels, 2 * channels, factor + 1, padding="same", bias=False),
            nn.BatchNorm1d(2 * channels),
            _act(),
        )
        taps = torch.cat([torch.arange(1.0, factor + 2), torch.arange(float(factor), 0, -1)])
        self.register_buffer("blur", (taps / taps.sum()).repeat(2 * channels, 1, 1))
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # length L → ceil(L / factor)
        return F.conv1d(self.conv(x), self.blur, stride=self.factor, padding=self.factor, groups=self.blur.shape[0])


class EAT(nn.Module):
    def __init__(
        self,
        n_classes: int,
        n_samples: int,
        nf: int,
        emb: int,
        ff: int,
        layers: int,
        heads: int,
        ds_factors: list[int],
        dropout: float,
    ) -> None:
        super().__init__()
        convs: list[nn.Module] = [nn.Conv1d(1, nf, 7, padding=3, bias=False), nn.BatchNorm1d(nf), _act()]
        c = nf
        for i, factor in enumerate(ds_factors):
            convs.append(Down(c, factor))
            c *= 2
            if i % 2 == 0:
                convs.append(ResBlock(c, dilation=1))
        for factor in LATE_FACTORS:
            convs += [ResBlock(c, dilation=3**j) for j in range(3)]
            convs.append(Down(c, factor))
            c *= 2
        convs.append(nn.Conv1d(c, emb, 1))
        self.frontend = nn.Sequential(*convs)
        for m in self.frontend.modules():
            if isinstance(m, nn.Conv1d):  # the reference initialisation
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

        n_tokens = n_samples
        for factor in [*ds_factors, *LATE_FACTORS]:
            n_tokens = -(-n_tokens // factor)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, emb))
        self.pos_embed = nn.Parameter(nn.init.trunc_normal_(torch.zeros(1, n_tokens + 1, emb), std=0.02))
        layer = nn.TransformerEncoderLayer(emb, heads, ff, dropout, activation="gelu", batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(emb), enable_nested_tensor=False)
        self.head = nn.Linear(emb, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.frontend(x.unsqueeze(1)).transpose(1, 2)  # [B, samples] → [B, tokens, emb]
        tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1) + self.pos_embed
        return self.head(self.transformer(tokens)[:, 0])


PARAMS = {
    "dropout": Field(float, 0.1, low=0.0, high=1.0),  # in the transformer layers
    # strides of the first downsampling stages (a dilated residual block after every other one); two ×2
    # stages follow, so one token per prod(ds_factors) × 4 samples
    "ds_factors": Field(list, [4, 4, 4, 4], item=int),
    # sizes; null = the variant's (EAT-S: 128, 16, 512, 4, 8; EAT-M: 256, 32, 2048, 6, 16)
    "emb": Field(int, None, low=1, nullable=True),  # transformer width
    "nf": Field(int, None, low=1, nullable=True),  # channels of the first conv, doubled by each downsampling
    "ff": Field(int, None, low=1, nullable=True),  # transformer feed-forward width
    "layers": Field(int, None, low=1, nullable=True),  # transformer layers
    "heads": Field(int, None, low=1, nullable=True),  # attention heads
}


def _sizes(cfg: Mapping[str, Any]) -> dict[str, int]:
    return {k: cfg[k] if cfg[k] is not None else v for k, v in VARIANTS[cfg["name"]].items()}


def validate(cfg: Mapping[str, Any]) -> None:
    if any(f < 1 for f in cfg["ds_factors"]):
        raise ConfigError(f"downsampling factors must be >= 1, got {cfg['ds_factors']}", key="model.ds_factors")
    sizes = _sizes(cfg)
    if sizes["emb"] % sizes["heads"]:
        raise ConfigError(f"emb {sizes['emb']} must be a multiple of heads ({sizes['heads']})", key="model.heads")


def fits(cfg: Mapping[str, Any], input_shape: tuple[int, ...]) -> None:
    """The front end downsamples by prod(ds_factors) × 4: a clip shorter than that would be one padded token."""
    stride = math.prod(cfg["ds_factors"]) * math.prod(LATE_FACTORS)
    if input_shape[-1] < stride:
        raise ConfigError(
            f"downsampling factors {cfg['ds_factors']} make one token of {stride} samples and the clip has "
            f"{input_shape[-1]} (data.sample_rate × data.clip_seconds): give fewer or smaller factors "
            "(e.g. [4, 4, 4]: 64 tokens of 16384 samples, 1 s at 16 kHz) or a longer clip",
            key="model.ds_factors",
        )


def adapt(key: str, saved: torch.Tensor, own: torch.Tensor) -> torch.Tensor | None:
    """A warm start from a run on another clip length (EAT's `ext_pretrained`): its position embedding
    [1, tokens + 1, emb] has another token count, so the token part is interpolated linearly to this one's
    and the CLS position kept. Any other tensor of another shape cannot be fitted."""
    if key != "pos_embed" or saved.dim() != 3 or (saved.shape[0], saved.shape[2]) != (own.shape[0], own.shape[2]):
        return None
    tokens = F.interpolate(saved[:, 1:].transpose(1, 2).float(), size=own.shape[1] - 1, mode="linear")
    return torch.cat([saved[:, :1].float(), tokens.transpose(1, 2)], dim=1).to(own.dtype)


def build(cfg: Mapping[str, Any], n_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return EAT(n_classes, input_shape[-1], ds_factors=cfg["ds_factors"], dropout=cfg["dropout"], **_sizes(cfg))


for _name in VARIANTS:
    MODELS.add(_name, ModelSpec(PARAMS, build, inputs=("waveform",), validate=validate, fits=fits, adapt=adapt))
