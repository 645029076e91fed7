"""Every entry of `augment.chain` on a batch of synthetic audio or spectrograms, through the trainer's own
`Augment`: the shape kept, finite, p = 0 the identity, p = 1 every example changed, the same seed the same
output; then what each entry claims to do, measured; its config errors; and one tiny run that a chain
changes what is trained."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT

from sweep.config.resolve import load, resolve
from sweep.data.augment import AUGMENTATIONS, Augment
from sweep.schema import ConfigError

RATE, SAMPLES = 8000, 8000  # one second of audio
OFF = {"specaugment": False, "waveform": False, "mixup": False}  # the presets, so only the chain runs
NEW = ("noise", "cyclic_shift", "amp_segment", "speed", "time_shift", "reverb", "dropblock")


def augment(name: str, p: float = 1.0, seed: int = 0, **keys: object) -> Augment:
    """The trainer's Augment for a one-entry chain (a waveform model for waveform entries)."""
    model = "eat_s" if AUGMENTATIONS[name].domain == "wave" else "audio_cnn"
    config = resolve({"model": {"name": model}, "data": {"sample_rate": RATE, "clip_seconds": 1.0},
                      "augment": {**OFF, "chain": [{name: {"p": p, **keys}}]}}, "test")
    aug = Augment(config)
    aug.reseed(seed)
    return aug


def run(name: str, x: torch.Tensor, p: float = 1.0, seed: int = 0, **keys: object) -> torch.Tensor:
    aug = augment(name, p, seed, **keys)
    return aug.wave(x.clone()) if AUGMENTATIONS[name].domain == "wave" else aug.spec(x.clone())


def batch(name: str, n: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if AUGMENTATIONS[name].domain == "spec":
        return torch.randn(n, 1, 32, 50, generator=g)
    return 0.1 * torch.randn(n, SAMPLES, generator=g)


@pytest.mark.parametrize("name", AUGMENTATIONS.names())
def test_every_entry_keeps_the_shape_is_the_identity_at_p_0_and_replays_from_the_seed(name: str) -> None:
    x = batch(name)
    out = run(name, x, seed=3)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert torch.equal(run(name, x, p=0.0, seed=3), x)
    assert torch.equal(run(name, x, seed=3), out)  # a resumed trial draws the same
    if name != "polarity":  # the one entry with nothing to draw
        assert not torch.equal(run(name, x, seed=4), out)


@pytest.mark.parametrize("name", NEW)
def test_each_new_entry_at_p_1_changes_every_example(name: str) -> None:
    x = batch(name)
    changed = (run(name, x) != x).flatten(1).any(1)
    assert changed.all(), name


def noise_of(color: str, n: int = 64, snr: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    x = batch("noise", n)
    return x, run("noise", x, colors=[color], min_snr_db=snr, max_snr_db=snr) - x


def slope(noise: torch.Tensor) -> float:
    """The fitted exponent k of power ∝ f^k of the averaged spectrum, over 50 Hz – 3 kHz in log-spaced bands."""
    power = torch.fft.rfft(noise.double()).abs().pow(2).mean(0)
    f = torch.fft.rfftfreq(noise.shape[1], 1 / RATE)
    edges = np.geomspace(50, 3000, 25)
    centres, levels = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        band = (f >= lo) & (f < hi)
        centres.append(math.log10(math.sqrt(lo * hi)))
        levels.append(math.log10(float(power[band].mean())))
    return float(np.polyfit(centres, levels, 1)[0])


@pytest.mark.parametrize(("color", "k"), [("white", 0.0), ("pink", -1.0), ("brown", -2.0), ("blue", 1.0),
                                          ("violet", 2.0)])
def test_coloured_noise_has_its_spectral_slope_and_the_drawn_snr(color: str, k: float) -> None:
    x, noise = noise_of(color)
    assert slope(noise) == pytest.approx(k, abs=0.15)
    snr = 10 * torch.log10(x.pow(2).mean(1) / noise.pow(2).mean(1))
    torch.testing.assert_close(snr, torch.full_like(snr, 10.0), atol=1e-3, rtol=0)  # unit power, then scaled


def test_uniform_sine_and_phase_noise() -> None:
    x, uniform = noise_of("uniform")
    _, white = noise_of("white")

    def peak(w: torch.Tensor) -> torch.Tensor:
        return w.abs().amax(1) / w.pow(2).mean(1).sqrt()

    assert (peak(uniform) < 1.8).all() and (peak(white) > 3).all()  # a uniform's peak is √3 its rms
    _, sine = noise_of("sine")
    power = torch.fft.rfft(sine).abs().pow(2)
    below = power[:, :55].sum(1) / power.sum(1)  # 1 Hz bins: what lies under 55 Hz
    assert (below > 0.9).all()
    _, phase = noise_of("phase")
    relative = phase.pow(2).mean(1).sqrt() / x.pow(2).mean(1).sqrt()
    assert ((relative > 1e-4) & (relative < 0.05)).all()  # a small perturbation of the clip itself


def test_one_colour_is_drawn_per_clip() -> None:
    x = batch("noise", 64)
    noise = run("noise", x, colors=["white", "brown"], min_snr_db=10.0, max_snr_db=10.0) - x
    power = torch.fft.rfft(noise).abs().pow(2)
    low = power[:, :200].sum(1) / power.sum(1)  # share of each clip's noise under 200 Hz: 5 % white, most brown
    assert ((low < 0.15) | (low > 0.6)).all()
    assert 10 < int((low > 0.6).sum()) < 54


def test_cyclic_shift_is_a_roll_of_each_clip() -> None:
    n = SAMPLES
    x = torch.arange(16 * n, dtype=torch.float32).view(16, n)  # every sample says where it came from
    out = run("cyclic_shift", x, max_fraction=0.25)
    shifts = []
    for i in range(16):
        d = int(n - (out[i, 0] - i * n)) % n  # out[j] = x[(j - d) mod n]
        assert torch.equal(out[i], torch.roll(x[i], d))
        shifts.append(d)
    assert max(shifts) < n // 4 and len(set(shifts)) > 10


def tone(hz: float, n: int = 4) -> torch.Tensor:
    return torch.sin(2 * math.pi * hz * torch.arange(SAMPLES) / RATE).expand(n, -1).contiguous()


def peak_hz(x: torch.Tensor) -> torch.Tensor:
    return torch.fft.rfft(x).abs().argmax(1).float() * RATE / x.shape[1]  # 1 Hz bins


def test_speed_moves_a_tone_with_the_factor_and_keeps_the_length() -> None:
    """Sample j of the result is the clip at j × factor: played at 0.8 times the speed, 100 Hz reads 80 Hz
    (and the stretched clip is cropped); at 1.25 times it reads 125 Hz and the last fifth is silence."""
    slow = run("speed", tone(100.0), factors=[0.8])
    assert slow.shape == (4, SAMPLES)
    assert torch.equal(peak_hz(slow), torch.full((4,), 80.0))
    fast = run("speed", tone(100.0), factors=[1.25])
    assert torch.equal(peak_hz(fast[:, :6400]), torch.full((4,), 125.0))  # 6400 samples: bins of 1.25 Hz
    assert (fast[:, 6400:] == 0).all() and (fast[:, :6000].abs().amax(1) > 0.9).all()
    mixed = run("speed", tone(100.0, n=32), factors=[0.8, 0.9])  # one factor drawn per clip
    assert set(peak_hz(mixed).tolist()) == {80.0, 90.0}


def test_time_shift_is_a_monotone_warp_that_keeps_the_length_and_the_ends() -> None:
    ramp = torch.arange(SAMPLES, dtype=torch.float32).expand(16, -1).contiguous()  # sample value = its position
    out = run("time_shift", ramp, parts=3, max_stretch=0.2)
    assert out.shape == ramp.shape
    step = out.diff(dim=1)
    assert (step >= 0).all()  # monotone: time never runs backwards
    assert (step >= 0.8 / 1.2 - 1e-3).all() and (step <= 1.2 / 0.8 + 1e-3).all()  # each part's rate, renormalised
    assert torch.equal(out[:, 0], ramp[:, 0]) and (out[:, -1] - (SAMPLES - 1)).abs().max() < 1e-2
    assert ((out - ramp).abs().amax(1) > 20).all()  # every clip warped, by tens of samples in the middle


def test_amp_segment_scales_one_contiguous_span_only() -> None:
    x = batch("amp_segment")
    out = run("amp_segment", x, max_fraction=0.1, low=0.5, high=1.3)
    for i in range(len(x)):
        idx = (out[i] != x[i]).nonzero().squeeze(1)
        assert len(idx) > 0 and int(idx[-1] - idx[0]) + 1 == len(idx) <= SAMPLES // 10
        factor = out[i, idx] / x[i, idx]
        assert 0.5 <= float(factor.mean()) <= 1.3
        torch.testing.assert_close(factor, factor.mean().expand_as(factor))


def test_reverb_decays_60_db_in_the_drawn_rt60_and_mixes_dry_with_wet() -> None:
    impulse = torch.zeros(16, SAMPLES)
    impulse[:, 0] = 1.0

    def decay_db(rt60: float) -> float:
        wet = run("reverb", impulse, min_rt60=rt60, max_rt60=rt60, mix=1.0)  # the impulse response itself
        early, late = wet[:, 400:1200].pow(2).mean(), wet[:, 2800:3600].pow(2).mean()  # 0.3 s apart
        return float(10 * torch.log10(early / late))

    assert decay_db(0.5) == pytest.approx(60 * 0.3 / 0.5, abs=3.0)
    assert decay_db(1.0) == pytest.approx(60 * 0.3 / 1.0, abs=3.0)
    x = batch("reverb")
    assert torch.equal(run("reverb", x, mix=0.0), x)
    assert AUGMENTATIONS["reverb"].slow


def test_dropblock_zeroes_whole_blocks_and_rescales_the_rest() -> None:
    x = torch.ones(64, 1, 32, 50)
    out = run("dropblock", x, drop_prob=0.1, block_f=5, block_t=4)
    dropped = (out == 0).float()
    # a union of 5 × 4 blocks: opening the dropped mask with a 5 × 4 block gives it back
    eroded = -torch.nn.functional.max_pool2d(-dropped, (5, 4), stride=1)
    opened = torch.nn.functional.max_pool2d(torch.nn.functional.pad(eroded, (3, 3, 4, 4)), (5, 4), stride=1)
    assert torch.equal(opened, dropped)
    share = dropped.mean((1, 2, 3))
    assert (share > 0).all() and 0.06 < float(share.mean()) < 0.13
    kept = out[out != 0].view(-1)
    scale = (32 * 50 / (1 - dropped).sum((1, 2, 3)))  # area / kept area, per example
    torch.testing.assert_close(out.sum((1, 2, 3)), torch.full((64,), 32.0 * 50))
    assert torch.isin(kept, scale).all()


def test_a_chain_of_every_waveform_entry_runs_in_order_on_a_batch() -> None:
    config = resolve({"model": {"name": "eat_s"}, "data": {"sample_rate": RATE, "clip_seconds": 1.0},
                      "augment": {**OFF, "chain": [
                          "gain", "polarity", "shift", "mask", "amp_segment", "cyclic_shift",
                          {"noise": {"colors": ["white", "pink", "brown", "blue", "violet", "uniform", "sine",
                                                "phase"]}},
                          "speed", "time_shift", {"reverb": {"p": 0.2}}]}}, "test")
    aug = Augment(config)
    x = batch("noise", 32)
    out = aug.wave(x.clone())
    assert out.shape == x.shape and torch.isfinite(out).all() and (out != x).any(1).all()



def test_an_entry_hits_each_example_with_its_p_chosen_on_the_cpu() -> None:
    """`Draw.hits` picks the examples from the CPU stream the per-example draws come from (so nothing waits for
    the device to count them): the same indices as a uniform draw below p, about p of a large batch, and None
    when an entry hits nothing; every entry's examples come from it."""
    from sweep.data.augment.registry import Draw

    hits, again = Draw(7).hits(10000, 0.3, torch.device("cpu")), Draw(7).uniform(10000, 0.0, 1.0, torch.device("cpu"))
    assert torch.equal(hits, (again < 0.3).nonzero().squeeze(1))
    assert 2800 < len(hits) < 3200 and hits.dtype == torch.long
    assert Draw(7).hits(50, 0.0, torch.device("cpu")) is None
    aug = Augment(resolve({"model": {"name": "eat_s"}, "data": {"sample_rate": RATE, "clip_seconds": 1.0},
                           "augment": {**OFF, "chain": [{"polarity": {"p": 0.5}}]}}, "test"))
    aug.reseed(3)
    x = batch("noise", 64)
    before = x.clone()
    flipped = (aug.wave(x) == -x).all(1).nonzero().squeeze(1)
    assert torch.equal(flipped, Draw(3).hits(64, 0.5, torch.device("cpu")))
    assert torch.equal(x, before)  # the caller's batch is never changed in place


def test_no_entry_chain_or_mix_makes_the_host_wait_for_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """What makes the host wait for a GPU (`.item()`, a boolean mask, `nonzero`, a copy back, an output size
    taken from the data) cannot run on PyTorch's meta device, which holds shapes and no numbers. Every entry, EAT's
    recipe's chain and each mix runs there, so on a GPU none of them stalls the data path: the choices
    made per example come from the CPU stream (`Draw.hits`, `Draw.uniform`) and reach the device as a queued copy.
    The meta device has no random generator: its draws are shapes too."""
    from sweep.data.augment import MIXES
    from sweep.data.augment.registry import Draw

    meta = torch.device("meta")
    for wait in (lambda t: t.nonzero(), lambda t: t.sum().item(), lambda t: t[t > 0], lambda t: t.cpu()):
        with pytest.raises((RuntimeError, NotImplementedError)):  # the device refuses each way of waiting
            wait(torch.ones(4, device=meta))
    monkeypatch.setattr(Draw, "_generator", lambda self, device: None)
    wave, spec = torch.randn(32, 114688, device=meta), torch.randn(32, 1, 64, 359, device=meta)
    rate = {"sample_rate": 22050, "clip_seconds": 114688 / 22050}
    for name, entry in AUGMENTATIONS.items():
        model = "eat_s" if entry.domain == "wave" else "audio_cnn"
        aug = Augment(resolve({"model": {"name": model}, "data": rate,
                               "augment": {**OFF, "chain": [{name: {"p": 0.5}}]}}, "test"))
        out = aug.wave(wave) if entry.domain == "wave" else aug.spec(spec)
        assert out.device == meta and out.shape == (wave if entry.domain == "wave" else spec).shape, name
    recipe = ROOT / "search_spaces" / "eat.yaml"
    assert Augment(load(recipe)).wave(wave).shape == wave.shape  # the recipe's chain, each entry at p 0.5
    labels = torch.randint(0, 50, (32,), device=meta)
    for name in MIXES:
        aug = Augment(load(recipe, [("augment.mix", [name]), ("augment.mix_ratio", 1.0), ("augment.epoch_mix", 0)]))
        mixed, target = aug.mix(wave, labels, 50, 1)
        assert mixed.shape == wave.shape and target.shape == (32, 50), name


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("augment: {chain: [nosie]}", "augment.chain.0", "unknown augmentation 'nosie' (did you mean 'noise'?)"),
        ("augment: {chain: [{noise: {snr: 3}}]}", "augment.chain.0.noise.snr",
         "unknown noise key; accepted: p, min_snr_db, max_snr_db, colors"),
        ("augment: {chain: [{noise: {min_snr_db: 40, max_snr_db: 20}}]}", "augment.chain.0.noise",
         "min_snr_db (40.0) is above max_snr_db (20.0)"),
        ("augment: {chain: [{noise: {colors: [pinkk]}}]}", "augment.chain.0.noise",
         "colors: unknown colour 'pinkk' (did you mean 'pink'?); accepted: white, pink, brown, blue, violet"),
        ("augment: {chain: [{noise: {colors: []}}]}", "augment.chain.0.noise", "colors lists no colour"),
        ("augment: {chain: [{speed: {factors: [0.9, 0]}}]}", "augment.chain.0.speed", "factors are speeds above 0"),
        ("augment: {chain: [{speed: {factors: 0.9}}]}", "augment.chain.0.speed.factors",
         "expected a list of numbers, got 0.9"),
        ("augment: {chain: [{cyclic_shift: {max_fraction: 2}}]}", "augment.chain.0.cyclic_shift.max_fraction",
         "expected a number in [0.0, 1.0], got 2.0"),
        ("augment: {chain: [{time_shift: {parts: 1}}]}", "augment.chain.0.time_shift.parts",
         "expected an integer >= 2, got 1"),
        ("augment: {chain: [{amp_segment: {low: 2}}]}", "augment.chain.0.amp_segment", "low (2.0) is above high"),
        ("augment: {chain: [{reverb: {min_rt60: 2}}]}", "augment.chain.0.reverb", "min_rt60 (2.0) is above max_rt60"),
        ("augment: {chain: [{dropblock: {block_t: 0}}]}", "augment.chain.0.dropblock.block_t",
         "expected an integer >= 1, got 0"),
        ("model: {name: eat_s}\naugment: {chain: [polarity, dropblock]}", "augment.chain.1",
         "dropblock works on spectrograms and model eat_s reads the waveform"),
    ],
)
def test_bad_chain_entries_are_refused_naming_the_key(tmp_path: Path, text: str, key: str, message: str) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        load(path, [])
    assert (info.value.source, info.value.key) == (str(path), key)
    assert message in str(info.value)


def test_a_chain_changes_what_is_trained(tiny_config: dict, tmp_path: Path) -> None:
    """One epoch of the tiny run without a chain, and twice with one: the chain's runs agree with each other
    (so the difference is the augmentation, not noise) and not with the plain run."""
    from sweep.run.trial import train_trial as train

    def weights(config: dict, name: str) -> dict[str, torch.Tensor]:
        train(config, tmp_path / name)
        return torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)["model"]

    plain = copy.deepcopy(tiny_config)
    plain["train"]["epochs"] = 1
    chained = copy.deepcopy(plain)
    chained["augment"]["chain"] = [{"speed": {"p": 0.5}}, {"noise": {"colors": ["pink", "brown"]}},
                                   {"time_shift": {"p": 0.5}}, {"dropblock": {"p": 0.5}}]
    chained = resolve(chained, "tiny")
    without, first, second = weights(plain, "plain"), weights(chained, "chain"), weights(chained, "again")
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], without[k]) for k in first)
