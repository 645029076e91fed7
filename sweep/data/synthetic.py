"""A deterministic synthetic stand-in for ESC-50: environmental-like sounds made from a seed.

It lets the demo, the tests and the benchmarks run with no download. The classes come in confusable
pairs (chirp vs siren, tone vs tremolo, clicks vs rain, bark vs noise burst), under background noise at
a random SNR and a random onset, so accuracy depends on the hyperparameters instead of saturating.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from sweep.config.typed import typed
from sweep.data.registry import DATASETS, DatasetSpec, Index, Item
from sweep.schema import Field

CLASSES = (
    "tone",
    "tremolo",
    "chirp_up",
    "chirp_down",
    "siren",
    "noise_burst",
    "click_train",
    "rain",
    "bark",
    "engine",
)

PARAMS = {
    "n_classes": Field(int, 10, low=2, high=len(CLASSES)),
    "clips_per_class": Field(int, 40, low=1),
    "n_folds": Field(int, 5, low=2),
    "seed": Field(int, 0),
    "snr_db_min": Field(float, -3.0),
    "snr_db_max": Field(float, 12.0),
}


def _tone(rng: np.random.Generator, t: np.ndarray, f0: float, harmonics: int) -> np.ndarray:
    return sum(np.sin(2 * np.pi * f0 * (h + 1) * t + rng.uniform(0, 6.3)) / (h + 1) for h in range(harmonics))


def _sweep(t: np.ndarray, f_start: float, f_end: float, length: float) -> np.ndarray:
    k = (f_end - f_start) / length
    return np.sin(2 * np.pi * (f_start * t + 0.5 * k * t**2))


def _band_noise(rng: np.random.Generator, n: int, sr: int, low: float, high: float) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / sr)
    spectrum[(freqs < low) | (freqs > high)] = 0
    return np.fft.irfft(spectrum, n)


def _event(kind: str, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """One sound event of `kind`, `n` samples long (it may be shorter inside; the rest is silence)."""
    t = np.arange(n) / sr
    length = n / sr
    if kind == "tone":
        return _tone(rng, t, rng.uniform(200, 1200), int(rng.integers(1, 5))) * np.exp(-t * rng.uniform(0, 3))
    if kind == "tremolo":
        wobble = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(4, 14) * t)
        return _tone(rng, t, rng.uniform(200, 1200), int(rng.integers(1, 5))) * wobble
    if kind in ("chirp_up", "chirp_down"):
        low, high = rng.uniform(200, 800), rng.uniform(1500, 5000)
        dur = rng.uniform(0.3, 0.9) * length
        seg = t < dur
        f0, f1 = (low, high) if kind == "chirp_up" else (high, low)
        return np.where(seg, _sweep(t, f0, f1, dur), 0.0) * np.hanning(n)
    if kind == "siren":
        carrier, depth, rate = rng.uniform(600, 1500), rng.uniform(150, 500), rng.uniform(1.5, 4)
        phase = 2 * np.pi * (carrier * t - depth / (2 * np.pi * rate) * np.cos(2 * np.pi * rate * t))
        return np.sin(phase)
    if kind == "noise_burst":
        centre = rng.uniform(400, 4000)
        burst = _band_noise(rng, n, sr, centre * 0.7, centre * 1.4)
        dur = rng.uniform(0.1, 0.5) * length
        return burst * (t < dur) * np.exp(-t / dur * 2) * 3
    if kind == "click_train":
        out = np.zeros(n)
        period = int(sr / rng.uniform(4, 25))
        width = max(1, int(sr * 0.002))
        for start in range(int(rng.integers(0, period)), n - width, period):
            out[start : start + width] = rng.choice([-1.0, 1.0]) * np.hanning(width) * 4
        return out
    if kind == "rain":
        out = _band_noise(rng, n, sr, 2000, sr / 2 - 1) * 0.3
        for start in rng.integers(0, n - 200, size=int(rng.integers(15, 60))):
            drop = np.exp(-np.arange(200) / rng.uniform(10, 40)) * rng.uniform(0.5, 2)
            out[start : start + 200] += drop * np.sin(2 * np.pi * rng.uniform(2000, 6000) * np.arange(200) / sr)
        return out
    if kind == "bark":
        out = np.zeros(n)
        for _ in range(int(rng.integers(2, 5))):
            dur = int(sr * rng.uniform(0.05, 0.12))
            start = int(rng.integers(0, max(1, n - dur)))
            f0 = rng.uniform(300, 700) * np.linspace(1.2, 0.8, dur)
            out[start : start + dur] += np.sin(2 * np.pi * np.cumsum(f0) / sr) * np.hanning(dur) * 2
            out[start : start + dur] += _band_noise(rng, dur, sr, 500, 3000) * np.hanning(dur)
        return out
    if kind == "engine":
        f0 = rng.uniform(40, 120) * (1 + 0.02 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t))
        hum = sum(np.sin(2 * np.pi * np.cumsum(f0 * (h + 1)) / sr) / (h + 1) for h in range(6))
        return hum + _band_noise(rng, n, sr, 20, 400) * 0.5
    raise ValueError(kind)


def _background(rng: np.random.Generator, n: int) -> np.ndarray:
    """Pink-ish noise: white noise with a 1/sqrt(f) spectrum."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum /= np.sqrt(np.arange(1, spectrum.size + 1))
    return np.fft.irfft(spectrum, n)


def make_clip(kind: str, rng: np.random.Generator, sr: int, seconds: float, snr_db: tuple[float, float]) -> np.ndarray:
    """One clip: the event at a random onset and gain over background noise, peak-normalised."""
    n = int(round(sr * seconds))
    onset = int(rng.uniform(0, 0.3) * n)
    event = np.zeros(n)
    event[onset:] = _event(kind, rng, n - onset, sr)
    noise = _background(rng, n)
    snr = rng.uniform(*snr_db)
    noise *= np.sqrt(np.mean(event**2) / (np.mean(noise**2) + 1e-12) / 10 ** (snr / 10))
    clip = event + noise
    return (clip / (np.abs(clip).max() + 1e-9) * rng.uniform(0.3, 0.95)).astype(np.float32)


@functools.lru_cache(maxsize=4)
def generate(
    n_classes: int = 10,
    clips_per_class: int = 40,
    n_folds: int = 5,
    sample_rate: int = 16000,
    clip_seconds: float = 1.0,
    seed: int = 0,
    snr_db_min: float = -3.0,
    snr_db_max: float = 12.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(waves [N, samples], labels [N], folds [N]); clip k of each class goes to fold k % n_folds + 1."""
    waves, labels, folds = [], [], []
    for label in range(n_classes):
        for k in range(clips_per_class):
            rng = np.random.default_rng([seed, label, k])
            waves.append(make_clip(CLASSES[label], rng, sample_rate, clip_seconds, (snr_db_min, snr_db_max)))
            labels.append(label)
            folds.append(k % n_folds + 1)
    return np.stack(waves), np.array(labels, dtype=np.int64), np.array(folds, dtype=np.int64)


def _settings(config: Mapping[str, Any]) -> dict[str, Any]:
    cfg = typed(config)
    data = cfg.data
    return dict({k: data[k] for k in PARAMS}, sample_rate=data.sample_rate, clip_seconds=data.clip_seconds)


def _index(config: Mapping[str, Any]) -> Index:
    """generate()'s order without generating: clip k of class c is row c * clips_per_class + k."""
    cfg = typed(config)
    data = cfg.data
    per_class, n_folds = data.clips_per_class, data.n_folds
    items = [
        Item(c * per_class + k, c, k % n_folds + 1, str(c * per_class + k))
        for c in range(data.n_classes)
        for k in range(per_class)
    ]
    return Index(list(CLASSES[: data.n_classes]), items)


def _read(config: Mapping[str, Any], items: Sequence[Item]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    waves = torch.from_numpy(generate(**_settings(config))[0][[int(it.key) for it in items]])
    return waves, torch.full((len(items),), waves.shape[1], dtype=torch.long), list(range(len(items)))


DATASETS.add(
    "synthetic",
    DatasetSpec(PARAMS, {"train": [1, 2, 3], "val": [4], "test": [5]}, index=_index, read=_read),
)

