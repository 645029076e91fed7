"""Memory of a worker: the cached clips are mapped from one file and shared, not copied into every worker.

    python benchmarks/memory.py [--quick] [--clips N] [--workers W]

W worker processes (spawned, as submitit's local workers are) each load the training split of an ESC-50-
layout set (5 s clips at 16 kHz) and run one epoch of batches through `sweep.data.inputs.Inputs`, at the
same time. Each reports, from /proc/self, its peak RSS and the anonymous memory (heap: memory no other
process can share) that loading the data added. sweep: with the cache, built beforehand (the first trial
of a study builds it). baseline: `data.cache: false`, each worker decoding its own copy, which is what a
worker holds without a shared cache. Prints the cache's size beside them and
`BENCH memory_worker_anon_mb sweep=<MB> baseline=<MB> ratio=<r> goal=<=0.25 pass|fail`.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
from pathlib import Path

import torch
from _bench import bench_line

BATCH = 32


def proc_kb(field: str, path: str = "/proc/self/smaps_rollup") -> int:
    for line in Path(path).read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def worker(config: dict, start: mp.Barrier, out: mp.Queue) -> None:
    from sweep.data import load_split
    from sweep.data.augment import Augment
    from sweep.data.features import build_features
    from sweep.data.inputs import Inputs

    torch.set_num_threads(1)
    device = torch.device("cpu")
    features, augment = build_features(config), Augment(config)
    start.wait()  # every worker holds its data at the same time, as a study's workers do
    before = proc_kb("Anonymous")
    clips = load_split(config, "train")
    batches = Inputs(config, clips, features, device, augment)
    shuffle = torch.Generator().manual_seed(0)
    order = torch.randperm(len(clips), generator=shuffle)
    for i in range(0, len(clips), BATCH):
        augment.spec(batches(order[i : i + BATCH], shuffle))
    start.wait()
    peak = proc_kb("VmHWM", "/proc/self/status")
    out.put({"anon_mb": (proc_kb("Anonymous") - before) / 1024, "peak_rss_mb": peak / 1024})


def measure(config: dict, workers: int) -> list[dict]:
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=worker, args=(config, start, out)) for _ in range(workers)]
    for p in procs:
        p.start()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 clips instead of 400")
    parser.add_argument("--smoke", action="store_true", help="a few clips: checks the script runs, nothing more")
    parser.add_argument("--clips", type=int)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    from sweep.config.resolve import resolve
    from sweep.data import load_split
    from sweep.data.features import build_features
    from sweep.data.inputs import Inputs
    from sweep.data.layouts import write_esc50

    n = args.clips or (20 if args.smoke else 200 if args.quick else 400)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_esc50(Path(tmp) / "ESC-50", n_classes=10, clips_per_class=max(1, n // 10), sample_rate=16000,
                           clip_seconds=5.0)
        data = {"dataset": "esc50", "root": str(root), "sample_rate": 16000, "clip_seconds": 5.0,
                "cache_dir": str(Path(tmp) / "cache"), "folds": {"train": [1, 2, 3, 4, 5], "val": [6], "test": [7]}}
        cached = resolve({"data": data, "features": {"n_mels": 64, "hop_length": 320}}, "bench")
        Inputs(cached, load_split(cached, "train"), build_features(cached), torch.device("cpu"))  # build it
        size = sum(p.stat().st_size for p in (Path(tmp) / "cache").rglob("*.npy")) / 2**20
        ours = measure(cached, args.workers)
        theirs = measure(dict(cached, data=dict(cached["data"], cache=False)), args.workers)
    print(f"{n} clips of 5 s at 16 kHz; cache on disk {size:.1f} MB (audio and log-mel); {args.workers} workers")
    for label, rows in (("sweep (cache)", ours), ("baseline (no cache)", theirs)):
        print(f"{label}: anonymous MB added per worker {[round(r['anon_mb'], 1) for r in rows]}, "
              f"peak RSS MB {[round(r['peak_rss_mb']) for r in rows]}")
    mine = max(r["anon_mb"] for r in ours)
    base = max(r["anon_mb"] for r in theirs)
    ratio = mine / base
    print(bench_line("memory_worker_anon_mb", mine, base, ratio, "<=0.25", ratio_digits=3))


if __name__ == "__main__":
    main()
