"""The model registry and what every family shares: its spec, the built model's `head`, the weight caches.

A family declares the config keys it takes (`model.<key>`), so the config schema can reject a key given
to a model that does not take it, and the inputs it can read (`features.name`), the first being its
default. Every built model has a `head` attribute: the layers that are new for this task. The trainer
trains the head alone for `train.freeze_epochs` and gives the rest (the body) its own learning rate.
Layers a family freezes for good (e.g. ViT's lower encoder layers) have `requires_grad=False`.
"""


from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sweep.config.typed import typed
from sweep.schema import Field, Registry

# builder(model_config, n_classes, input_shape) → nn.Module with a `head`. input_shape excludes the batch:
# (1, n_mels, frames) for logmel/fbank features, (samples,) for raw waveforms.
Builder = Callable[[Mapping[str, Any], int, tuple[int, ...]], torch.nn.Module]


class WeightsMissing(RuntimeError):
    """Pretrained weights asked for are not in the local cache; the message says how to fetch them."""


@dataclass(frozen=True)
class ModelSpec:
    params: dict[str, Field]
    build: Builder
    pretrained: bool = False  # whether `model.pretrained: true` means anything for this family
    inputs: tuple[str, ...] = ("logmel", "fbank")
    # check_weights(model_config) raises WeightsMissing when pretrained weights are not cached locally
    check_weights: Callable[[Mapping[str, Any]], None] | None = None
    # validate(model_config) raises ConfigError(message, key="model.<key>") for combinations of keys that
    # are each valid alone but not together (e.g. architecture sizes with pretrained weights)
    validate: Callable[[Mapping[str, Any]], None] | None = None
    # fits(model_config, input_shape) raises ConfigError(key="model.<key>") when the architecture does not fit the
    # run's input shape (features of one clip); config.resolve calls it, so it is refused before any trial
    fits: Callable[[Mapping[str, Any], tuple[int, ...]], None] | None = None
    min_mels: int | None = None  # mel bins (features.n_mels) the architecture needs at least, untrained
    # adapt(key, saved, own) → a warm start's saved tensor fitted to this model's shape where the family knows
    # how (EAT's position embedding, interpolated to another clip length), else None: the mismatch is an error
    adapt: Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor | None] | None = None


MODELS: Registry[ModelSpec] = Registry("model")


def build_model(config: Mapping[str, Any], n_classes: int, input_shape: tuple[int, ...]) -> torch.nn.Module:
    cfg = typed(config)
    model = MODELS[cfg.model.name].build(cfg.model, n_classes, input_shape)
    if not isinstance(getattr(model, "head", None), torch.nn.Module):
        raise TypeError(f"model {config['model']['name']} has no `head` module")
    return model


def check_weights(model_config: Mapping[str, Any]) -> None:
    """Raise WeightsMissing if `model.pretrained` asks for weights the local caches do not hold."""
    spec = MODELS[model_config["name"]]
    if model_config["pretrained"] and spec.check_weights is not None:
        spec.check_weights(model_config)


def hf_cache() -> Path:
    """The Hugging Face hub cache transformers reads (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def torch_cache() -> Path:
    """Where torchvision keeps downloaded weights: TORCH_HOME/hub/checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints"

