"""`sweep predict`: a trained checkpoint's top classes for audio files, read as its run read its data.

A run folder (a trial's or a final run's) holds the resolved config beside the checkpoint, so the files
are decoded, resampled and windowed exactly as evaluation did (centre window of `data.clip_seconds`) and
the features are the ones the model was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from sweep.checkpoint import load_checkpoint
from sweep.config.typed import typed
from sweep.config.yamlfile import parse_yaml
from sweep.data import Clips, DataError, Item, crop
from sweep.data.audio import UnreadableAudio, read_files
from sweep.data.features import build_features
from sweep.models import build_model
from sweep.schema import ConfigError


def predict(checkpoint: Path, files: Sequence[Path], top_k: int = 5) -> list[list[tuple[str, float]]]:
    """For each file, its `top_k` (class, probability) pairs, most probable first."""
    if not checkpoint.is_file():
        raise ConfigError(f"no checkpoint at {checkpoint}")
    config_path = checkpoint.parent / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"{checkpoint}: no config.yaml beside it; predict reads the config its run trained with")
    config = parse_yaml(config_path.read_text(), str(config_path))  # the run's resolved record, as it ran
    state = load_checkpoint(checkpoint)
    classes = state.get("classes")
    if not classes:
        raise ConfigError(f"{checkpoint} does not record its classes (written before sweep kept them); retrain it")
    if top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {top_k}")
    config["data"]["on_bad_file"] = "error"
    try:
        waves, lengths, _ = read_files(config, [Item(str(f), 0, 0, str(f)) for f in files])
    except UnreadableAudio as exc:  # its own words: predict has no data.on_bad_file to suggest
        readable = " (predict reads audio files: wav, flac, ogg)" if Path(exc.path).exists() else ""
        raise ConfigError(f"cannot read audio file {exc.path}: {exc.reason}{readable}") from None
    except DataError as exc:
        raise ConfigError(str(exc)) from None
    cfg = typed(config)
    samples = round(cfg.data.clip_seconds * cfg.data.sample_rate)
    clips = Clips(waves, lengths, torch.zeros(len(files), dtype=torch.long), classes, cfg.data.sample_rate)
    features = build_features(config)
    x = features(crop(clips, torch.arange(len(files)), samples, None))
    model = build_model(config, len(classes), tuple(x.shape[1:]))
    model.load_state_dict(state["model"])
    model.eval()
    with torch.no_grad():
        probs = torch.softmax(model(x).float(), dim=1)
    top = probs.topk(min(top_k, len(classes)), dim=1)
    return [
        [(classes[i], p) for i, p in zip(idx.tolist(), val.tolist())] for idx, val in zip(top.indices, top.values)
    ]
