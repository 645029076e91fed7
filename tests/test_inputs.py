"""What reaches a model: cropped windows, the three input kinds, and the waveform augmentations."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from sweep.config.resolve import resolve
from sweep.data import Clips, crop
from sweep.data.augment import Augment
from sweep.data.features import build_features, input_kind
from sweep.schema import ConfigError


def clips(lengths: list[int], width: int) -> Clips:
    waves = torch.zeros(len(lengths), width)
    for i, n in enumerate(lengths):
        waves[i, :n] = torch.arange(1, n + 1, dtype=torch.float32)  # sample value = its position + 1
    return Clips(waves, torch.tensor(lengths), torch.zeros(len(lengths), dtype=torch.long), ["a"], 8000)


def test_crop_centres_in_evaluation_and_draws_inside_the_clip_in_training() -> None:
    c = clips([10, 4, 7], width=10)
    centre = crop(c, torch.arange(3), 6, None)
    assert centre[0].tolist() == [3, 4, 5, 6, 7, 8]  # (10 - 6) // 2 = 2 samples skipped
    assert centre[1].tolist() == [1, 2, 3, 4, 0, 0]  # shorter than the window: kept whole, zero padding after
    assert centre[2].tolist() == [1, 2, 3, 4, 5, 6]  # room 1: offset 0
    starts = set()
    for seed in range(200):
        window = crop(c, torch.tensor([0]), 6, torch.Generator().manual_seed(seed))[0]
        assert window.tolist() == list(range(int(window[0]), int(window[0]) + 6))  # contiguous, real samples
        starts.add(int(window[0]) - 1)
    assert starts == {0, 1, 2, 3, 4}  # every offset that keeps the window inside the clip, and no other
    same = [crop(c, torch.arange(3), 6, torch.Generator().manual_seed(5)) for _ in range(2)]
    assert torch.equal(*same)
    wider = crop(c, torch.arange(3), 12, None)  # a window longer than every clip: padded
    assert wider.shape == (3, 12) and wider[0, :10].tolist() == list(range(1, 11))


def config_for(model: str, **features: object) -> dict:
    raw = {"model": {"name": model}, "features": features, "data": {"sample_rate": 16000, "clip_seconds": 1.0}}
    return resolve(raw, "inputs")


def test_auto_features_follow_the_model_and_a_wrong_kind_is_refused() -> None:
    assert input_kind(config_for("audio_cnn")) == "logmel"
    assert input_kind(config_for("audio_cnn", name="fbank")) == "fbank"
    assert input_kind(config_for("eat_s")) == "waveform"
    assert input_kind(config_for("ast")) == "fbank"
    with pytest.raises(ConfigError) as info:
        config_for("eat_s", name="logmel")
    assert info.value.key == "features.name"
    assert "model eat_s does not read logmel input; accepted: auto, waveform" in str(info.value)
    with pytest.raises(ConfigError, match="accepted: auto, logmel, fbank"):
        config_for("audio_cnn", name="waveform")


def test_fbank_matches_the_ast_feature_extractor() -> None:
    """Batched on the device, but the same numbers transformers' ASTFeatureExtractor computes one clip at a time."""
    from transformers import ASTFeatureExtractor

    config = config_for("ast", n_mels=128, n_fft=400, hop_length=160)
    rng = np.random.default_rng(0)
    waves = (rng.standard_normal((2, 16000)) * 0.1).astype(np.float32)
    ours = build_features(config)(torch.from_numpy(waves))
    assert ours.shape == (2, 1, 128, 98)
    extractor = ASTFeatureExtractor(do_normalize=False, max_length=98)
    theirs = extractor(list(waves), sampling_rate=16000, return_tensors="pt")["input_values"]  # [B, frames, bins]
    torch.testing.assert_close(ours[:, 0].transpose(1, 2), theirs, atol=1e-3, rtol=1e-4)


def test_waveform_input_is_the_clip() -> None:
    x = torch.randn(3, 8000)
    assert torch.equal(build_features(config_for("eat_s"))(x), x)


def test_waveform_augmentations_scale_with_strength_and_replay_from_the_seed() -> None:
    base = config_for("eat_s")
    x = torch.randn(512, 16000) * 0.1
    off = copy.deepcopy(base)
    off["augment"].update(waveform=True, strength=0.0)
    assert torch.equal(Augment(off).wave(x.clone()), x)
    unset = copy.deepcopy(base)
    unset["augment"].update(waveform=False, strength=1.0)
    assert torch.equal(Augment(unset).wave(x.clone()), x)

    on = copy.deepcopy(base)
    on["augment"].update(waveform=True, strength=1.0)
    first, second = Augment(on), Augment(on)
    first.reseed(7)
    second.reseed(7)
    a, b = first.wave(x.clone()), second.wave(x.clone())
    assert torch.equal(a, b)  # a resumed trial draws the same augmentations
    changed = (a != x).any(1)
    assert 0.93 < changed.float().mean() < 0.995  # five augmentations at p = 1/2 each: all but 1/32 of the clips
    masked = (a == 0).sum(1)
    assert (masked >= 1600).any()  # a 0.1 s time mask (1600 samples at 16 kHz) zeroed somewhere
    assert a.shape == x.shape and torch.isfinite(a).all()
    assert a.abs().max() <= x.abs().max() * 1.3 + 0.01  # gain at most 1.3, noise 30 dB down


@pytest.mark.parametrize("kind", ["logmel", "fbank"])
def test_cached_frame_windows_are_the_features_of_the_same_audio_window(kind: str) -> None:
    from sweep.data.inputs import Inputs

    config = config_for("audio_cnn", name=kind, n_mels=40, n_fft=400, hop_length=160)
    samples, hop = 16000, 160
    lengths = [samples, samples + 7 * hop]
    waves = torch.zeros(2, samples + 7 * hop)
    for i, n in enumerate(lengths):
        waves[i, :n] = torch.randn(n, generator=torch.Generator().manual_seed(i)) * 0.1
    c = Clips(waves, torch.tensor(lengths), torch.zeros(2, dtype=torch.long), ["a"], 16000)
    features = build_features(config)
    inputs = Inputs(config, c, features, torch.device("cpu"))
    assert inputs.frames is not None  # spectrogram input, no waveform augmentation: precomputed
    x = inputs(torch.arange(2))  # centred: clip 0 whole, clip 1 from frame 3 (room 7 frames)
    expected = features(torch.stack([waves[0, :samples], waves[1, 3 * hop : 3 * hop + samples]]))
    assert x.shape == expected.shape
    # the whole clip: the same frames, but the last ones, which see the split's zero padding, not a reflection
    torch.testing.assert_close(x[0, ..., :-2], expected[0, ..., :-2])
    torch.testing.assert_close(x[1, ..., 2:-2], expected[1, ..., 2:-2], atol=1e-4, rtol=1e-4)  # but its edges
    for seed in range(5):  # random windows stay inside the clip and on hop boundaries
        g = torch.Generator().manual_seed(seed)
        start = int((torch.rand(2, generator=torch.Generator().manual_seed(seed)) * 8).long()[1])
        y = inputs(torch.arange(2), g)
        window = features(waves[1:2, start * hop : start * hop + samples])
        torch.testing.assert_close(y[1, ..., 2:-2], window[0, ..., 2:-2], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["logmel", "fbank"])
def test_the_model_reads_the_same_tensor_from_the_cache_and_from_features_made_per_batch(kind: str) -> None:
    """Same values and the same memory layout: in training mode batch norm sums its batch statistics in memory
    order, so on the transposed view that torchaudio's mel scale returns it rounds differently (found as a
    7th-digit difference between the trainer and the bare loop of benchmarks/trainer_overhead.py), and a trial
    would depend on whether its data were cached."""
    from sweep.data.inputs import Inputs
    from sweep.models import build_model

    config = config_for("audio_cnn", name=kind, n_mels=40, n_fft=400, hop_length=160)
    waves = torch.randn(8, 16000, generator=torch.Generator().manual_seed(0)) * 0.1  # one window each
    c = Clips(waves, torch.full((8,), 16000), torch.zeros(8, dtype=torch.long), ["a", "b"], 16000)
    features = build_features(config)
    cached, made = Inputs(config, c, features, torch.device("cpu"))(torch.arange(8)), features(waves)
    assert made.is_contiguous() and cached.stride() == made.stride()
    assert torch.equal(cached, made)
    torch.manual_seed(0)
    model = build_model(config, 2, tuple(made.shape[1:]))  # training mode: batch statistics, dropout
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            outputs = []
            for x in (cached, made):
                torch.manual_seed(n)  # the same dropout masks
                outputs.append(model(x))
            assert torch.equal(*outputs)
    finally:
        torch.set_num_threads(threads)
