"""Label-mixing batch augmentations of `augment.mix`, EAT's four: each mixes every example of the batch with
a partner and says how much of each label the result keeps.

Written after "End-to-End Audio Strikes Back" (EAT) and its reference code (Alibaba-MIIL/AudioClassfication,
datasets/batch_augs.py), batched: a choice made per example there (which end of the clip, which band) is a
mask here, so each mix is a few tensor operations on the training device and no loop over the batch. Every
random number comes from the epoch's `Draw`, so a resumed trial mixes as one that never stopped.
Waveforms arrive as [B, samples], spectrograms as [B, 1, bins, frames].
"""

from __future__ import annotations

import torch

from sweep.data.augment.registry import MIXES, Draw, MixSpec

STFT_SECONDS = 0.016  # the shortest window of freqmix and phmix: 256 samples at 16 kHz, 512 at 22.05 kHz
STFT_SIZES = 3  # that window and two doublings: EAT's 256/512/1024 at 16 kHz, 512/1024/2048 at 22.05 kHz


def _per_example(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[B] values shaped to broadcast over x's example axes."""
    return values.view(-1, *([1] * (x.dim() - 1)))


def _segment(
    x: torch.Tensor, partner: torch.Tensor, draw: Draw, lam: torch.Tensor, dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace the start or the end (drawn per example) of axis `dim`, a share 1 − λ of it, with the partner's;
    returns the mix and the share each example kept (λ rounded to whole steps of the axis)."""
    n = x.shape[dim]
    replaced = ((1 - lam) * n).long()  # [B]
    from_end = draw.uniform(len(x), 0.0, 1.0, x.device) < 0.5
    pos = torch.arange(n, device=x.device).view([n if i == dim else 1 for i in range(x.dim())])
    cut = _per_example(replaced, x)
    take = torch.where(_per_example(from_end, x), pos >= n - cut, pos < cut)
    return torch.where(take, x[partner], x), 1 - replaced.to(lam.dtype) / n


def _window(x: torch.Tensor, draw: Draw, rate: int) -> int:
    """One STFT window length for the batch, from STFT_SIZES powers of two from STFT_SECONDS at `rate` (those
    no longer than the clip; the shortest always fits, data.clip_seconds being at least 0.05 s)."""
    shortest = 1 << max(int(STFT_SECONDS * rate) - 1, 1).bit_length()
    sizes = [shortest << i for i in range(STFT_SIZES) if shortest << i <= x.shape[-1]]
    return sizes[int(draw.integers(1, 0, len(sizes), torch.device("cpu")))]


def _stft(x: torch.Tensor, win: int) -> tuple[torch.Tensor, dict]:
    """The complex STFT [B, bins, frames] with a Hann window and hop win / 4, and the keys to invert it."""
    keys = {"n_fft": win, "hop_length": win // 4, "window": torch.hann_window(win, device=x.device)}
    return torch.stft(x.float(), return_complex=True, **keys), keys


def _istft(spec: torch.Tensor, keys: dict, like: torch.Tensor) -> torch.Tensor:
    """torch.istft's inverse of `_stft` (centred, onesided, `like`'s length) by overlap-add, without its check
    that the window's overlap never vanishes: that check reads a number back from the device, so each mixed
    batch would wait for the GPU. A Hann window at hop win / 4 always overlaps, so the check can only pass."""
    win, hop, window = keys["n_fft"], keys["hop_length"], keys["window"]
    frames = torch.fft.irfft(spec, n=win, dim=1) * window.view(1, -1, 1)  # [B, win, frames]
    n = frames.shape[-1]
    span = {"output_size": (1, win + hop * (n - 1)), "kernel_size": (1, win), "stride": (1, hop)}
    wave = torch.nn.functional.fold(frames, **span).flatten(1)  # the frames added where they overlap
    envelope = torch.nn.functional.fold(window.pow(2).view(1, -1, 1).expand(1, win, n), **span).flatten(1)
    length = like.shape[-1]
    out = (wave / envelope)[:, win // 2:win // 2 + length]  # centred: the first frame's middle is sample 0
    return torch.nn.functional.pad(out, (0, length - out.shape[-1])).to(like.dtype)


def mixup(x: torch.Tensor, partner: torch.Tensor, draw: Draw, rate: int) -> tuple[torch.Tensor, torch.Tensor]:
    """EAT's mixup, λ per example from [0.1, 1]. On waveforms it is gain-aware: the louder clip counts for less,
    p = 1 / (1 + 10^((G1 − G2)/20) · (1 − λ)/λ) with G a clip's energy in dB, and the mix is rescaled to keep
    its level, (x·p + x2·(1 − p)) / sqrt(p² + (1 − p)²); the target keeps p. On spectrograms a plain λ blend."""
    lam = draw.uniform(len(x), 0.1, 1.0, x.device)
    if x.dim() != 2:
        w = _per_example(lam, x)
        return w * x + (1 - w) * x[partner], lam
    gain = 10 * torch.log10(x.float().pow(2).mean(1).clamp(min=1e-5))
    p = 1 / (1 + 10 ** ((gain - gain[partner]) / 20) * (1 - lam) / lam)
    w = _per_example(p, x)
    return ((x * w + x[partner] * (1 - w)) / torch.sqrt(w**2 + (1 - w) ** 2)).to(x.dtype), p


def timemix(x: torch.Tensor, partner: torch.Tensor, draw: Draw, rate: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace the start or the end of each clip (or spectrogram's frames) with its partner's, a share 1 − λ
    with λ from [0.5, 1]."""
    return _segment(x, partner, draw, draw.uniform(len(x), 0.5, 1.0, x.device), x.dim() - 1)


def freqmix(x: torch.Tensor, partner: torch.Tensor, draw: Draw, rate: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace the low or the high band of each example, a share 1 − λ of the bins with λ from [0.5, 1], with its
    partner's: of a spectrogram's bins, or of a waveform's STFT (a window drawn per batch), inverted back."""
    lam = draw.uniform(len(x), 0.5, 1.0, x.device)
    if x.dim() != 2:
        return _segment(x, partner, draw, lam, 2)
    spec, keys = _stft(x, _window(x, draw, rate))
    mixed, kept = _segment(spec, partner, draw, lam, 1)
    return _istft(mixed, keys, x), kept


def phmix(x: torch.Tensor, partner: torch.Tensor, draw: Draw, rate: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep each clip's STFT magnitude and give it the phase λ · own + (1 − λ) · partner's, λ from [0, 1]; the
    target keeps 0.5 + 0.5 λ of its own label (the sound is still mostly its own), as in EAT."""
    lam = draw.uniform(len(x), 0.0, 1.0, x.device)
    spec, keys = _stft(x, _window(x, draw, rate))
    return _istft(phase_blend(spec, partner, lam), keys, x), 0.5 + 0.5 * lam


def phase_blend(spec: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """A complex STFT [B, bins, frames] with its own magnitude and the phase λ · own + (1 − λ) · partner's.

    The result is generally not the STFT of any signal, so the clip iSTFT makes of it has a magnitude only
    near this one (overlapping frames with unrelated phases partly cancel): EAT's phmix, as published."""
    phase = spec.angle()
    w = lam.view(-1, 1, 1)
    return torch.polar(spec.abs(), w * phase + (1 - w) * phase[partner])


MIXES.add("mixup", MixSpec(mixup, ("wave", "spec"), (
    "blend each example with its partner, λ from [0.1, 1]; on waveforms EAT's gain-aware mix (the louder clip "
    "weighs less, the mix keeps its level) and the target keeps that weight")))
MIXES.add("timemix", MixSpec(timemix, ("wave", "spec"), (
    "replace the start or the end (per example) of the clip, or of the spectrogram's frames, with the partner's: "
    "a share 1 − λ, λ from [0.5, 1]")))
MIXES.add("freqmix", MixSpec(freqmix, ("wave", "spec"), (
    "replace the low or the high band, a share 1 − λ of the bins (λ from [0.5, 1]), with the partner's: of the "
    "spectrogram, or of the waveform's STFT (window 16, 32 or 64 ms rounded up to a power of two, per batch)")))
MIXES.add("phmix", MixSpec(phmix, ("wave",), (
    "keep the clip's STFT magnitude, mix its phase λ · own + (1 − λ) · partner's (λ from [0, 1]); the target "
    "keeps 0.5 + 0.5 λ of its own label")))
