"""Speech Commands (Warden 2018): one-second spoken words, one folder per word, in its official layout.

ROOT/{word}/{speaker}_nohash_{n}.wav, with ROOT/validation_list.txt and ROOT/testing_list.txt naming the
validation and test files (every other file is training data); ROOT/_background_noise_/ holds long noise
recordings, not a class. Fold 1 is training, 2 validation, 3 testing. A speaker is one group, as in the
official lists, so no voice is heard on both sides of a split.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sweep.data.audio import FILE_PARAMS, read_files, read_text, select_classes, visible
from sweep.data.registry import DATASETS, DataError, DatasetSpec, Index, Item, data_root

LISTS = {2: "validation_list.txt", 3: "testing_list.txt"}
_SHOWN = 3


def speaker(file_name: str) -> str:
    """The speaker id: the file name before `_nohash_` (the whole stem for a file not named that way)."""
    return file_name.split("_nohash_")[0] if "_nohash_" in file_name else os.path.splitext(file_name)[0]


def _listed(root: os.PathLike) -> dict[str, int]:
    """Relative path → fold, from the two list files."""
    paths = {fold: os.path.join(root, name) for fold, name in LISTS.items()}
    missing = [p for p in paths.values() if not os.path.isfile(p)]
    if missing:
        raise DataError(
            f"speechcommands: {', '.join(missing)} not found; data.root must be the Speech Commands folder "
            f"that holds one folder per word, {' and '.join(LISTS.values())}"
        )
    fold_of: dict[str, int] = {}
    for fold, path in paths.items():
        for line_no, line in enumerate(read_text(Path(path)).split("\n"), 1):
            rel = line.strip().replace("\\", "/")
            if rel and fold_of.setdefault(rel, fold) != fold:
                raise DataError(f"{path}, line {line_no}: {rel} is also in {LISTS[fold_of[rel]]}")
    return fold_of


def index(config: Mapping[str, Any]) -> Index:
    """Every word folder's wav files; the lists give their folds."""
    root = data_root(config)
    fold_of = _listed(root)
    words = sorted(e.name for e in os.scandir(root) if e.is_dir() and visible(e.name))
    if not words:
        raise DataError(f"speechcommands: {root} holds no word folders (one folder per class is expected)")
    items, found = [], set()
    for label, word in enumerate(words):
        for name in sorted(os.listdir(root / word)):
            if name.lower().endswith(".wav") and visible(name, folder=False):
                rel = f"{word}/{name}"
                found.add(rel)
                items.append(Item(str(root / word / name), label, fold_of.get(rel, 1), speaker(name)))
    absent = [rel for rel in fold_of if rel not in found]
    if absent:
        shown = ", ".join(f"{rel} ({LISTS[fold_of[rel]]})" for rel in absent[:_SHOWN])
        more = f" and {len(absent) - _SHOWN} more" if len(absent) > _SHOWN else ""
        raise DataError(f"speechcommands: {len(absent)} listed file(s) are not under {root}: {shown}{more}")
    return select_classes(config, words, items)


DATASETS.add(
    "speechcommands",
    DatasetSpec(
        dict(FILE_PARAMS), {"train": [1], "val": [2], "test": [3]}, index, read_files, root_env="SPEECHCOMMANDS_ROOT"
    ),
)
