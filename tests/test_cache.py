"""The decoded-audio cache: the same tensors as reading the files, a new entry when anything that decides
them changes, one builder among concurrent workers, and a node-local copy."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest
import torch

from sweep.config.resolve import resolve
from sweep.data import DATASETS, load_split, split_items
from sweep.data.audio import read_files
from sweep.data.cache import cached_read
from sweep.data.layouts import write_urbansound8k


def config(root: Path, cache_dir: Path, **data: object) -> dict:
    section = {"dataset": "urbansound8k", "root": str(root), "sample_rate": 8000, "clip_seconds": 0.5,
               "cache_dir": str(cache_dir), **data}
    return resolve({"data": section}, "cache-test")


@pytest.fixture
def us8k(tmp_path: Path) -> Path:
    return write_urbansound8k(tmp_path / "UrbanSound8K")  # 8-bit, 24-bit, float stereo, 48 kHz, too-short files


def entries(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in cache_dir.iterdir() if p.is_dir())


def test_cached_clips_equal_the_files_and_are_reused(us8k: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cfg = config(us8k, cache)
    first = load_split(cfg, "train")
    assert len(entries(cache)) == 1 and entries(cache)[0].startswith("urbansound8k-")
    plain = load_split(dict(cfg, data=dict(cfg["data"], cache=False)), "train")
    assert torch.equal(first.waves, plain.waves) and torch.equal(first.lengths, plain.lengths)
    assert first.keys == plain.keys and torch.equal(first.labels, plain.labels)

    items = split_items(DATASETS["urbansound8k"].index(cfg).items, cfg["data"]["folds"], "train", 0)

    def never(*_: object) -> None:
        raise AssertionError("the cache entry exists: the files must not be read again")

    waves, lengths, kept, _ = cached_read(cfg, never, items)
    assert torch.equal(waves, plain.waves) and kept == list(range(len(items)))
    load_split(cfg, "val")  # another split is another entry
    assert len(entries(cache)) == 2
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]


def test_a_change_in_settings_or_files_is_a_new_entry(us8k: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    load_split(config(us8k, cache), "train")
    assert len(entries(cache)) == 1
    load_split(config(us8k, cache, folds={"train": [1, 2, 3, 4, 5, 6, 7, 8], "val": [9], "test": [10]}), "train")
    assert len(entries(cache)) == 1  # the same clips, chosen again: the same entry
    load_split(config(us8k, cache, sample_rate=16000), "train")
    load_split(config(us8k, cache, max_seconds=0.1), "train")
    load_split(config(us8k, cache, classes=["car_horn", "air_conditioner"]), "train")
    assert len(entries(cache)) == 4
    changed = next((us8k / "audio" / "fold1").iterdir())
    before = load_split(config(us8k, cache), "train")
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # the file was rewritten
    after = load_split(config(us8k, cache), "train")
    assert len(entries(cache)) == 5 and torch.equal(before.waves, after.waves)


def _slow_counting_read(counter: Path):
    def read(cfg, items):
        with open(counter, "a") as f:
            f.write("built\n")
        time.sleep(1.0)  # long enough for every other worker to arrive while this one builds
        return read_files(cfg, items)

    return read


def _worker(cfg: dict, counter: str, items: list, out: mp.Queue) -> None:
    waves, lengths, kept, _ = cached_read(cfg, _slow_counting_read(Path(counter)), items)
    out.put((waves.sum().item(), lengths.tolist(), kept))


def test_concurrent_workers_build_one_entry_and_read_the_same(us8k: Path, tmp_path: Path) -> None:
    cache, counter = tmp_path / "cache", tmp_path / "built.txt"
    cfg = config(us8k, cache)
    items = split_items(DATASETS["urbansound8k"].index(cfg).items, cfg["data"]["folds"], "train", 0)
    ctx = mp.get_context("spawn")  # a forked torch may deadlock in its thread pools
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(cfg, str(counter), items, out)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert counter.read_text().splitlines() == ["built"]  # one worker decoded; three waited and mapped
    assert all(r == results[0] for r in results)
    assert len(entries(cache)) == 1 and not [p for p in cache.iterdir() if p.name.endswith(".tmp")]


def test_cache_off_reads_every_time_and_local_copy_is_used(us8k: Path, tmp_path: Path) -> None:
    cache, local = tmp_path / "shared", tmp_path / "scratch"
    off = config(us8k, cache, cache=False)
    load_split(off, "train")
    assert not cache.exists()
    copied = load_split(config(us8k, cache, cache_local=str(local)), "train")
    assert entries(local) == entries(cache)  # the shared entry, copied to node-local scratch
    assert torch.equal(copied.waves, load_split(off, "train").waves)


def test_progress_is_drawn_on_a_terminal_and_silent_in_logs() -> None:
    import io

    from sweep.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal, log = Terminal(), io.StringIO()
    for stream in (terminal, log):
        progress = Progress("decoding esc50", 3, stream)
        for _ in range(3):
            progress.update()
        progress.close()
    assert log.getvalue() == ""  # a worker's log file, SLURM's output, CI
    drawn = terminal.getvalue()
    assert drawn.startswith("\rdecoding esc50: ") and "3/3 (" in drawn and drawn.endswith("/s)\n")


def test_default_cache_folder_is_hidden_among_the_studies(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sweep.data.cache import cache_root

    monkeypatch.delenv("SWEEP_CACHE_DIR")
    cfg = resolve({}, "default")
    assert cache_root(cfg) == home / "studies" / ".cache"  # no study name can start with "."
    monkeypatch.setenv("SWEEP_STUDIES_DIR", str(home / "shared"))
    assert cache_root(cfg) == home / "shared" / ".cache"
    monkeypatch.setenv("SWEEP_CACHE_DIR", str(home / "scratch"))
    assert cache_root(cfg) == home / "scratch"
    assert cache_root(resolve({"data": {"cache_dir": str(home / "given")}}, "given")) == home / "given"
