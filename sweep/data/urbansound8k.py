"""UrbanSound8K (Salamon et al. 2014): 8732 clips of up to 4 s, 10 classes, 10 folds, in its official layout.

ROOT/metadata/UrbanSound8K.csv lists every slice and ROOT/audio/fold{K}/ holds its file. Slices cut from
one Freesound recording (`fsID`) are one group: the official folds keep them together, and so does a
fold shared by val and test here. The files come in many formats and rates; `read_files` handles them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sweep.data.audio import FILE_PARAMS, csv_index, read_csv, read_files, value
from sweep.data.registry import DATASETS, DatasetSpec, Index, data_root

COLUMNS = ("slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class")

FOLDS = {"train": [1, 2, 3, 4, 5, 6, 7, 8], "val": [9], "test": [10]}


def index(config: Mapping[str, Any]) -> Index:
    """The slices UrbanSound8K.csv lists; labels follow `classID`."""
    root = data_root(config)
    path = root / "metadata" / "UrbanSound8K.csv"
    rows = read_csv(path, COLUMNS, hint="data.root must be the UrbanSound8K folder that holds metadata/ and audio/")

    def file(line: int, row: Mapping[str, str]) -> str:
        fold = value(path, line, row, "fold", int)
        return str(root / "audio" / f"fold{fold}" / value(path, line, row, "slice_file_name"))

    return csv_index(config, path, rows, label="classID", name="class", group="fsID", file=file)


DATASETS.add(
    "urbansound8k",
    DatasetSpec(dict(FILE_PARAMS), FOLDS, index, read_files, root_env="URBANSOUND8K_ROOT"),
)
