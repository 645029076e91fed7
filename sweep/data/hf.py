"""A Hugging Face `datasets` dataset: a folder written by `save_to_disk`, or a dataset id in the local cache.

A job on a compute node has no network, so an id is resolved from the local cache only (`datasets`' offline
mode), never downloaded; a missing one is an error that says where it looked and the command that fetches it
on a login node. Config keys name the audio, label, fold and grouping columns. The index reads only those
small columns; audio is read (as the encoded bytes or the path `Audio(decode=False)` gives, decoded by
`read_audio` like any file) for the rows a split asks for, so a search never decodes a test-fold clip.

Folds: the fold column's integers; else, with several splits loaded, split k (in `data.hf_split` order, or
the dataset's) is fold k; else a hash of each row's group (`hashed_fold`), so one source is never in two folds.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from sweep.config.typed import typed
from sweep.data.audio import FILE_PARAMS, Source, read_audio, select_classes
from sweep.data.folder import hashed_fold
from sweep.data.registry import DATASETS, DataError, DatasetSpec, Index, Item, data_root
from sweep.schema import Field

PARAMS = {
    **FILE_PARAMS,
    "hf_id": Field(str, None, nullable=True),
    "hf_config": Field(str, None, nullable=True),
    "hf_split": Field(list, None, item=str, nullable=True),
    "audio_column": Field(str, "audio"),
    "label_column": Field(str, "label"),
    "fold_column": Field(str, None, nullable=True),
    "group_column": Field(str, None, nullable=True),
    "n_folds": Field(int, 5, low=2),
}

FOLDS = {"train": [1, 2, 3], "val": [4], "test": [5]}


def cache_dir() -> str:
    """The datasets cache an id is looked up in: $HF_DATASETS_CACHE, else $HF_HOME/datasets, else datasets'
    own default (~/.cache/huggingface/datasets), read at each load so a job's exported variable counts."""
    import datasets

    if os.environ.get("HF_DATASETS_CACHE"):
        return os.path.expanduser(os.environ["HF_DATASETS_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "datasets")
    return str(datasets.config.HF_DATASETS_CACHE)


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """`datasets` in offline mode for one load, whatever the environment said when it was imported; its
    "using the latest cached version" notice, which every load of a cached id prints, is left out."""
    import datasets

    before, verbosity = datasets.config.HF_HUB_OFFLINE, datasets.logging.get_verbosity()
    datasets.config.HF_HUB_OFFLINE = True
    datasets.logging.set_verbosity_error()
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = before
        datasets.logging.set_verbosity(verbosity)


def fetch_command(hf_id: str, hf_config: str | None) -> str:
    args = ", ".join(repr(a) for a in (hf_id, hf_config) if a is not None)
    return f'python -c "import datasets; datasets.load_dataset({args})"'


def _where(config: Mapping[str, Any]) -> str:
    data = typed(config).data
    return f"hf dataset {data.hf_id!r}" if data.hf_id else f"hf dataset {data_root(config)}"


def open_splits(config: Mapping[str, Any]) -> dict[str, Any]:
    """Split name → `datasets.Dataset`, the splits `data.hf_split` names (null: all, in the dataset's order)."""
    import datasets

    data = typed(config).data
    if data.hf_id is not None and data.root is not None:
        raise DataError(
            f"hf dataset: data.root ({data.root!r}) and data.hf_id ({data.hf_id!r}) are both set; set one: data.root "
            "for a folder written by save_to_disk, data.hf_id for a dataset id in the local Hugging Face cache"
        )
    if data.hf_id is None and data.root is None:
        raise DataError(
            "hf dataset: set data.root to a folder written by save_to_disk, or data.hf_id to a dataset id in the "
            "local Hugging Face cache"
        )
    if data.hf_id is None:
        root = data_root(config)
        if not any((root / name).is_file() for name in ("dataset_dict.json", "state.json")):
            raise DataError(
                f"data.root {str(root)!r} is not a dataset saved with save_to_disk (it holds neither "
                "dataset_dict.json nor state.json); accepted: the folder Dataset.save_to_disk or "
                "DatasetDict.save_to_disk wrote, or set data.hf_id to a dataset id in the Hugging Face cache"
            )
        loaded = datasets.load_from_disk(str(root))
    else:
        if data.hf_config is None:
            wanted = data.hf_id
        else:
            wanted = f"{data.hf_id} (config {data.hf_config})"
        try:
            with _offline():
                loaded = datasets.load_dataset(data.hf_id, data.hf_config, cache_dir=cache_dir())
        except Exception as exc:  # datasets raises ConnectionError, FileNotFoundError, ValueError, ... offline
            loaded = _cached_copy(data.hf_id, data.hf_config)
            if loaded is None:
                raise DataError(
                    f"data.hf_id: dataset {wanted} is not in the local Hugging Face datasets cache {cache_dir()} "
                    f"(HF_DATASETS_CACHE, else HF_HOME/datasets; jobs never download). Fetch it on a login node "
                    f"with the same HF_DATASETS_CACHE: {fetch_command(data.hf_id, data.hf_config)} "
                    f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                ) from None
    splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    if data.hf_split is None:
        return splits
    missing = [s for s in data.hf_split if s not in splits]
    if missing:
        raise DataError(
            f"data.hf_split: {_where(config)} has no split {', '.join(map(repr, missing))}; "
            f"its splits are: {', '.join(splits)}"
        )
    return {s: splits[s] for s in data.hf_split}


def _cached_copy(hf_id: str, hf_config: str | None) -> Any:
    """The id's prepared copy read straight from the cache's arrow files, or None if the cache has none.

    `load_dataset` takes a lock file inside the cache even to read it, so it fails on a cache a job may not
    write (a shared one, mounted read-only on compute nodes). The copy it prepared on the login node is
    CACHE/NAMESPACE___NAME/CONFIG/VERSION/HASH/ with dataset_info.json and NAME-SPLIT[-k-of-n].arrow files;
    memory-mapping those writes nothing. Of several prepared versions, the newest is read, as `datasets`'
    offline mode does.
    """
    import json

    import datasets

    namespace, _, name = hf_id.rpartition("/")
    snake = datasets.naming.camelcase_to_snakecase(name)
    top = Path(cache_dir()) / (f"{namespace}___{snake}" if namespace else snake) / (hf_config or "default")
    prepared = sorted(top.glob("*/*/dataset_info.json"), key=lambda p: p.stat().st_mtime)
    if not prepared:
        return None
    folder = prepared[-1].parent
    splits = {}
    for split in json.loads(prepared[-1].read_text()).get("splits") or {}:
        shards = sorted(folder.glob(f"*-{split}.arrow")) or sorted(folder.glob(f"*-{split}-*-of-*.arrow"))
        if not shards:
            return None
        splits[split] = datasets.concatenate_datasets([datasets.Dataset.from_file(str(f)) for f in shards])
    return datasets.DatasetDict(splits) if splits else None


def _column(config: Mapping[str, Any], key: str, split: str, dataset: Any) -> str:
    name = typed(config).data[key]
    if name not in dataset.column_names:
        raise DataError(
            f"data.{key}: {_where(config)} (split {split}) has no column {name!r}; "
            f"its columns are: {', '.join(dataset.column_names)}"
        )
    return name


def _classes(config: Mapping[str, Any], splits: Mapping[str, Any]) -> tuple[list[str], dict[Any, int]]:
    """The class names and value → label: a ClassLabel's names in its order; else the sorted distinct values
    of an integer or string column (integers named by their decimal text)."""
    import datasets

    data = typed(config).data
    first = next(iter(splits.values()))
    feature = first.features[data.label_column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names), {i: i for i in range(len(feature.names))}
    dtype = getattr(feature, "dtype", None)
    if not isinstance(feature, datasets.Value) or not (dtype.startswith(("int", "uint")) or dtype == "string"):
        raise DataError(
            f"data.label_column: column {data.label_column!r} of {_where(config)} is {feature}; accepted: "
            "a ClassLabel column (its names become the classes), or an integer or string column"
        )
    values = sorted({v for ds in splits.values() for v in ds.unique(data.label_column)})
    return [str(v) for v in values], {v: i for i, v in enumerate(values)}


def _check_audio(config: Mapping[str, Any], split: str, dataset: Any) -> None:
    import datasets

    name = _column(config, "audio_column", split, dataset)
    feature = dataset.features[name]
    if not isinstance(feature, datasets.Audio):
        audio = [c for c, f in dataset.features.items() if isinstance(f, datasets.Audio)]
        raise DataError(
            f"data.audio_column: column {name!r} of {_where(config)} is {feature}, not an Audio column; "
            f"its Audio columns are: {', '.join(audio) or 'none'}"
        )


def index(config: Mapping[str, Any]) -> Index:
    """Every row of the splits loaded; the key of row r of the k-th split is the rows before it plus r."""
    data = typed(config).data
    splits = open_splits(config)
    columns = {}
    for split, ds in splits.items():
        _check_audio(config, split, ds)
        keys = ("label_column", "fold_column", "group_column")
        columns[split] = [_column(config, key, split, ds) for key in keys if data[key] is not None]
    classes, label_of = _classes(config, splits)
    items: list[Item] = []
    offset = 0
    for number, (split, ds) in enumerate(splits.items(), 1):
        table = ds.select_columns(list(dict.fromkeys(columns[split])))[:]
        labels = table[data.label_column]
        groups = table[data.group_column] if data.group_column else [f"{split}/{r}" for r in range(len(ds))]
        for row, (value, group) in enumerate(zip(labels, groups)):
            if value not in label_of:
                raise DataError(
                    f"{_where(config)}, split {split}, row {row}: column {data.label_column} is {value!r}, not one "
                    f"of the {len(classes)} class labels"
                )
            if data.fold_column is not None:
                fold = _fold(config, split, row, table[data.fold_column][row])
            elif len(splits) > 1:
                fold = number
            else:
                fold = hashed_fold(str(group), data.n_folds)
            items.append(Item(offset + row, label_of[value], fold, str(group)))
        offset += len(ds)
    return select_classes(config, classes, items)


def _fold(config: Mapping[str, Any], split: str, row: int, value: Any) -> int:
    data = typed(config).data
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            return int(str(value).strip())
        except ValueError:
            raise DataError(
                f"data.fold_column: {_where(config)}, split {split}, row {row}: column {data.fold_column} is "
                f"{value!r}; accepted: integer folds (as data.folds names them)"
            ) from None
    return value


def read(config: Mapping[str, Any], items: Sequence[Item]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Decode the audio of these rows only: the encoded bytes (or the file a row's path names) of each."""
    import datasets

    data = typed(config).data
    splits = open_splits(config)
    located: list[tuple[str, int]] = []  # (split, row) of each item
    bounds, offset = [], 0
    for split, ds in splits.items():
        bounds.append((offset, offset + len(ds), split))
        offset += len(ds)
    for it in items:
        key = int(it.key)
        located.append(next((split, key - lo) for lo, hi, split in bounds if lo <= key < hi))
    audio = {
        split: ds.select_columns([data.audio_column]).cast_column(data.audio_column, datasets.Audio(decode=False))
        for split, ds in splits.items()
    }
    where = _where(config)
    names = [f"{where}, split {split}, row {row}" for split, row in located]

    def fetch(start: int, stop: int) -> list[Source]:
        sources: list[Source] = []
        for split, row in located[start:stop]:
            value = audio[split][row][data.audio_column]
            if value.get("bytes"):
                sources.append(value["bytes"])
            else:
                path = value.get("path") or ""
                base = data_root(config) if data.hf_id is None else Path.cwd()
                sources.append(path if os.path.isabs(path) else str(base / path))
        return sources

    return read_audio(config, names, fetch)


def fingerprint(config: Mapping[str, Any]) -> list[list[Any]]:
    """The arrow files behind the dataset, with their sizes and times: a re-saved dataset is another entry."""
    files = []
    for ds in open_splits(config).values():
        for entry in ds.cache_files:
            st = os.stat(entry["filename"])
            files.append([entry["filename"], st.st_size, st.st_mtime_ns])
    return files


DATASETS.add("hf", DatasetSpec(PARAMS, FOLDS, index, read, fingerprint=fingerprint))
