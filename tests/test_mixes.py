"""EAT's label-mixing batch augmentations (`augment.mix`: mixup, timemix, freqmix, phmix).

Each mix is shown to keep the batch's shape, stay finite, repeat for a seed and keep λ in its range; timemix
and freqmix to put the partner's segment or band exactly where they say; phmix to keep the magnitude it was
given; `mix_ratio` and `epoch_mix` to decide which batches are mixed; a mix to change what a tiny EAT trains;
and bad names or a mix the model's input cannot take to be refused naming the key.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TINY

from sweep.checkpoint import load_checkpoint
from sweep.config.resolve import resolve
from sweep.data.augment import MIXES, Augment, Draw
from sweep.data.augment.mix import _istft, _stft, phase_blend
from sweep.schema import ConfigError

RATE = 8000
N = 4000  # 0.5 s at 8 kHz
B = 8
PARTNER = torch.arange(B) ^ 1  # neighbours swapped: every example's partner is another one
TINY_EAT = {"name": "eat_s", "nf": 2, "emb": 8, "ff": 16, "layers": 1, "heads": 2}
# the share of its own label a mixed example keeps: mixup's gain-aware weight on waveforms lies in (0, 1)
RANGES = {"mixup": (0.1, 1.0), "timemix": (0.5, 1.0), "freqmix": (0.5, 1.0), "phmix": (0.5, 1.0)}


def raw(model: dict[str, Any] | None = None, **augment: Any) -> dict[str, Any]:
    config = copy.deepcopy(TINY)
    config["model"] = dict(model or TINY_EAT)
    config["features"]["name"] = "waveform" if config["model"]["name"].startswith("eat") else "logmel"
    config["augment"] = {"mixup": False, "specaugment": False, **augment}
    config["search_space"] = {}
    return config


def waves() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(B, N) * torch.linspace(0.05, 1.0, B).unsqueeze(1)  # clips of different levels


def specs() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(B, 1, 32, 40) + 5


def inputs(name: str) -> list[torch.Tensor]:
    return [waves(), specs()] if "spec" in MIXES[name].inputs else [waves()]


@pytest.mark.parametrize("name", list(MIXES))
def test_each_mix_keeps_shape_is_finite_repeatable_and_in_range(name: str) -> None:
    low, high = RANGES[name]
    for x in inputs(name):
        mixed, lam = MIXES[name].apply(x, PARTNER, Draw(3), RATE)
        again, lam_again = MIXES[name].apply(x, PARTNER, Draw(3), RATE)
        other, _ = MIXES[name].apply(x, PARTNER, Draw(4), RATE)
        assert mixed.shape == x.shape and mixed.dtype == x.dtype and torch.isfinite(mixed).all()
        assert torch.equal(mixed, again) and torch.equal(lam, lam_again) and not torch.equal(mixed, other)
        assert not torch.allclose(mixed, x, atol=1e-3)  # it did mix
        assert lam.shape == (B,)
        if name == "mixup" and x.dim() == 2:  # the gain-aware weight: anywhere in (0, 1)
            assert ((lam > 0) & (lam < 1)).all()
        else:
            assert ((lam >= low) & (lam <= high)).all(), lam


@pytest.mark.parametrize("name", list(MIXES))
def test_mixed_targets_hold_lambda_of_each_label_and_sum_to_one(name: str) -> None:
    aug = Augment(resolve(raw(mix=[name], mix_ratio=1.0), "t"))
    aug.reseed(5)
    y = torch.arange(B) % 4
    x = waves()
    mixed, target = aug.mix(x, y, 4, epoch=1)
    assert not torch.equal(mixed, x)
    torch.testing.assert_close(target.sum(1), torch.ones(B))
    assert ((target >= 0) & (target <= 1)).all() and (target.max(1).values < 1).any()  # shares of two labels


def test_mixup_on_waveforms_is_gain_aware() -> None:
    """The weight is EAT's p = 1 / (1 + 10^((G1 − G2)/20) (1 − λ)/λ): a clip quieter than its partner weighs
    more than λ (so it is still heard), a louder one less; the blend is rescaled by sqrt(p² + (1 − p)²)."""
    x = waves()
    mixed, p = MIXES["mixup"].apply(x, PARTNER, Draw(3), RATE)
    lam = Draw(3).uniform(B, 0.1, 1.0, x.device)
    gain = 10 * torch.log10(x.pow(2).mean(1))
    expected = 1 / (1 + 10 ** ((gain - gain[PARTNER]) / 20) * (1 - lam) / lam)
    torch.testing.assert_close(p, expected)
    w = p.unsqueeze(1)
    torch.testing.assert_close(mixed, (x * w + x[PARTNER] * (1 - w)) / torch.sqrt(w**2 + (1 - w) ** 2))
    quiet = torch.arange(B) % 2 == 0  # even examples are quieter than their (odd) partners: their weight rises
    assert (p[quiet] > lam[quiet]).all() and (p[~quiet] < lam[~quiet]).all()
    spec, lam_spec = MIXES["mixup"].apply(specs(), PARTNER, Draw(3), RATE)  # a plain blend on spectrograms
    w = lam_spec.view(-1, 1, 1, 1)
    torch.testing.assert_close(spec, w * specs() + (1 - w) * specs()[PARTNER])


def _replaced_segment(mixed: torch.Tensor, own: torch.Tensor, other: torch.Tensor, kept: float) -> str:
    """'start' or 'end': which part of the last axis is the partner's (exactly), the rest being own."""
    n = own.shape[-1]
    r = round((1 - kept) * n)
    if torch.equal(mixed[..., :r], other[..., :r]) and torch.equal(mixed[..., r:], own[..., r:]):
        return "start"
    if torch.equal(mixed[..., n - r:], other[..., n - r:]) and torch.equal(mixed[..., : n - r], own[..., : n - r]):
        return "end"
    raise AssertionError(f"neither the start nor the end ({r} of {n}) is the partner's")


def test_timemix_swaps_a_start_or_end_segment_of_clips_and_frames() -> None:
    for x in (waves(), specs()):
        mixed, kept = MIXES["timemix"].apply(x, PARTNER, Draw(3), RATE)
        sides = {_replaced_segment(mixed[i], x[i], x[PARTNER[i]], float(kept[i])) for i in range(B)}
        assert sides == {"start", "end"}  # both occur in a batch of 8 (per example, not per batch)


def test_freqmix_on_spectrograms_swaps_a_low_or_high_band_of_bins() -> None:
    x = specs()
    mixed, kept = MIXES["freqmix"].apply(x, PARTNER, Draw(3), RATE)
    bins_last = lambda t: t.transpose(-1, -2)  # noqa: E731  the band is along the bins axis
    sides = {_replaced_segment(bins_last(mixed[i]), bins_last(x[i]), bins_last(x[PARTNER[i]]), float(kept[i]))
             for i in range(B)}
    assert sides == {"start", "end"}


def _tones(*freqs: float) -> torch.Tensor:
    t = torch.arange(N) / RATE
    return sum(torch.sin(2 * math.pi * f * t) for f in freqs)


def _level(x: torch.Tensor, freq: float) -> float:
    """The amplitude of `x` at `freq` (every tone sits on an FFT bin: whole periods in the clip)."""
    return float(torch.fft.rfft(x).abs()[round(freq * N / RATE)] * 2 / N)


def test_freqmix_on_a_two_tone_example_keeps_one_tone_of_each() -> None:
    """Own: 100 + 3900 Hz, partner: 150 + 3850 Hz (each pair within 5 % of the band's edge, a window's leakage
    included). Replacing a low or a high band of 10 % to 50 % of the bins takes exactly one of the partner's
    tones and keeps the other own one."""
    own, other = _tones(100, 3900), _tones(150, 3850)
    x = torch.stack([own if i % 2 == 0 else other for i in range(B)])
    checked, sides = 0, set()
    for seed in range(4):
        mixed, kept = MIXES["freqmix"].apply(x, PARTNER, Draw(seed), RATE)
        for i in range(0, B, 2):
            if kept[i] > 0.9:  # the band edge may sit on a tone
                continue
            level = {f: _level(mixed[i], f) for f in (100, 3900, 150, 3850)}
            low_swapped = level[150] > 0.8 and level[3900] > 0.8 and level[100] < 0.2 and level[3850] < 0.2
            high_swapped = level[100] > 0.8 and level[3850] > 0.8 and level[150] < 0.2 and level[3900] < 0.2
            assert low_swapped != high_swapped, level
            sides.add("low" if low_swapped else "high")
            checked += 1
    assert checked >= 8 and sides == {"low", "high"}


def test_phmix_keeps_the_magnitude_and_blends_the_phase() -> None:
    x = waves()
    spec, _ = _stft(x, 256)
    lam = torch.linspace(0, 1, B)
    blended = phase_blend(spec, PARTNER, lam)
    torch.testing.assert_close(blended.abs(), spec.abs(), rtol=1e-5, atol=1e-6)
    w = lam.view(-1, 1, 1)
    expected = w * spec.angle() + (1 - w) * spec.angle()[PARTNER]
    torch.testing.assert_close(torch.cos(blended.angle() - expected), torch.ones_like(expected), atol=1e-3,
                               rtol=0)  # equal up to whole turns
    itself, kept = MIXES["phmix"].apply(x, torch.arange(B), Draw(3), RATE)  # its own phase: the clip, round-tripped
    torch.testing.assert_close(itself, x, atol=1e-5, rtol=1e-4)
    assert ((kept >= 0.5) & (kept <= 1)).all()


@pytest.mark.parametrize("length", [4000, 4001, 114688])
def test_the_inverse_stft_is_torchs_without_its_wait_for_the_device(length: int) -> None:
    """freqmix and phmix invert their STFT by overlap-add (torch.istft checks the window's overlap by reading a
    number back from the device): the same clip as torch.istft's, for every window and for an STFT that is not
    one of any signal (phmix's), at a length every hop divides (114688, EAT's) and at two that none does."""
    torch.manual_seed(0)
    x = torch.randn(3, length)
    for win in (256, 512, 1024, 2048):
        spec, keys = _stft(x, win)
        spec = spec * torch.polar(torch.ones_like(spec.real), 3 * torch.rand_like(spec.real))
        torch.testing.assert_close(_istft(spec, keys, x), torch.istft(spec, length=length, **keys),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_mix_ratio_and_epoch_mix_decide_which_batches_are_mixed(ratio: float) -> None:
    aug = Augment(resolve(raw(mix=["mixup", "timemix"], mix_ratio=ratio, epoch_mix=2), "t"))
    x, y = waves(), torch.arange(B) % 4
    for epoch in range(1, 6):
        aug.reseed(epoch)
        for _ in range(5):
            mixed, target = aug.mix(x, y, 4, epoch)
            was_mixed = not torch.equal(mixed, x)
            assert was_mixed == (ratio == 1.0 and epoch > 2)
            assert torch.equal(target.max(1).values == 1, torch.ones(B, dtype=torch.bool)) != was_mixed


def test_a_half_ratio_mixes_some_batches() -> None:
    aug = Augment(resolve(raw(mix=["timemix"], mix_ratio=0.5), "t"))
    aug.reseed(0)
    x, y = waves(), torch.arange(B) % 4
    mixed = [not torch.equal(aug.mix(x, y, 4, 1)[0], x) for _ in range(40)]
    assert 5 < sum(mixed) < 35


def _trained(tmp_path: Path, **augment: Any) -> dict[str, torch.Tensor]:
    from sweep.run.trial import train_trial

    config = raw(**augment)
    config["train"]["epochs"] = 1
    train_trial(resolve(config, "t"), tmp_path)
    return load_checkpoint(tmp_path / "checkpoint.pt")["model"]


@pytest.fixture(scope="module")
def unmixed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    return _trained(tmp_path_factory.mktemp("unmixed"))


@pytest.mark.parametrize("name", list(MIXES))
def test_a_mix_changes_what_a_tiny_eat_trains(name: str, unmixed: dict, tmp_path: Path) -> None:
    again = _trained(tmp_path / "again")  # the same run is the same weights: the difference is the mix's
    assert all(torch.equal(again[k], unmixed[k]) for k in unmixed)
    mixed = _trained(tmp_path / "mixed", mix=[name], mix_ratio=1.0)
    assert mixed.keys() == unmixed.keys() and not all(torch.equal(mixed[k], unmixed[k]) for k in unmixed)


@pytest.mark.parametrize(("augment", "model", "key", "message"), [
    ({"mix": ["mixpu"]}, None, "augment.mix.0", "unknown mix 'mixpu'"),
    ({"mix": ["timemix", "phmix"]}, {"name": "audio_cnn", "width": 4, "depth": 1}, "augment.mix.1",
     "phmix mixes wave input and model audio_cnn reads a spectrogram; accepted here: mixup, timemix, freqmix"),
])
def test_bad_mixes_are_refused_naming_the_key(augment: dict, model: dict | None, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve(raw(model, **augment), "study.yaml")
    assert err.value.key == key and message in str(err.value)
    if augment["mix"] == ["mixpu"]:
        assert "did you mean 'mixup'" in str(err.value)
