"""Decoded audio cached on disk: read once per study, memory-mapped by every later trial and worker.

Decoding and resampling cost far more than a small model's epoch (ESC-50 at 16 kHz: ~60 s on 2 cores), and
every trial of a search reads the same clips. The first reader of a split stores its waveforms as .npy
files; later ones map them, so the operating system's page cache holds one copy for all workers on a node.

An entry's name is a hash of everything that decides its contents (the data settings, the clips asked
for, and each file's size and modification time), so a cache built with other settings or before a file
changed is never used by mistake. Entries are written to a temporary folder and renamed into place, so a
reader sees a whole entry or none; a lock file makes concurrent workers wait for the one that builds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sweep.config.typed import typed
from sweep.data.registry import DATASETS, Item
from sweep.storage.urls import studies_dir

VERSION = 1  # bump when the reader's output for the same settings changes
NOT_CONTENT = ("folds", "split_seed", "cache", "cache_dir", "cache_local")  # data keys that choose, not decode

Reader = Callable[[Mapping[str, Any], Sequence[Item]], tuple[torch.Tensor, torch.Tensor, list[int]]]


def cache_root(config: Mapping[str, Any]) -> Path:
    """`data.cache_dir`, else $SWEEP_CACHE_DIR, else studies/.cache (a shared file system on a cluster)."""
    cfg = typed(config)
    given = cfg.data.cache_dir or os.environ.get("SWEEP_CACHE_DIR")
    return Path(given).expanduser().resolve() if given else studies_dir() / ".cache"  # no study name starts with "."


def entry_key(config: Mapping[str, Any], items: Sequence[Item]) -> str:
    """The hash naming the cache entry of these clips read with this config's data settings."""
    cfg = typed(config)
    data = cfg.data
    settings = {k: v for k, v in data.items() if k not in NOT_CONTENT}
    files = [[str(it.key), *_stat(it.key)] for it in items]
    content = {"version": VERSION, "settings": settings, "files": files}
    fingerprint = DATASETS[data.dataset].fingerprint
    if fingerprint is not None:
        content["data"] = fingerprint(config)
    text = json.dumps(content, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _stat(key: str | int) -> tuple[int, int]:
    if isinstance(key, int):  # a generated clip: its settings say everything
        return (0, 0)
    try:
        st = os.stat(key)
    except OSError:  # a missing file: the reader will say so, and nothing is cached
        return (-1, -1)
    return (st.st_mtime_ns, st.st_size)


def cached_read(
    config: Mapping[str, Any], read: Reader, items: Sequence[Item]
) -> tuple[torch.Tensor, torch.Tensor, list[int], Path | None]:
    """`read(config, items)`, from the cache when an entry exists, building the entry when none does;
    also the entry's folder (None with `data.cache: false`), where features of these clips can be kept."""
    cfg = typed(config)
    data = cfg.data
    if not data.cache:
        return (*read(config, items), None)
    root = cache_root(config)
    entry = root / f"{data['dataset']}-{entry_key(config, items)}"
    built = False
    if not entry.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        with _locked(root / f"{entry.name}.lock"):
            if not entry.is_dir():  # no one built it while this worker waited
                waves, lengths, kept = read(config, items)  # warns itself about skipped files
                _store(entry, waves, lengths, kept, {"dataset": data.dataset, "clips": len(items)})
                built = True
    if data.cache_local:
        entry = _local_copy(entry, Path(data.cache_local).expanduser())
    return (*_load(entry, 0 if built else len(items)), entry)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive POSIX lock (fcntl.lockf, which NFS serves through its lock manager)."""
    with open(path, "a") as handle:
        fcntl.lockf(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)


def _store(entry: Path, waves: torch.Tensor, lengths: torch.Tensor, kept: list[int], meta: dict) -> None:
    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        np.save(tmp / "waves.npy", waves.numpy())
        np.save(tmp / "lengths.npy", lengths.numpy())
        np.save(tmp / "kept.npy", np.asarray(kept, dtype=np.int64))
        (tmp / "meta.json").write_text(json.dumps(dict(meta, shape=list(waves.shape), version=VERSION)))

    publish(entry, write)


def publish(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` then rename tmp to `path`: readers see all of it or nothing; if another worker's copy
    landed first, that one stays (both hold the same)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.rename(tmp, path)
    except OSError:
        if not path.exists():  # a real failure, not another worker's copy landing first
            raise
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def _local_copy(entry: Path, local_root: Path) -> Path:
    """The entry copied to node-local scratch (`data.cache_local`), once per node, for faster random reads."""
    local = local_root / entry.name
    if not local.is_dir():
        local_root.mkdir(parents=True, exist_ok=True)
        publish(local, lambda tmp: shutil.copytree(entry, tmp))
    return local


def _load(entry: Path, asked: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The entry's arrays; `asked` clips were wanted (0: do not warn about those left out again)."""
    # copy-on-write mapping: pages stay shared with every other reader until someone writes (no one does)
    waves = torch.from_numpy(np.load(entry / "waves.npy", mmap_mode="c"))
    lengths = torch.from_numpy(np.load(entry / "lengths.npy"))
    kept = np.load(entry / "kept.npy").tolist()
    if 0 < asked and len(kept) < asked:
        warnings.warn(
            f"{asked - len(kept)} of {asked} audio files are left out (data.on_bad_file: skip; they could not be "
            f"read when the cache entry {entry} was built)",
            stacklevel=3,
        )
    return waves, lengths, kept
