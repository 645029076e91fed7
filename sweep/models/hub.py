"""Pretrained checkpoints from the local Hugging Face cache only (ViT and AST share this).

Compute nodes have no internet: a checkpoint is loaded with `local_files_only`, and one that is not cached
is reported with the cache searched and the command that fetches it on a login node.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import try_to_load_from_cache

from sweep.models.registry import WeightsMissing, hf_cache
from sweep.schema import ConfigError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def _cached(model_id: str, filename: str) -> bool:
    if Path(model_id).is_dir():  # from_pretrained also takes a local folder
        return (Path(model_id) / filename).is_file()

    try:
        return isinstance(try_to_load_from_cache(model_id, filename, cache_dir=hf_cache()), str)
    except ValueError:  # not a valid repo id: certainly not cached
        return False


def missing_message(model_id: str) -> str:
    cache = hf_cache()
    env = f"HF_HUB_CACHE={cache}" if os.environ.get("HF_HUB_CACHE") else f"HF_HOME={cache.parent}"
    return (
        f"pretrained weights {model_id!r} are not in the Hugging Face cache {cache}. On a login node with "
        f"internet, download them into the same cache: `{env} hf download {model_id}` (huggingface-cli download "
        f'with older huggingface_hub), or `{env} python -c "from transformers import AutoModel; '
        f"AutoModel.from_pretrained('{model_id}')\"`; run the study with the same {env.split('=')[0]}, "
        "or set model.pretrained: false"
    )


def check_hf_weights(cfg: Mapping[str, Any]) -> None:
    if not (_cached(cfg["id"], "config.json") and any(_cached(cfg["id"], f) for f in WEIGHT_FILES)):
        raise WeightsMissing(missing_message(cfg["id"]))


def load_pretrained(cls: Any, cfg: Mapping[str, Any]) -> Any:
    """`cls.from_pretrained(model.id)` from local files only: compute nodes have no internet."""
    check_hf_weights(cfg)
    try:  # float32 master weights: the trainer's autocast and GradScaler expect them
        return cls.from_pretrained(cfg["id"], cache_dir=str(hf_cache()), local_files_only=True, dtype=torch.float32)
    except OSError as exc:
        raise WeightsMissing(f"{missing_message(cfg['id'])} ({exc})") from exc


def reject_overrides(cfg: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    """With weights the architecture is the checkpoint's, so a size given too would be silently ignored."""
    for key in keys:
        if cfg["pretrained"] and cfg[key] is not None:
            raise ConfigError(
                f"sets the architecture of a model trained from scratch; with model.pretrained: true it is "
                f"{cfg['id']}'s. Remove it or set model.pretrained: false",
                key=f"model.{key}",
            )


def check_heads(hidden: int, heads: int) -> None:
    if hidden % heads:
        raise ConfigError(f"hidden_size {hidden} must be a multiple of heads ({heads})", key="model.heads")
