"""Model registry: a name → builder, one file per family (as in timm); `registry` holds what they share.

Importing this package registers every family.
"""

from sweep.models import ast, audio_cnn, blocks, eat, resnet, simple_cnn, vit  # noqa: F401  (each registers itself)
from sweep.models.registry import (
    MODELS,
    ModelSpec,
    WeightsMissing,
    build_model,
    check_weights,
    hf_cache,
    torch_cache,
)

__all__ = ["MODELS", "ModelSpec", "WeightsMissing", "build_model", "check_weights", "hf_cache", "torch_cache"]
