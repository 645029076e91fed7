"""`ast`: the Audio Spectrogram Transformer (Hugging Face), fine-tuned from its AudioSet checkpoint.

The input is prepared as ASTFeatureExtractor prepares it (fbank frames padded or cut to `max_length`,
normalised with the AudioSet mean and twice its std), so the checkpoint sees what it was trained on. Clips
shorter than the checkpoint's 1024 frames (ESC-50 uses 512) keep the pretrained position embeddings,
stretched along time, instead of learning new ones.
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

PATCH = 16  # AST's patch size: 16 × 16 (mel bins × frames), overlapping by the strides
BASE = {"hidden_size": 768, "layers": 12, "heads": 12, "fstride": 10, "tstride": 10}  # AST-base (ViT-B/16)

PARAMS = {
    "id": Field(str, "MIT/ast-finetuned-audioset-10-10-0.4593"),  # checkpoint (hub id or folder) when pretrained
    "max_length": Field(int, 1024, low=PATCH),  # frames the model sees; the clip's fbank is padded or cut
    "norm_mean": Field(float, -4.2677393),  # fbank statistics (AudioSet's, as ASTFeatureExtractor uses)
    "norm_std": Field(float, 4.5689974, low=1e-6),
    # architecture for pretrained: false only; null = AST-base's value (intermediate size is 4 × hidden)
    "hidden_size": Field(int, None, low=1, nullable=True),
    "layers": Field(int, None, low=1, nullable=True),
    "heads": Field(int, None, low=1, nullable=True),
    "fstride": Field(int, None, low=1, high=PATCH, nullable=True),  # patch stride along mel bins
    "tstride": Field(int, None, low=1, high=PATCH, nullable=True),  # patch stride along frames
}


def _sizes(cfg: Mapping[str, Any]) -> dict[str, int]:
    return {k: cfg[k] if cfg[k] is not None else v for k, v in BASE.items()}


def validate(cfg: Mapping[str, Any]) -> None:
    reject_overrides(cfg, tuple(BASE))
    if not cfg["pretrained"]:
        sizes = _sizes(cfg)
        check_heads(sizes["hidden_size"], sizes["heads"])


def stretch_time(embeddings: nn.Module, config: Any, max_length: int) -> None:
    """Resize the position embeddings' time axis to `max_length` frames, keeping the frequency axis."""
    n_freq, n_time = embeddings.get_shape(config)
    config.max_length = max_length
    _, new_time = embeddings.get_shape(config)
    pos = embeddings.position_embeddings.data
    tokens, grid = pos[:, :2], pos[:, 2:]  # CLS and distillation tokens have no place on the grid
    grid = grid.reshape(1, n_freq, n_time, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(n_freq, new_time), mode="bilinear", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, n_freq * new_time, -1)
    embeddings.position_embeddings = nn.Parameter(torch.cat([tokens, grid], dim=1))


class AST(nn.Module):
    def __init__(self, encoder: nn.Module, head: nn.Module, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head
        self.max_length, self.mean, self.std = cfg["max_length"], cfg["norm_mean"], cfg["norm_std"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.squeeze(1).transpose(1, 2)  # [B, 1, mels, frames] → [B, frames, mels]
        x = F.pad(x, (0, 0, 0, self.max_length - x.shape[1])) if x.shape[1] < self.max_length else x
        x = (x[:, : self.max_length] - self.mean) / (2 * self.std)  # padding is zeros before normalising, as HF's
        return self.head(self.encoder(input_values=x).pooler_output)


def build(cfg: Mapping[str, Any], n_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    from transformers import ASTConfig, ASTForAudioClassification  # ~1.3 s to import; only an AST build needs it

    n_mels = input_shape[1]
    if cfg["pretrained"]:
        model = load_pretrained(ASTForAudioClassification, cfg)
        if model.config.num_mel_bins != n_mels:
            raise ConfigError(
                f"{cfg['id']} was trained on {model.config.num_mel_bins} mel bins, the features have {n_mels}: "
                f"set features.n_mels: {model.config.num_mel_bins} (features.name: fbank), or model.pretrained: false",
                key="features.n_mels",
            )
        if model.config.max_length != cfg["max_length"]:
            stretch_time(model.audio_spectrogram_transformer.embeddings, model.config, cfg["max_length"])
    else:
        if n_mels < PATCH:  # config.resolve refuses it first (min_mels); this is for a model built directly
            raise ConfigError(f"AST needs at least {PATCH} mel bins (one patch), got {n_mels}", key="features.n_mels")
        s = _sizes(cfg)
        config = ASTConfig(
            hidden_size=s["hidden_size"],
            num_hidden_layers=s["layers"],
            num_attention_heads=s["heads"],
            intermediate_size=4 * s["hidden_size"],
            frequency_stride=s["fstride"],
            time_stride=s["tstride"],
            max_length=cfg["max_length"],
            num_mel_bins=n_mels,
        )
        model = ASTForAudioClassification(config)
    # the head: the classifier's layernorm (pretrained on AudioSet when there are weights) + a new output layer
    model.classifier.dense = nn.Linear(model.config.hidden_size, n_classes)
    return AST(model.audio_spectrogram_transformer, model.classifier, cfg)


MODELS.add("ast", ModelSpec(
    PARAMS,
    build,
    pretrained=True,
    inputs=("fbank", "logmel"),
    check_weights=check_hf_weights,
    validate=validate,
    min_mels=PATCH,  # one patch high; with weights the checkpoint's own count is checked when it is loaded
))
