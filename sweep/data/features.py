"""Model inputs computed batched on the training device: log-mel, Kaldi fbank, or the waveform itself.

`features.name: auto` picks the model family's own input (the first of its `inputs`), so a search over
`model.name` gives every architecture what it expects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torchaudio

from sweep.config.typed import typed
from sweep.models import MODELS
from sweep.schema import Registry, Spec


class LogMel(torch.nn.Module):
    """Waveforms [B, samples] → log-mel [B, 1, n_mels, frames], contiguous.

    Contiguous because torchaudio's mel scale returns a transposed view, and in training mode batch norm sums its
    batch statistics in memory order, so it rounds differently on the two layouts (the 7th digit): a model
    trained on features from the cache (contiguous, a gather) and one trained on features made per batch would
    then not be the same model.
    """

    def __init__(
        self, sample_rate: int, n_mels: int, n_fft: int, hop_length: int, f_min: float | None, f_max: float | None
    ) -> None:
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=n_fft,
            hop_length=hop_length,
            n_mels=n_mels,
            f_min=f_min or 0.0,
            f_max=f_max,
        )

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=waves.device.type, enabled=False):
            return torch.log(self.mel(waves.float()) + 1e-6).unsqueeze(1).contiguous()


class Fbank(torch.nn.Module):
    """Waveforms [B, samples] → Kaldi fbank [B, 1, n_mels, frames], as AST's feature extractor makes them;
    contiguous, as `LogMel`'s are.

    Window and hop come from n_fft and hop_length (AST: 400 and 160 samples at 16 kHz = 25 ms and 10 ms);
    f_min null means Kaldi's 20 Hz (at 0 Hz the lowest bins are too narrow to hold any energy).
    """

    def __init__(
        self, sample_rate: int, n_mels: int, n_fft: int, hop_length: int, f_min: float | None, f_max: float | None
    ) -> None:
        super().__init__()
        self.options = dict(
            sample_frequency=sample_rate,
            num_mel_bins=n_mels,
            frame_length=n_fft * 1000 / sample_rate,
            frame_shift=hop_length * 1000 / sample_rate,
            low_freq=20.0 if f_min is None else f_min,
            high_freq=f_max or 0.0,  # Kaldi: 0 means the Nyquist frequency
            htk_compat=True,
            window_type="hanning",
            use_energy=False,
            dither=0.0,
        )

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=waves.device.type, enabled=False):
            rows = [torchaudio.compliance.kaldi.fbank(w.float().unsqueeze(0), **self.options) for w in waves]
            return torch.stack(rows).transpose(1, 2).unsqueeze(1).contiguous()


class Waveform(torch.nn.Module):
    """Raw-waveform models (EAT) read the clip itself."""

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        return waves.float()


# build(features section, sample rate) → the module turning a batch of waveforms into the model's input
Build = Callable[[Mapping[str, Any], int], torch.nn.Module]



def _spectrogram(make: type[torch.nn.Module]) -> Build:
    return lambda f, rate: make(rate, f["n_mels"], f["n_fft"], f["hop_length"], f["f_min"], f["f_max"])


FEATURES: Registry[Spec[Build]] = Registry("input")
FEATURES.add("logmel", Spec({}, _spectrogram(LogMel), "log-mel spectrogram (torchaudio)"))
FEATURES.add("fbank", Spec({}, _spectrogram(Fbank), "Kaldi filter banks, as AST's feature extractor"))
FEATURES.add("waveform", Spec({}, lambda f, rate: Waveform(), "the clip itself (EAT)"))


def input_kind(config: Mapping[str, Any]) -> str:
    """The features a run computes: `features.name`, or the model's own input when it is `auto`."""
    cfg = typed(config)
    kind = cfg.features.name
    return MODELS[cfg.model.name].inputs[0] if kind == "auto" else kind


def build_features(config: Mapping[str, Any]) -> torch.nn.Module:
    cfg = typed(config)
    return FEATURES[input_kind(config)].build(cfg.features, cfg.data.sample_rate)


def input_shape(resolved: Mapping[str, Any]) -> tuple[int, ...]:
    """What the model reads of one clip (no batch): its features of `clip_seconds` of silence."""
    data = resolved["data"]
    with torch.no_grad():
        x = build_features(resolved)(torch.zeros(1, round(data["clip_seconds"] * data["sample_rate"])))
    return tuple(x.shape[1:])
