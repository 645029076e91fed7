"""`sweep predict`: a trained checkpoint's top classes for audio files, read as its run read its data.

A run folder (a trial's or a final run's) holds the resolved config beside the checkpoint, so the files
are decoded, resampled and windowed exactly as evaluation did (centre window of `data.clip_seconds`) and
the features are the ones the model was trained on. `open_run`, `model_input` and `load_model` are that
path, step by step, for `sweep explain` too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sweep.checkpoint import CHECKPOINT, load_checkpoint
from sweep.config.typed import typed
from sweep.config.yamlfile import parse_yaml
from sweep.data import Clips, DataError, Item, crop
from sweep.data.audio import UnreadableAudio, read_files
from sweep.data.features import build_features
from sweep.models import build_model
from sweep.schema import ConfigError


@dataclass
class Run:
    """A trained run as its folder records it: the checkpoint's path and state, the config it trained with."""

    checkpoint: Path
    config: dict[str, Any]
    state: dict[str, Any]
    classes: list[str]


def open_run(path: Path) -> Run:
    """A run's checkpoint.pt (its config.yaml beside it), or the run's folder; anything else a ConfigError."""
    checkpoint = path / CHECKPOINT if path.is_dir() else path
    if not checkpoint.is_file():
        raise ConfigError(f"no checkpoint at {checkpoint}")
    config_path = checkpoint.parent / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"{checkpoint}: no config.yaml beside it; sweep reads the config its run trained with")
    config = parse_yaml(config_path.read_text(), str(config_path))  # the run's resolved record, as it ran
    state = load_checkpoint(checkpoint)
    classes = state.get("classes")
    if not classes:
        raise ConfigError(f"{checkpoint} does not record its classes (written before sweep kept them); retrain it")
    return Run(checkpoint, config, state, list(classes))


def model_input(run: Run, files: Sequence[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """(the windows the model reads [B, samples], the model's input made of them), as evaluation makes them."""
    config = run.config
    config["data"]["on_bad_file"] = "error"
    try:
        waves, lengths, _ = read_files(config, [Item(str(f), 0, 0, str(f)) for f in files])
    except UnreadableAudio as exc:  # its own words: there is no data.on_bad_file to suggest here
        readable = " (sweep reads audio files: wav, flac, ogg)" if Path(exc.path).exists() else ""
        raise ConfigError(f"cannot read audio file {exc.path}: {exc.reason}{readable}") from None
    except DataError as exc:
        raise ConfigError(str(exc)) from None
    cfg = typed(config)
    samples = round(cfg.data.clip_seconds * cfg.data.sample_rate)
    clips = Clips(waves, lengths, torch.zeros(len(files), dtype=torch.long), run.classes, cfg.data.sample_rate)
    windows = crop(clips, torch.arange(len(files)), samples, None)
    return windows, build_features(config)(windows)


def load_model(run: Run, x: torch.Tensor) -> torch.nn.Module:
    """The run's model with its trained weights, in eval mode, built for inputs shaped like `x`."""
    model = build_model(run.config, len(run.classes), tuple(x.shape[1:]))
    model.load_state_dict(run.state["model"])
    return model.eval()


def top_classes(run: Run, probs: torch.Tensor, top_k: int) -> list[list[tuple[str, float]]]:
    """Each row's `top_k` (class, probability) pairs, most probable first."""
    top = probs.topk(min(top_k, len(run.classes)), dim=1)
    return [
        [(run.classes[i], p) for i, p in zip(idx.tolist(), val.tolist())] for idx, val in zip(top.indices, top.values)
    ]


def check_top_k(top_k: int) -> None:
    if top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {top_k}")


def predict(checkpoint: Path, files: Sequence[Path], top_k: int = 5) -> list[list[tuple[str, float]]]:
    """For each file, its `top_k` (class, probability) pairs, most probable first."""
    run = open_run(checkpoint)
    check_top_k(top_k)
    _, x = model_input(run, files)
    with torch.no_grad():
        probs = torch.softmax(load_model(run, x)(x).float(), dim=1)
    return top_classes(run, probs, top_k)
