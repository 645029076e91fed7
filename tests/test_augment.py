"""The augmentation engine: `augment.chain` checked entry by entry, each entry's own `p`, the seeded replay a
resumed trial depends on, which batches `augment.mix` mixes, and what the chain does to the data path."""

from __future__ import annotations

import copy

import pytest
import torch

from sweep.config.resolve import resolve
from sweep.data import Clips
from sweep.data.augment import Augment, needs_waveform
from sweep.data.features import build_features
from sweep.data.inputs import Inputs
from sweep.schema import ConfigError


def config(augment: dict, model: str = "audio_cnn", search_space: dict | None = None) -> dict:
    raw = {"model": {"name": model}, "data": {"sample_rate": 8000, "clip_seconds": 0.5},
           "augment": augment, "search_space": search_space or {}}
    return resolve(raw, "study.yaml")


def refused(augment: dict, model: str = "audio_cnn", search_space: dict | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        config(augment, model, search_space)
    return info.value


@pytest.mark.parametrize(
    ("chain", "key", "words"),
    [
        ([{"nosie": {"p": 0.5}}], "augment.chain.0", "unknown augmentation 'nosie' (did you mean 'noise'?)"),
        (["polarity", {"gain": {}, "polarity": {}}], "augment.chain.1", "an entry is one augmentation"),
        ([{"gain": {"lo": 0.5}}], "augment.chain.0.gain.lo", "unknown gain key; accepted: p, low, high"),
        ([{"gain": {"p": 1.5}}], "augment.chain.0.gain.p", "expected a number in [0.0, 1.0], got 1.5"),
        ([{"gain": {"low": 2.0, "high": 1.0}}], "augment.chain.0.gain", "low (2.0) is above high (1.0)"),
        ([{"noise": [30, 40]}], "augment.chain.0", "the keys of noise are a mapping"),
        ([7], "augment.chain.0", "got 7; accepted names: "),
    ],
)
def test_a_bad_chain_entry_is_refused_naming_it(chain: list, key: str, words: str) -> None:
    error = refused({"chain": chain})
    assert error.key == key and words in error.detail and error.source == "study.yaml"


def test_a_spectrogram_entry_on_a_waveform_model_and_an_unknown_mix_are_refused() -> None:
    error = refused({"chain": ["polarity", {"time_masking": {"tmp": 4}}]}, model="eat_s")
    assert error.key == "augment.chain.1"
    assert "time_masking works on spectrograms and model eat_s reads the waveform" in error.detail
    assert "gain" in error.detail  # what would be accepted
    error = refused({"mix": ["mixup", "mixpu"]})
    assert error.key == "augment.mix.1" and "unknown mix 'mixpu' (did you mean 'mixup'?)" in error.detail


def test_every_value_a_search_can_pick_for_a_chain_key_is_checked() -> None:
    chain = [{"gain": {"low": 0.5, "high": 1.3}}]
    ok = config({"chain": chain}, search_space={"augment.chain.0.gain.p": {"type": "float", "low": 0.0, "high": 1.0}})
    assert ok["augment"]["chain"] == chain
    error = refused({"chain": chain}, search_space={"augment.chain.0.gain.low": [0.5, 2.0]})
    assert "augment.chain.0.gain.low=2.0" in error.detail and "low (2.0) is above high (1.3)" in error.detail


def test_each_entry_hits_examples_with_its_own_p_and_replays_from_the_seed() -> None:
    x = torch.randn(400, 4000)
    never = Augment(config({"chain": [{"polarity": {"p": 0.0}}], "mixup": False}))
    assert torch.equal(never.wave(x), x)
    always = Augment(config({"chain": [{"polarity": {"p": 1.0}}]}))
    assert torch.equal(always.wave(x), -x)
    bare = Augment(config({"chain": ["polarity"]}))  # a bare name: the defaults, p 0.5
    bare.reseed(3)
    first = bare.wave(x)
    flipped = (first == -x).all(1).float().mean()
    assert 0.4 < flipped < 0.6 and ((first == x).all(1) | (first == -x).all(1)).all()
    bare.reseed(3)
    assert torch.equal(bare.wave(x), first)  # a resumed trial draws the same
    bare.reseed(4)
    assert not torch.equal(bare.wave(x), first)


def test_the_presets_and_the_chain_run_together_in_order() -> None:
    silence = {"gain": {"p": 1.0, "low": 0.0, "high": 0.0}}
    both = Augment(config({"waveform": True, "strength": 1.0, "chain": [silence]}))
    assert len(both.wave_steps) == 6 and both.wave_steps[-1].spec is both.wave_steps[0].spec  # presets, then chain
    assert torch.equal(both.wave(torch.randn(8, 4000)), torch.zeros(8, 4000))  # the chain's gain 0 runs last
    spec = Augment(config({"strength": 1.0, "chain": [{"freq_masking": {"p": 1.0, "fmp": 0}}]}))
    assert [s.sized is not None for s in spec.spec_steps] == [True, True, False]


def test_mix_replaces_mixup_and_mixes_only_after_epoch_mix_at_mix_ratio() -> None:
    x, y = torch.randn(16, 1, 8, 10), torch.arange(16) % 4
    aug = Augment(config({"mix": ["mixup"], "mix_ratio": 1.0, "epoch_mix": 2, "mixup": True, "strength": 1.0}))
    assert aug.alpha == 0.0  # the classic mixup is off when `mix` is given
    for epoch in (1, 2):
        same, target = aug.mix(x, y, 4, epoch)
        assert torch.equal(same, x) and torch.equal(target, torch.nn.functional.one_hot(y, 4).float())
    mixed, target = aug.mix(x, y, 4, 3)
    assert not torch.equal(mixed, x)
    assert torch.allclose(target.sum(1), torch.ones(16)) and (target.max(1).values < 1).any()
    never = Augment(config({"mix": ["mixup"], "mix_ratio": 0.0}))
    assert all(torch.equal(never.mix(x, y, 4, e)[0], x) for e in range(1, 20))
    half = Augment(config({"mix": ["mixup"], "mix_ratio": 0.5}))
    share = sum(not torch.equal(half.mix(x, y, 4, 1)[0], x) for _ in range(400)) / 400
    assert 0.4 < share < 0.6


def clips(n: int = 6) -> Clips:
    waves = torch.randn(n, 4000) * 0.1
    return Clips(waves, torch.full((n,), 4000), torch.arange(n) % 2, ["a", "b"], 8000)


def test_a_waveform_entry_turns_the_cached_features_off_and_a_spectrogram_entry_does_not() -> None:
    wave = config({"chain": [{"gain": {"p": 1.0, "low": 2.0, "high": 2.0}}]})
    spec = config({"chain": [{"time_masking": {"p": 1.0}}]})
    assert needs_waveform(wave) and not needs_waveform(spec) and not needs_waveform(config({}))
    assert needs_waveform(config({"waveform": True})) and not needs_waveform(config({"waveform": True, "strength": 0}))
    data, device = clips(), torch.device("cpu")
    features = build_features(wave)
    cached = Inputs(spec, data, build_features(spec), device, Augment(spec))
    assert cached.frames is not None
    live = Inputs(wave, data, features, device, Augment(wave))
    assert live.frames is None
    idx, generator = torch.arange(6), torch.Generator().manual_seed(0)
    doubled = live(idx, generator)  # the gain of 2 reached the features of the training batch
    plain = features(copy.deepcopy(data.waves))
    assert torch.allclose(doubled, features(2 * data.waves), atol=1e-4) and not torch.allclose(doubled, plain)
    assert torch.allclose(live(idx), plain, atol=1e-4)  # evaluation (no generator) is never augmented
