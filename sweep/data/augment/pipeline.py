"""What a config's `augment` section does to each training batch: the chain of augmentations, each with its
own probability, and the label-mixing batch augmentations.

Two ways to ask, one engine. The original keys (`strength`, `specaugment`, `waveform`, `mixup`) are presets:
`waveform: true` is gain, polarity, shift, a 0.1 s mask and 30 dB noise, each at p = strength / 2 (the EAT
rate at strength 1); `specaugment` is `n_masks` frequency and time masks up to `freq_mask`/`time_mask` of the
axis at strength 1. `augment.chain` lists entries by name with their own `p` and keys (the survey pipeline's
and EAT's lists). Waveform entries run before the features, spectrogram entries after; each in list order.

`augment.mix` names label-mixing augmentations (mixup, timemix, freqmix, phmix); with probability `mix_ratio`
a batch after epoch `epoch_mix` is mixed by one of them, picked at random. They replace the classic `mixup`
(a Beta(α, α) blend of the model's input) when given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sweep.config.typed import typed
from sweep.data.augment.registry import AUGMENTATIONS, MIXES, AugmentSpec, Draw
from sweep.data.features import input_kind
from sweep.schema import ConfigError, Field, check_fields

P = Field(float, 0.5, low=0.0, high=1.0)  # every chain entry's probability of hitting an example


@dataclass(frozen=True)
class Step:
    """One augmentation as the trainer runs it: `params` fixed, or `sized` from the batch's shape (a preset's
    masks are a fraction of the axis)."""

    spec: AugmentSpec
    p: float
    params: Mapping[str, Any]
    sized: Callable[[torch.Size], Mapping[str, Any]] | None = None


def chain(config: Mapping[str, Any]) -> list[tuple[str, AugmentSpec, dict[str, Any]]]:
    """`augment.chain` checked: (name, entry, its params with `p`, defaults filled) for each entry; a
    ConfigError names the entry's dotted key and what is accepted."""
    out = []
    for i, item in enumerate(typed(config).augment.chain):
        key = f"augment.chain.{i}"
        if isinstance(item, str):
            item = {item: None}
        if not isinstance(item, Mapping) or len(item) != 1:
            raise ConfigError(
                f"an entry is one augmentation: a name, or `name: {{p: …, keys}}`, got {item!r}; "
                f"accepted names: {', '.join(AUGMENTATIONS)}", key=key,
            )
        (name, given), = item.items()
        try:
            spec = AUGMENTATIONS[name]
        except ConfigError as exc:
            raise ConfigError(exc.detail, key=key) from None
        if given is None:
            given = {}
        if not isinstance(given, Mapping):
            raise ConfigError(f"the keys of {name} are a mapping (p, {', '.join(spec.params)}), got {given!r}", key=key)
        given = {k: list(v) if isinstance(v, tuple) else v for k, v in given.items()}  # lists come frozen
        try:
            params = check_fields({"p": P, **spec.params}, given, key, name)
        except ConfigError as exc:
            raise ConfigError(exc.detail, key=f"{key}.{name}.{exc.key}") from None
        problem = spec.check(params) if spec.check is not None else None
        if problem:
            raise ConfigError(problem, key=f"{key}.{name}")
        out.append((name, spec, params))
    return out


def check(config: Mapping[str, Any]) -> None:
    """The whole section against the model's input: a spectrogram augmentation on a waveform model, or a mix
    the input cannot take, is refused naming the key."""
    kind = "wave" if input_kind(config) == "waveform" else "spec"
    for i, (name, spec, _) in enumerate(chain(config)):
        if spec.domain == "spec" and kind == "wave":
            raise ConfigError(
                f"{name} works on spectrograms and model {typed(config).model.name} reads the waveform; "
                f"waveform augmentations: {', '.join(n for n, s in AUGMENTATIONS.items() if s.domain == 'wave')}",
                key=f"augment.chain.{i}",
            )
    for i, name in enumerate(typed(config).augment.mix):
        try:
            spec = MIXES[name]
        except ConfigError as exc:
            raise ConfigError(exc.detail, key=f"augment.mix.{i}") from None
        if kind not in spec.inputs:
            works = [n for n, s in MIXES.items() if kind in s.inputs]
            raise ConfigError(
                f"{name} mixes {' and '.join(spec.inputs)} input and model {typed(config).model.name} reads "
                f"{'the waveform' if kind == 'wave' else 'a spectrogram'}; accepted here: {', '.join(works)}",
                key=f"augment.mix.{i}",
            )


def needs_waveform(config: Mapping[str, Any]) -> bool:
    """Whether each batch's audio must be augmented before its features (so none can be precomputed)."""
    a = typed(config).augment
    return (a.waveform and a.strength > 0) or any(spec.domain == "wave" for _, spec, _ in chain(config))


def _defaults(name: str) -> dict[str, Any]:
    return {key: field.default for key, field in AUGMENTATIONS[name].params.items()}


def _steps(config: Mapping[str, Any]) -> list[Step]:
    a = typed(config).augment
    s = a.strength
    steps = []
    if a.waveform and s > 0:
        preset = (("gain", {"low": 0.5, "high": 1.3}), ("polarity", {}), ("shift", {"max_fraction": 0.1}),
                  ("mask", {"seconds": 0.1}), ("noise", {"min_snr_db": 30.0, "max_snr_db": 30.0}))
        steps += [Step(AUGMENTATIONS[name], s / 2, {**_defaults(name), **params}) for name, params in preset]
    if a.specaugment and a.n_masks and s > 0:
        steps.append(Step(AUGMENTATIONS["freq_masking"], 1.0, {}, lambda shape: {
            "fmp": int(s * a.freq_mask * shape[2]), "num": a.n_masks}))
        steps.append(Step(AUGMENTATIONS["time_masking"], 1.0, {}, lambda shape: {
            "tmp": int(s * a.time_mask * shape[3]), "num": a.n_masks}))
    steps += [Step(spec, params["p"], params) for _, spec, params in chain(config)]
    return steps


class Augment:
    """Batched, on-device augmentation of one training run.

    Its random numbers come from a `Draw` reseeded at every epoch from (seed, epoch), so a trial resumed from a
    checkpoint draws the same masks and mixes as one that never stopped.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        cfg = typed(config)
        a = cfg.augment
        steps = _steps(config)
        self.wave_steps = [s for s in steps if s.spec.domain == "wave"]
        self.spec_steps = [s for s in steps if s.spec.domain == "spec"]
        self.mixes = [MIXES[name] for name in a.mix]
        self.mix_ratio, self.epoch_mix = a.mix_ratio, a.epoch_mix
        self.alpha = a.strength * a.mixup_alpha if a.mixup and not self.mixes else 0.0
        self.rate = cfg.data.sample_rate
        self.reseed(0)

    def reseed(self, seed: int) -> None:
        self.draw = Draw(seed)
        self.rng = np.random.default_rng(seed)

    def wave(self, x: torch.Tensor) -> torch.Tensor:
        """The waveform steps on a batch of clips [B, samples]."""
        return self._run(self.wave_steps, x)

    def spec(self, x: torch.Tensor) -> torch.Tensor:
        """The spectrogram steps on a batch of model inputs [B, 1, bins, frames] (raw waveforms pass)."""
        return self._run(self.spec_steps, x) if x.dim() == 4 else x

    def _run(self, steps: list[Step], x: torch.Tensor) -> torch.Tensor:
        """The steps in order, each on the examples it hits; the caller's batch is copied once, not per step."""
        given = x
        for step in steps:
            hit = self.draw.hits(len(x), step.p, x.device)
            if hit is None:
                continue
            params = step.sized(x.shape) if step.sized is not None else step.params
            if x is given:
                x = x.clone()
            x[hit] = step.spec.apply(x[hit], self.draw, params, self.rate).to(x.dtype)
        return x

    def mix(self, x: torch.Tensor, y: torch.Tensor, n_classes: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix the batch (or not) and return it with its soft targets [B, n_classes]: an unmixed example's is
        one-hot, a mixed one's holds λ of its label and 1 − λ of its partner's."""
        target = torch.nn.functional.one_hot(y, n_classes).float()
        if self.mixes:
            if epoch <= self.epoch_mix or self.draw.chance() >= self.mix_ratio:
                return x, target
            spec = self.mixes[int(self.draw.integers(1, 0, len(self.mixes), torch.device("cpu")))]
            perm = self.draw.permutation(len(x), x.device)
            x, lam = spec.apply(x, perm, self.draw, self.rate)
            lam = lam.view(-1, 1).to(target.device)
            return x, lam * target + (1 - lam) * target[perm]
        if self.alpha <= 0:
            return x, target
        lam = float(self.rng.beta(self.alpha, self.alpha))
        lam = max(lam, 1 - lam)
        perm = self.draw.permutation(len(x), x.device)
        return lam * x + (1 - lam) * x[perm], lam * target + (1 - lam) * target[perm]
