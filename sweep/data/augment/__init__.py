"""Augmentation on the training device: the chain of per-example augmentations (`wave`, `spec`), the
label-mixing batch augmentations (`mix`), each a registry entry, and `Augment`, which runs a config's.

Importing this package registers every entry.
"""

from sweep.data.augment import mix, noise, spec, wave  # noqa: F401  (each registers itself)
from sweep.data.augment.pipeline import Augment, check, needs_waveform
from sweep.data.augment.registry import AUGMENTATIONS, MIXES, AugmentSpec, Draw, MixSpec

__all__ = ["AUGMENTATIONS", "MIXES", "Augment", "AugmentSpec", "Draw", "MixSpec", "check", "needs_waveform"]
