"""`vit`: a Hugging Face ViT fine-tuned on spectrograms seen as images.

The spectrogram is resized to the checkpoint's image size and repeated to RGB rather than re-patching the
model, so any ViT checkpoint works unchanged. `unfrozen_layers` trains only the top of the encoder: the
cheap, less overfitting-prone way to adapt a large model to a few thousand clips.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sweep.models.hub import check_heads, check_hf_weights, load_pretrained, reject_overrides
from sweep.models.registry import MODELS, ModelSpec
from sweep.schema import ConfigError, Field

BASE = {"image_size": 224, "patch_size": 16, "hidden_size": 768, "layers": 12, "heads": 12}  # ViT-B/16

PARAMS = {
    "id": Field(str, "google/vit-base-patch16-224-in21k"),  # checkpoint (hub id or folder) when pretrained
    # null: everything trains; k: only the last k encoder layers, the final layernorm and the head
    "unfrozen_layers": Field(int, None, low=0, nullable=True),
    # architecture for pretrained: false only; null = ViT-B/16's value (intermediate size is 4 × hidden)
    "image_size": Field(int, None, low=1, nullable=True),
    "patch_size": Field(int, None, low=1, nullable=True),
    "hidden_size": Field(int, None, low=1, nullable=True),
    "layers": Field(int, None, low=1, nullable=True),
    "heads": Field(int, None, low=1, nullable=True),
}


def _sizes(cfg: Mapping[str, Any]) -> dict[str, int]:
    return {k: cfg[k] if cfg[k] is not None else v for k, v in BASE.items()}


def encoder_layers(encoder: nn.Module) -> nn.ModuleList:
    """The transformer blocks: `layers` in recent transformers, `encoder.layer` before."""
    return encoder.layers if hasattr(encoder, "layers") else encoder.encoder.layer


def _check_unfrozen(cfg: Mapping[str, Any], n_layers: int) -> None:
    if cfg["unfrozen_layers"] is not None and cfg["unfrozen_layers"] > n_layers:
        raise ConfigError(
            f"{cfg['unfrozen_layers']} unfrozen layers but the encoder has {n_layers}", key="model.unfrozen_layers"
        )


def validate(cfg: Mapping[str, Any]) -> None:
    reject_overrides(cfg, tuple(BASE))
    if not cfg["pretrained"]:
        sizes = _sizes(cfg)
        check_heads(sizes["hidden_size"], sizes["heads"])
        if sizes["patch_size"] > sizes["image_size"]:
            raise ConfigError(
                f"patch_size {sizes['patch_size']} exceeds image_size {sizes['image_size']}", key="model.patch_size"
            )
        _check_unfrozen(cfg, sizes["layers"])


class ViT(nn.Module):
    def __init__(self, encoder: nn.Module, n_classes: int) -> None:
        super().__init__()
        # standardised without dataset statistics, then halved: ViT's pixels are in [-1, 1], spread about 0.5
        self.norm = nn.BatchNorm2d(1, affine=False)
        self.encoder = encoder
        size, self.channels = encoder.config.image_size, encoder.config.num_channels
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.head = nn.Linear(encoder.config.hidden_size, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(0.5 * self.norm(x), size=self.size, mode="bilinear", align_corners=False)
        hidden = self.encoder(pixel_values=x.expand(-1, self.channels, -1, -1)).last_hidden_state
        return self.head(hidden[:, 0])  # the CLS token, after the final layernorm


def build(cfg: Mapping[str, Any], n_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    from transformers import ViTConfig, ViTModel  # ~1.3 s to import; only a ViT build needs it

    if cfg["pretrained"]:
        encoder = load_pretrained(ViTModel, cfg)
    else:
        s = _sizes(cfg)
        config = ViTConfig(
            image_size=s["image_size"],
            patch_size=s["patch_size"],
            hidden_size=s["hidden_size"],
            num_hidden_layers=s["layers"],
            num_attention_heads=s["heads"],
            intermediate_size=4 * s["hidden_size"],
        )
        encoder = ViTModel(config)
    # the head reads the CLS token, not the pooler: dropped rather than never built, so that loading a
    # checkpoint that has one (the in21k ViTs) reports no unused weights
    encoder.pooler = None
    layers = encoder_layers(encoder)
    _check_unfrozen(cfg, len(layers))
    if cfg["unfrozen_layers"] is not None:
        for module in (encoder.embeddings, *layers[: len(layers) - cfg["unfrozen_layers"]]):
            module.requires_grad_(False)
    return ViT(encoder, n_classes)


MODELS.add("vit", ModelSpec(PARAMS, build, pretrained=True, check_weights=check_hf_weights, validate=validate))
