"""The augmentation registries: a name → entry, one file per domain (`wave`, `spec`, `mix`), and `Draw`, the
seeded source of every random number an augmentation uses.

An entry of `augment.chain` works on a batch: the trainer picks the examples it hits (each with the entry's
probability `p`) and calls `apply` once on just those, so an augmentation is one batched call on the
training device, never a loop over clips. A mix (`augment.mix`) takes the whole batch and a partner for
each example, and says how much of each label the mixed example keeps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from sweep.schema import Field, Registry


class Draw:
    """Random numbers for one epoch of augmentation, from (seed, epoch) so a resumed trial draws the same.

    Small draws (one number per example) come from a CPU generator and are moved to the device, so they are
    the same on every device; large ones (noise the size of the batch) come from a generator on the device,
    which is fast on a GPU and repeatable on the same kind of device.

    Nothing here makes the host wait for the device: a small draw goes to the device through pinned memory
    without blocking (a plain `.to(cuda)` waits for the stream, once per call: on an H200, EAT's chain did 1.5 ms
    of arithmetic in its 6 ms a batch, and these waits are where the rest went), and `hits` picks an entry's
    examples on the CPU.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.cpu = torch.Generator().manual_seed(seed)
        self._on: dict[torch.device, torch.Generator] = {}

    def uniform(self, n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
        """[n] numbers in [low, high)."""
        return on_device(low + (high - low) * torch.rand(n, generator=self.cpu), device)

    def integers(self, n: int, low: int, high: int, device: torch.device) -> torch.Tensor:
        """[n] integers in [low, high)."""
        return on_device(torch.randint(low, high, (n,), generator=self.cpu), device)

    def chance(self) -> float:
        """One number in [0, 1): a decision for the whole batch."""
        return float(torch.rand((), generator=self.cpu))

    def permutation(self, n: int, device: torch.device) -> torch.Tensor:
        return on_device(torch.randperm(n, generator=self.cpu), device)

    def hits(self, n: int, p: float, device: torch.device) -> torch.Tensor | None:
        """The indices of the examples an entry of probability `p` hits, each with probability p, on `device`;
        None when it hits none. Chosen on the CPU, so the host never waits for the device to count them."""
        hit = (torch.rand(n, generator=self.cpu) < p).nonzero().squeeze(1)
        return on_device(hit, device) if len(hit) else None

    def normal(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """Standard normal noise of `shape`, drawn on `device`."""
        return torch.randn(shape, generator=self._generator(device), device=device)

    def rand(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """Uniform [0, 1) noise of `shape`, drawn on `device`."""
        return torch.rand(shape, generator=self._generator(device), device=device)

    def _generator(self, device: torch.device) -> torch.Generator:
        device = torch.device(device)
        if device not in self._on:
            self._on[device] = torch.Generator(device=device).manual_seed(self.seed + 1)
        return self._on[device]


def on_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor on `device`, queued behind the device's work instead of waiting for it: pinned, then
    copied without blocking (the pinned block is not reused before the copy ends: PyTorch's host allocator)."""
    device = torch.device(device)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


# apply(the hit examples' input, draw, the entry's params, sample rate) → the same examples augmented.
# Waveform entries get [n, samples]; spectrogram entries [n, 1, bins, frames]. Nothing else is passed.
Apply = Callable[[torch.Tensor, Draw, Mapping[str, Any], int], torch.Tensor]
# check(params) → None, or what is wrong with a combination of the entry's params (min above max, …)
Check = Callable[[Mapping[str, Any]], str | None]


@dataclass(frozen=True)
class AugmentSpec:
    """One entry of `augment.chain`: its params (beside `p`), the batched function, and its input domain."""

    params: Mapping[str, Field]
    apply: Apply
    domain: str  # "wave": before the features, on the clip's samples; "spec": on the model's spectrogram
    doc: str
    check: Check | None = None
    slow: bool = False  # said in the docs: worth its cost only where the recipe asks for it


# mix(batch input, partner index per example, draw, sample rate) → (mixed input, λ [B]): the mixed example
# keeps λ of its own label and 1 − λ of its partner's. Waveform mixes get [B, samples]; others [B, 1, bins, frames].
Mix = Callable[[torch.Tensor, torch.Tensor, Draw, int], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class MixSpec:
    """One name of `augment.mix`: a label-mixing batch augmentation and the inputs it can mix."""

    apply: Mix
    inputs: tuple[str, ...]  # "wave", "spec": the model inputs it works on
    doc: str
    params: Mapping[str, Field] = field(default_factory=dict)  # the registry's shape; a mix has no keys of its own


AUGMENTATIONS: Registry[AugmentSpec] = Registry("augmentation")
MIXES: Registry[MixSpec] = Registry("mix")
