"""What the model reads for a batch of a split: windows of precomputed features, or features of waveform windows.

When nothing needs the raw audio of each batch (spectrogram input, no waveform augmentation), the features
of every whole clip are computed once — batched on the training device — and kept beside the cached audio,
so a later epoch (and a later trial with the same settings) only gathers a window of frames per clip: the
cost of data per step falls to an index copy. Otherwise each batch's waveform windows are augmented and
turned into features on the device.

A window of `clip_seconds` starts on a hop boundary, so it is the window the waveform path would featurise,
up to the frames at its two edges (which see the neighbouring audio instead of padding).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from sweep.config.typed import typed
from sweep.data.augment import Augment, needs_waveform
from sweep.data.cache import publish
from sweep.data.features import input_kind
from sweep.data.splits import Clips, crop
from sweep.progress import Progress

CHUNK = 64  # clips featurised at a time


class Inputs:
    def __init__(
        self, config: Mapping[str, Any], clips: Clips, features: torch.nn.Module, device: torch.device,
        augment: Augment | None = None,
    ) -> None:
        cfg = typed(config)
        self.clips, self.features, self.device, self.augment = clips, features, device, augment
        self.samples = round(cfg.data.clip_seconds * cfg.data.sample_rate)
        self.frames: torch.Tensor | None = None
        if input_kind(config) != "waveform" and not needs_waveform(config):
            self.hop = cfg.features.hop_length
            with torch.no_grad():  # frames of one window, as the features make them (log-mel and fbank differ)
                self.window = features(torch.zeros(1, self.samples, device=device)).shape[-1]
            self.frames = precompute(config, clips, features, device)

    def __call__(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The batch's model input on the device: random windows with a generator, centred ones without."""
        if self.frames is None:
            x = crop(self.clips, idx, self.samples, generator, pin=self.device.type == "cuda")
            x = x.to(self.device, non_blocking=True)
            with torch.no_grad():
                augmented = generator is not None and self.augment is not None
                return self.features(self.augment.wave(x) if augmented else x)
        room = (self.clips.lengths[idx] - self.samples).clamp(min=0) // self.hop
        if generator is None:
            start = room // 2
        else:
            start = (torch.rand(len(idx), generator=generator) * (room + 1).float()).long().clamp(max=room)
        frames = self.frames[idx]  # clips are stored at least a window long, so every window is inside
        positions = (start.unsqueeze(1) + torch.arange(self.window)).clamp(max=frames.shape[-1] - 1)
        index = positions[:, None, None, :].expand(-1, frames.shape[1], frames.shape[2], -1)
        x = torch.empty(index.shape, dtype=frames.dtype, pin_memory=self.device.type == "cuda")  # pinned: no copy
        return torch.gather(frames, 3, index, out=x).to(self.device, non_blocking=True)


def precompute(config: Mapping[str, Any], clips: Clips, features: torch.nn.Module, device: torch.device):
    """Features of every whole clip [N, 1, bins, frames], from the clips' cache entry when it holds them."""
    cfg = typed(config)
    settings = dict(cfg.features, name=input_kind(config), sample_rate=cfg.data.sample_rate)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    path = clips.entry / f"features-{digest}.npy" if clips.entry is not None else None
    if path is not None and path.exists():
        return torch.from_numpy(np.load(path, mmap_mode="c"))
    progress, parts = Progress(f"features of {len(clips)} clips", len(clips)), []
    with torch.no_grad():
        for i in range(0, len(clips), CHUNK):
            parts.append(features(clips.waves[i : i + CHUNK].to(device)).cpu())
            progress.update(len(parts[-1]))
    progress.close()
    out = torch.cat(parts)
    if path is not None:
        def write(tmp):
            with open(tmp, "wb") as f:  # a file object: np.save adds no suffix
                np.save(f, out.numpy())

        publish(path, write)
    return out
