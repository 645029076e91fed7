"""Log-mel spectrograms, computed batched on the training device."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torchaudio


class LogMel(torch.nn.Module):
    """Waveforms [B, samples] → log-mel [B, 1, n_mels, frames]."""

    def __init__(
        self, sample_rate: int, n_mels: int, n_fft: int, hop_length: int, f_min: float, f_max: float | None
    ) -> None:
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=n_fft,
            hop_length=hop_length,
            n_mels=n_mels,
            f_min=f_min,
            f_max=f_max,
        )

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=waves.device.type, enabled=False):
            return torch.log(self.mel(waves.float()) + 1e-6).unsqueeze(1)


def build_features(config: Mapping[str, Any]) -> torch.nn.Module:
    f = config["features"]
    return LogMel(config["data"]["sample_rate"], f["n_mels"], f["n_fft"], f["hop_length"], f["f_min"], f["f_max"])
