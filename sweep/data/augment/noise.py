"""Waveform augmentations that add a synthetic signal to the clip: `noise` (EAT's noise family) and `reverb`
(a synthetic room). Each works on the hit clips of a batch at once, [n, samples], on their device.

Coloured noise is white noise shaped in the rFFT domain (power ∝ f^k), so a batch of any mix of colours
costs one FFT pair; every noise is normalised to unit power before it is scaled to the clip's drawn SNR.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from sweep.data.augment.registry import AUGMENTATIONS, AugmentSpec, Draw, on_device
from sweep.schema import Field, did_you_mean

# the exponent k of each colour's power spectrum, power ∝ f^k (brown is EAT's "red")
SLOPES = {"white": 0.0, "pink": -1.0, "brown": -2.0, "blue": 1.0, "violet": 2.0}
COLORS = (*SLOPES, "uniform", "sine", "phase")
SINE_MAX_HZ = 50.0  # EAT's `sine`: a hum below 50 Hz
PHASE_JITTER = (0.01, 0.02)  # EAT's `phn`: radians of uniform jitter added to every STFT phase


def _column(values: torch.Tensor) -> torch.Tensor:
    return values.unsqueeze(1)


def _unit_power(w: torch.Tensor) -> torch.Tensor:
    return w / w.pow(2).mean(1, keepdim=True).sqrt().clamp_min(1e-12)


def _shaped(n: int, length: int, slope: float, draw: Draw, device: torch.device) -> torch.Tensor:
    """Noise whose power spectrum falls (or rises) as f^slope: white noise times f^(slope/2) per rFFT bin,
    the DC bin dropped."""
    white = draw.normal((n, length), device)
    if slope == 0.0:
        return white
    f = torch.arange(length // 2 + 1, device=device, dtype=white.dtype)
    gain = f.clamp_min(1.0).pow(slope / 2)
    gain[0] = 0.0
    return torch.fft.irfft(torch.fft.rfft(white) * gain, n=length)


def _sine(n: int, length: int, draw: Draw, device: torch.device, rate: int) -> torch.Tensor:
    """A sine of a frequency drawn from [0, 50) Hz and a random phase, amplitude √2 (unit power)."""
    hz, phase = _column(draw.uniform(n, 0.0, SINE_MAX_HZ, device)), _column(draw.uniform(n, 0.0, math.pi, device))
    t = torch.arange(length, device=device) / rate
    return math.sqrt(2) * torch.sin(2 * math.pi * hz * t + phase)


def _stft_size(rate: int) -> int:
    """EAT's shortest STFT, 512 points at 22.05 kHz, scaled to the rate as a power of two."""
    return 2 ** round(math.log2(rate * 512 / 22050))


def _phase(x: torch.Tensor, draw: Draw, rate: int) -> torch.Tensor:
    """EAT's phase noise: every STFT bin's phase moved by a uniform jitter of up to 0.01–0.02 rad (drawn per
    clip), then resynthesised. It perturbs the clip itself, so it takes no SNR."""
    n_fft = min(_stft_size(rate), x.shape[1])
    window = torch.hann_window(n_fft, device=x.device)
    spec = torch.stft(x, n_fft, n_fft // 4, window=window, return_complex=True)
    scale = draw.uniform(len(x), *PHASE_JITTER, x.device).view(-1, 1, 1)
    jitter = scale * draw.rand(tuple(spec.shape), x.device)
    return torch.istft(spec * torch.polar(torch.ones_like(jitter), jitter), n_fft, n_fft // 4, window=window,
                       length=x.shape[1])


def _unit_noise(color: str, n: int, length: int, draw: Draw, device: torch.device, rate: int) -> torch.Tensor:
    if color == "uniform":
        return _unit_power(2 * draw.rand((n, length), device) - 1)
    if color == "sine":
        return _sine(n, length, draw, device, rate)
    return _unit_power(_shaped(n, length, SLOPES[color], draw, device))


def noise(x: torch.Tensor, draw: Draw, p: Mapping[str, Any], rate: int) -> torch.Tensor:
    """Add noise of a colour drawn per clip from `colors` at an SNR drawn per clip from [min_snr_db,
    max_snr_db]; one batched call per colour present (a handful at most)."""
    colors = p["colors"]
    which = draw.integers(len(x), 0, len(colors), torch.device("cpu"))
    snr = _column(draw.uniform(len(x), p["min_snr_db"], p["max_snr_db"], x.device))
    scale = x.pow(2).mean(1, keepdim=True).sqrt() * 10 ** (-snr / 20)
    out = x.clone()
    for k, color in enumerate(colors):
        rows = on_device((which == k).nonzero().squeeze(1), x.device)
        if len(rows) == 0:
            continue
        if color == "phase":
            out[rows] = _phase(x[rows], draw, rate)
        else:
            out[rows] = x[rows] + _unit_noise(color, len(rows), x.shape[1], draw, x.device, rate) * scale[rows]
    return out


def _noise_check(p: Mapping[str, Any]) -> str | None:
    if p["min_snr_db"] > p["max_snr_db"]:
        return f"min_snr_db ({p['min_snr_db']}) is above max_snr_db ({p['max_snr_db']})"
    if not p["colors"]:
        return f"colors lists no colour; accepted: {', '.join(COLORS)}"
    for color in p["colors"]:
        if color not in COLORS:
            return f"colors: unknown colour {color!r}{did_you_mean(color, COLORS)}; accepted: {', '.join(COLORS)}"
    return None


def reverb(x: torch.Tensor, draw: Draw, p: Mapping[str, Any], rate: int) -> torch.Tensor:
    """Convolve with a synthetic room: Gaussian noise under an exponential decay that falls 60 dB in the
    clip's drawn RT60, normalised to unit energy; `mix` of the wet signal with 1 − mix of the dry. One FFT
    convolution for the batch, the impulse response as long as the longest RT60 (or the clip)."""
    n, length = x.shape
    taps = min(max(1, round(p["max_rt60"] * rate)), length)
    rt60 = _column(draw.uniform(n, p["min_rt60"], p["max_rt60"], x.device))
    t = torch.arange(taps, device=x.device) / rate
    ir = draw.normal((n, taps), x.device) * torch.exp(-math.log(1000.0) * t / rt60)
    ir = ir / ir.pow(2).sum(1, keepdim=True).sqrt().clamp_min(1e-12)
    size = length + taps - 1
    wet = torch.fft.irfft(torch.fft.rfft(x, n=size) * torch.fft.rfft(ir, n=size), n=size)[:, :length]
    return (1 - p["mix"]) * x + p["mix"] * wet


def _rt60_order(p: Mapping[str, Any]) -> str | None:
    if p["min_rt60"] > p["max_rt60"]:
        return f"min_rt60 ({p['min_rt60']}) is above max_rt60 ({p['max_rt60']})"
    return None


AUGMENTATIONS.add("noise", AugmentSpec(
    {"min_snr_db": Field(float, 30.0), "max_snr_db": Field(float, 30.0),
     "colors": Field(list, ["white"], item=str)}, noise, "wave",
    "add noise of a colour drawn per clip from `colors` (white, pink, brown, blue, violet, uniform, sine, "
    "phase) at an SNR drawn per clip from [min_snr_db, max_snr_db]", check=_noise_check,
))
AUGMENTATIONS.add("reverb", AugmentSpec(
    {"min_rt60": Field(float, 0.2, low=0.01), "max_rt60": Field(float, 1.0, low=0.01),
     "mix": Field(float, 0.5, low=0.0, high=1.0)}, reverb, "wave",
    "convolve with a synthetic room impulse response (decaying noise, RT60 drawn from [min_rt60, max_rt60] s), "
    "mix of wet with 1 − mix of dry; the slowest entry", check=_rt60_order, slow=True,
))
