"""ESC-50 (Piczak 2015): 2000 five-second clips, 50 classes, 5 folds, in its official layout.

ROOT/meta/esc50.csv lists every clip (filename, fold, target, category, esc10, src_file, take) and
ROOT/audio/ holds the wav files. Clips cut from one source recording (`src_file`) share a fold in the
official protocol; they are one group here, so a fold shared by val and test never splits a recording.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sweep.config.typed import typed
from sweep.data.audio import FILE_PARAMS, csv_index, read_csv, read_files, value
from sweep.data.registry import DATASETS, DatasetSpec, Index, data_root
from sweep.schema import Field

COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")

PARAMS = {**FILE_PARAMS, "esc10": Field(bool, False)}


def index(config: Mapping[str, Any]) -> Index:
    """The clips esc50.csv lists (only the ESC-10 subset with `esc10: true`); labels follow `target`."""
    cfg = typed(config)
    root = data_root(config)
    path = root / "meta" / "esc50.csv"
    rows = read_csv(path, COLUMNS, hint="data.root must be the ESC-50 folder that holds meta/esc50.csv and audio/")
    return csv_index(
        config,
        path,
        rows,
        label="target",
        name="category",
        group="src_file",
        file=lambda line, row: str(root / "audio" / value(path, line, row, "filename")),
        keep=lambda line, row: not cfg.data.esc10 or value(path, line, row, "esc10", bool),
    )


DATASETS.add(
    "esc50",
    DatasetSpec(PARAMS, {"train": [1, 2, 3], "val": [4], "test": [5]}, index, read_files, root_env="ESC50_ROOT"),
)
