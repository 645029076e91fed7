"""The clips of a split, chosen once for every dataset, so the rules hold everywhere: a split loads only its own
folds (a search never reads a test-fold file), and a fold named in both `val` and `test` is divided between
them by recording source, never splitting one source.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sweep.config.typed import typed
from sweep.data.audio import bad_files
from sweep.data.cache import cached_read
from sweep.data.registry import DATASETS, DataError, Item


@dataclass
class Clips:
    """The clips of one split: zero-padded mono waveforms, their real lengths and labels."""

    waves: torch.Tensor  # float32 [N, samples], each row zero-padded after its `lengths[i]` samples
    lengths: torch.Tensor  # int64 [N]
    labels: torch.Tensor  # int64 [N]
    classes: list[str]
    sample_rate: int
    keys: list[str | int] = field(default_factory=list)  # the item keys, in row order
    skipped: int = 0  # files left out under `on_bad_file: skip`
    entry: Path | None = None  # their cache entry, where features computed from them are kept too

    def __len__(self) -> int:
        return len(self.labels)


def split_items(items: Sequence[Item], folds: Mapping[str, Sequence[int]], split: str, seed: int) -> list[Item]:
    """The items of one split. A fold in both `val` and `test` goes half to each, by hashed source group."""
    mine = set(folds[split])
    shared = set(folds["val"]) & set(folds["test"]) if split in ("val", "test") else set()
    picked = [it for it in items if it.fold in mine]
    if not shared:
        return picked
    groups = sorted({it.group for it in picked if it.fold in shared}, key=lambda g: _hash(seed, g))
    first_half = set(groups[: (len(groups) + 1) // 2])
    keep_first = split == "val"
    return [it for it in picked if it.fold not in shared or (it.group in first_half) == keep_first]


def _hash(seed: int, text: str) -> str:
    return hashlib.sha1(f"{seed}:{text}".encode()).hexdigest()


SHOWN_BAD = 10  # bad files named by path in one message; the rest are counted


def check_files(
    config: Mapping[str, Any], decoded: Mapping[str, Sequence[Item]], listed: Mapping[str, Sequence[Item]]
) -> tuple[list[str], list[str]]:
    """(problems, warnings) about the files a run will decode (`decoded`: their headers are read) and those it
    only names (`listed`: present and non-empty, never opened, which is how a search checks the test fold);
    each maps a group's name (`split train`) to its items.

    A bad file is a problem, or under `data.on_bad_file: skip` a warning that it will be left out, unless every
    file of its group is bad: the reader would then have nothing to load. Generated datasets have no files.
    """
    cfg = typed(config)
    skip = cfg.data.get("on_bad_file", "error") == "skip"
    problems, warnings = [], []
    for groups, header in ((decoded, True), (listed, False)):
        for group, items in groups.items():
            paths = [it.key for it in items if isinstance(it.key, str)]
            bad = bad_files(paths, header)
            if not bad:
                continue
            shown = "; ".join(f"{path}: {why}" for path, why in bad[:SHOWN_BAD])
            more = f"; and {len(bad) - SHOWN_BAD} more" if len(bad) > SHOWN_BAD else ""
            what = f"{len(bad)} of the {len(paths)} files of {group}"
            if not header:
                what += " (checked for presence and size only: a search never opens them)"
            if skip and len(bad) < len(paths):
                warnings.append(f"{what} will be left out (data.on_bad_file: skip): {shown}{more}")
            else:
                hint = "" if skip else " (set data.on_bad_file: skip to leave unreadable files out)"
                problems.append(f"{what} cannot be read: {shown}{more}{hint}")
    return problems, warnings


def load_split(config: Mapping[str, Any], split: str) -> Clips:
    """The clips of one split (`train`, `val` or `test`) as the config's folds define it."""
    cfg = typed(config)
    data = cfg.data
    spec = DATASETS[data.dataset]
    index = spec.index(config)
    items = split_items(index.items, data.folds, split, cfg.data.split_seed)
    if not items:
        raise DataError(
            f"split {split} (folds {data['folds'][split]}) of dataset {data['dataset']} holds no clips; "
            f"the dataset's folds are {sorted({it.fold for it in index.items})}"
        )
    waves, lengths, kept, entry = cached_read(config, spec.read, items)
    return Clips(
        waves=waves,
        lengths=lengths,
        labels=torch.tensor([items[i].label for i in kept], dtype=torch.long),
        classes=index.classes,
        sample_rate=data.sample_rate,
        keys=[items[i].key for i in kept],
        skipped=len(items) - len(kept),
        entry=entry,
    )


def crop(
    clips: Clips, index: torch.Tensor, samples: int, generator: torch.Generator | None, pin: bool = False
) -> torch.Tensor:
    """`samples`-long windows of the clips at `index`: random offsets with a generator, centred without.

    Training sees a different window of a long clip each epoch; evaluation always the centre one.
    Clips shorter than the window keep their zero padding. `pin`: written straight into pinned memory, for a
    copy to the GPU that does not block (pinning afterwards copies the batch once more: 15 MB for EAT's).
    """
    lengths = clips.lengths[index]
    room = (lengths - samples).clamp(min=0)
    if generator is None:
        start = room // 2
    else:
        start = (torch.rand(len(index), generator=generator) * (room + 1).float()).long().clamp(max=room)
    out = torch.empty((len(index), samples), dtype=clips.waves.dtype, pin_memory=pin)
    stored = clips.waves.shape[1]
    if stored < samples:  # every clip is shorter than the window: no room, start 0
        out[:, :stored], out[:, stored:] = clips.waves[index], 0
        return out
    # a slice per clip, read straight from the (memory-mapped) cache: only the window is copied, where a gather
    # copied each whole clip and built an index as large as the batch (4x on a 5 s clip, the EAT path's cost)
    return torch.stack([clips.waves[i, s : s + samples] for i, s in zip(index.tolist(), start.tolist())], out=out)
