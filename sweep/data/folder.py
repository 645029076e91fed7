"""Any collection of audio files: one folder per class, or a CSV of `path,label[,fold]`.

Without folds, each file's fold is a hash of its path relative to the root, so the split is the same on
every machine and run, and adding files never moves the ones already there to another fold. Hidden files
(`.x`) and folders (`.x`, `_x`) are not data.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sweep.config.typed import typed
from sweep.data.audio import AUDIO_EXTENSIONS, FILE_PARAMS, read_csv, read_files, select_classes, value, visible
from sweep.data.registry import DATASETS, DataError, DatasetSpec, Index, Item, data_root
from sweep.schema import Field

PARAMS = {**FILE_PARAMS, "csv": Field(str, None, nullable=True), "n_folds": Field(int, 5, low=2)}

# (path, path relative to the root, class name, fold or None)
Entry = tuple[Path, str, str, int | None]


def hashed_fold(relative: str, n_folds: int) -> int:
    """1..n_folds from the file's relative path alone."""
    return 1 + int(hashlib.sha1(relative.encode()).hexdigest(), 16) % n_folds


def _audio(path: Path, top: Path) -> bool:
    """An audio file, outside hidden folders and not a hidden file itself."""
    *folders, name = path.relative_to(top).parts
    return (
        path.suffix.lower() in AUDIO_EXTENSIONS
        and visible(name, folder=False)
        and all(visible(f) for f in folders)
        and path.is_file()
    )


def _from_folders(root: Path) -> list[Entry]:
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and visible(e.name))
    if not classes:
        raise DataError(f"folder dataset: {root} holds no class folders (or set data.csv to a path,label CSV)")
    entries: list[Entry] = []
    for name in classes:
        files = sorted(p for p in (root / name).rglob("*") if _audio(p, root / name))
        if not files:
            raise DataError(f"folder dataset: class folder {root / name} holds no {'/'.join(AUDIO_EXTENSIONS)} files")
        entries += [(p, p.relative_to(root).as_posix(), name, None) for p in files]
    return entries


def _relative(path: Path, root: Path) -> str | None:
    """`path` relative to `root` (the same however either is written), or None if outside it."""
    path, root = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else None


def _from_csv(root: Path, csv_path: str) -> list[Entry]:
    path = Path(csv_path).expanduser()
    path = path if path.is_absolute() else root / path
    rows = read_csv(path, ("path", "label"), optional=("fold",), hint=f"data.csv is {csv_path!r}")
    entries: list[Entry] = []
    for line, row in rows:
        given = Path(os.path.normpath(value(path, line, row, "path")))
        full = given if given.is_absolute() else root / given
        relative = _relative(full, root) or given.as_posix()
        fold = value(path, line, row, "fold", int) if "fold" in row else None
        entries.append((full, relative, value(path, line, row, "label"), fold))
    return entries


def index(config: Mapping[str, Any]) -> Index:
    """Classes are sorted names (folders or CSV labels); folds come from the CSV or the path hash."""
    cfg = typed(config)
    root = data_root(config)
    data = cfg.data
    entries = _from_folders(root) if data.csv is None else _from_csv(root, data.csv)
    classes = sorted({name for _, _, name, _ in entries})
    label = {name: i for i, name in enumerate(classes)}
    items = [
        Item(str(full), label[name], fold if fold is not None else hashed_fold(rel, data.n_folds), rel)
        for full, rel, name, fold in entries
    ]
    return select_classes(config, classes, items)


DATASETS.add("folder", DatasetSpec(PARAMS, {"train": [1, 2, 3], "val": [4], "test": [5]}, index, read_files))
