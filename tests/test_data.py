"""Synthetic data, its ESC-50 layout on disk, log-mel features and the strength-scaled augmentation."""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import numpy as np
import soundfile
import torch

from sweep.data import load_split
from sweep.data.augment import Augment
from sweep.data.features import build_features
from sweep.data.layouts import write_esc50
from sweep.data.synthetic import CLASSES, generate


def test_synthetic_is_deterministic_balanced_and_split_by_fold() -> None:
    a = generate(n_classes=8, clips_per_class=10, n_folds=5, sample_rate=8000, clip_seconds=0.5, seed=3)
    generate.cache_clear()
    b = generate(n_classes=8, clips_per_class=10, n_folds=5, sample_rate=8000, clip_seconds=0.5, seed=3)
    other = generate(n_classes=8, clips_per_class=10, n_folds=5, sample_rate=8000, clip_seconds=0.5, seed=4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(a[0], other[0])
    waves, labels, folds = a
    assert waves.shape == (80, 4000) and waves.dtype == np.float32
    assert np.abs(waves).max() <= 1.0 and np.isfinite(waves).all()
    for fold in range(1, 6):  # every fold holds every class equally
        assert np.bincount(labels[folds == fold], minlength=8).tolist() == [2] * 8
    # the classes differ from each other: per-class mean spectra are not all alike
    spectra = np.stack([np.abs(np.fft.rfft(waves[labels == c], axis=1)).mean(0) for c in range(8)])
    corr = np.corrcoef(np.log(spectra + 1e-6))
    assert corr[np.triu_indices(8, 1)].min() < 0.9


def test_load_split_selects_folds(tiny_config: dict) -> None:
    train, val = load_split(tiny_config, "train"), load_split(tiny_config, "val")
    assert len(train) == 4 * 6 and len(val) == 4 * 2  # 10 clips per class over 5 folds: 2 per fold
    assert train.waves.shape[1] == 4000 and train.sample_rate == 8000
    assert train.classes == list(CLASSES[:4])
    assert not any(torch.equal(v, t) for v in val.waves for t in train.waves)


def test_write_esc50_layout(tmp_path: Path) -> None:
    root = write_esc50(tmp_path / "ESC-50", n_classes=3, clips_per_class=5, sample_rate=22050, clip_seconds=1.0)
    with open(root / "meta" / "esc50.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
    assert len(rows) == 15 and {r["fold"] for r in rows} == {"1", "2", "3", "4", "5"}
    waves, labels, folds = generate(3, 5, 5, 22050, 1.0, 0)
    for i, row in enumerate(rows):
        assert row["filename"] == f"{row['fold']}-{row['src_file']}-{row['take']}-{row['target']}.wav"
        assert CLASSES[int(row["target"])] == row["category"]
        audio, sr = soundfile.read(root / "audio" / row["filename"], dtype="float32")
        assert sr == 22050 and audio.shape == (22050,)
        np.testing.assert_allclose(audio, waves[i], atol=1 / 2**15 + 1e-6)  # 16-bit PCM of the same clip
        assert int(row["target"]) == labels[i] and int(row["fold"]) == folds[i]


def test_logmel_shape(tiny_config: dict) -> None:
    mel = build_features(tiny_config)(torch.randn(3, 4000))
    assert mel.shape == (3, 1, 32, 4000 // 128 + 1) and torch.isfinite(mel).all()


def _augment(config: dict, strength: float) -> Augment:
    config = copy.deepcopy(config)
    config["augment"]["strength"] = strength
    aug = Augment(config)
    aug.reseed(7)
    return aug


def test_strength_zero_is_identity_and_one_masks_and_mixes(tiny_config: dict) -> None:
    x = torch.randn(16, 1, 32, 40) + 10  # no zeros before masking
    y = torch.arange(16) % 4
    off = _augment(tiny_config, 0.0)
    assert torch.equal(off.spec(x), x)
    mixed, target = off.mix(x, y, 4, 1)
    assert torch.equal(mixed, x) and torch.equal(target, torch.nn.functional.one_hot(y, 4).float())

    full = _augment(tiny_config, 1.0)
    masked = full.spec(x)
    zero_rows = (masked == 0).all(dim=3).sum().item()  # whole frequency bands zeroed
    zero_cols = (masked == 0).all(dim=2).sum().item()  # whole time spans zeroed
    assert zero_rows > 0 and zero_cols > 0
    assert zero_rows <= 16 * 2 * int(0.15 * 32)  # no band wider than freq_mask at strength 1
    mixed, target = full.mix(x, y, 4, 1)
    assert torch.allclose(target.sum(1), torch.ones(16)) and (target.max(1).values < 1).any()

    again = _augment(tiny_config, 1.0)  # same seed, same masks: what makes resume exact
    assert torch.equal(again.spec(x), masked)
