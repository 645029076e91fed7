"""Model registry: a name → builder, one file per family (as in timm).

A family declares the config keys it takes (`model.<key>`), so the config schema can reject a key given
to a model that does not take it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from sweep.config import Field

# builder(model_config, n_classes, input_shape) → nn.Module taking log-mel [B, 1, n_mels, frames]
Builder = Callable[[Mapping[str, Any], int, tuple[int, ...]], torch.nn.Module]


@dataclass(frozen=True)
class ModelSpec:
    params: dict[str, Field]
    build: Builder
    pretrained: bool  # whether `model.pretrained: true` means anything for this family


MODELS: dict[str, ModelSpec] = {}


def register(name: str, params: dict[str, Field], pretrained: bool = False) -> Callable[[Builder], Builder]:
    def wrap(build: Builder) -> Builder:
        MODELS[name] = ModelSpec(params, build, pretrained)
        return build

    return wrap


def model_params(name: str) -> dict[str, Field]:
    return MODELS[name].params


def build_model(config: Mapping[str, Any], n_classes: int, input_shape: tuple[int, ...]) -> torch.nn.Module:
    return MODELS[config["model"]["name"]].build(config["model"], n_classes, input_shape)


from sweep.models import audio_cnn  # noqa: E402,F401  (registers itself)
