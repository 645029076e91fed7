"""The dataset registry and what every dataset declares: its clips (`Index` of `Item`s), how to read them, and
its standard folds.

A dataset only says which clips it has (`index`: label, fold, recording source of each) and how to read a
list of them (`read`); choosing the clips of a split happens once for every dataset, in `sweep.data.splits`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sweep.config.typed import typed
from sweep.schema import Field, Registry


class DataError(ValueError):
    """A dataset problem (missing root, bad metadata, unreadable file), naming the path at fault."""


@dataclass(frozen=True)
class Item:
    """One clip in a dataset's index."""

    key: str | int  # a file path for datasets on disk; a clip number for generated ones
    label: int
    fold: int
    group: str  # its recording source (ESC-50 src_file, UrbanSound8K fsID, a speaker): never split apart


@dataclass(frozen=True)
class Index:
    classes: list[str]
    items: list[Item]


# read(config, items) → (waves [N, samples] zero-padded, lengths [N], indices of the items kept)
Reader = Callable[[Mapping[str, Any], Sequence[Item]], tuple[torch.Tensor, torch.Tensor, list[int]]]


@dataclass(frozen=True)
class DatasetSpec:
    params: dict[str, Field]
    folds: dict[str, list[int]]  # the dataset's standard train/val/test protocol, used for folds not given
    index: Callable[[Mapping[str, Any]], Index]
    read: Reader
    root_env: str | None = None  # environment variable naming the root when `data.root` is null
    # what identifies the data beyond its item keys, for a dataset whose keys are not files (`hf`: its arrow
    # files' sizes and times), so that the cache never serves clips of data that has changed since
    fingerprint: Callable[[Mapping[str, Any]], Any] | None = None


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def data_root(config: Mapping[str, Any]) -> Path:
    """`data.root` with `${VAR}` expanded, or the dataset's environment variable; it must be a directory."""
    cfg = typed(config)
    data = cfg.data
    spec = DATASETS[data.dataset]
    raw = data.root
    if raw is None:
        if spec.root_env is None or not os.environ.get(spec.root_env):
            hint = f" or export {spec.root_env}" if spec.root_env else ""
            raise DataError(f"data.root is not set for dataset {data['dataset']}: set data.root{hint}")
        raw = os.environ[spec.root_env]

    def expand(match: re.Match) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise DataError(f"data.root {raw!r} uses ${{{name}}}, which is not set in the environment")
        return os.environ[name]

    root = Path(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", expand, raw)).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset root {root} does not exist (data.root: {raw!r}, dataset {data['dataset']})")
    return root
