"""What `sweep launch` does before the first trial: read every file's header, and enqueue the budget.

    python benchmarks/launch_checks.py [--quick | --smoke] [--files N] [--trials N] [--baseline-trials N]

Header check. N half-second 16-bit wav files at 16 kHz (default 2000) in ESC-50's layout are written to a
temporary folder (local disk; the page cache is warm, as after any recent read of a data set). sweep:
`sweep.data.check_files`, which launch's preflight runs on the train and val files, here on all N (each
header opened with soundfile, in its thread pool). baseline: decoding every file fully with
`soundfile.read`, in a thread pool of the same size, which is what catching the same faults by reading would
cost. Both run once untimed, then 5 times each (--quick: 3), taking turns; the median is reported, the range
printed.
`BENCH launch_header_check sweep=<s> baseline=<s> ratio=<r> goal=<=1.0 pass|fail`
(the check never costs more than a decode; on half-second files the two differ by little more than the
decoding of 16 KB each, on longer clips by much more).

Enqueueing. sweep: `sweep.search.study.top_up` of N trials (default 100,000) into a fresh study on a fresh SQLite
file opened by `sweep.storage.open_storage`, as `sweep launch` does (10,000 per write; the time includes its
closing count of the waiting trials). baseline: Optuna's own `study.enqueue_trial({}, user_attrs=...)` one
trial at a time on a fresh SQLite study opened by Optuna, for a smaller count (default 2000), extrapolated
per trial: Optuna numbers each new trial by counting the study's trials, so its per-trial cost at N would be
no lower. `BENCH launch_top_up_trials_per_s sweep=<trials/s> baseline=<trials/s> ratio=<r> goal=>=10 pass|fail`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
from _bench import bench_line

RATE = 16000
SECONDS = 0.5
CLASSES = 10


def check_headers(config: dict, items: Sequence) -> None:
    """sweep's side: the header check of launch's preflight, every item a file whose header it reads."""
    from sweep.data import check_files

    problems, warnings = check_files(config, {"split all": items}, {})
    assert not problems and not warnings, problems + warnings


def decode_all(paths: Sequence[str]) -> None:
    """The baseline: every file decoded in full, in a thread pool sized as sweep's (`bad_files`)."""
    import soundfile

    with ThreadPoolExecutor(max_workers=min(16, 2 * (os.cpu_count() or 1))) as pool:
        frames = list(pool.map(lambda p: len(soundfile.read(p, dtype="float32")[0]), paths))
    assert all(n == int(RATE * SECONDS) for n in frames), "a file decoded short"


def timed(fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def header_check(tmp: Path, n_files: int, repeats: int) -> str:
    from sweep.config.resolve import resolve
    from sweep.data import DATASETS
    from sweep.data.layouts import write_esc50

    root = write_esc50(tmp / "ESC-50", n_classes=CLASSES, clips_per_class=max(1, n_files // CLASSES),
                       sample_rate=RATE, clip_seconds=SECONDS)
    config = resolve({"data": {"dataset": "esc50", "root": str(root), "sample_rate": RATE,
                               "clip_seconds": SECONDS, "cache_dir": str(tmp / "cache")}}, "bench")
    items = DATASETS["esc50"].index(config).items
    paths = [it.key for it in items]
    ours, theirs = (lambda: check_headers(config, items)), (lambda: decode_all(paths))
    ours(), theirs()  # untimed: the page cache warm, soundfile loaded, the same start for both
    mine, base = [], []
    for _ in range(repeats):
        mine.append(timed(ours))
        base.append(timed(theirs))
    size = sum(os.path.getsize(p) for p in paths) / 2**20
    print(f"header check: {len(paths)} wav files of {SECONDS} s at {RATE} Hz ({size:.1f} MB), median of {repeats}")
    print(f"  sweep check_files (headers): {statistics.median(mine):.3f} s (range {min(mine):.3f}-{max(mine):.3f})")
    print(f"  baseline soundfile.read (decode all): {statistics.median(base):.3f} s "
          f"(range {min(base):.3f}-{max(base):.3f})")
    m, b = statistics.median(mine), statistics.median(base)
    print(f"  per file: {m / len(paths) * 1e6:.0f} µs (sweep), {b / len(paths) * 1e6:.0f} µs (baseline)")
    return bench_line("launch_header_check", m, b, m / b, "<=1.0", digits=3)


def top_up_rate(tmp: Path, n_trials: int) -> float:
    """Trials per second of sweep's top_up of `n_trials` into a fresh SQLite study."""
    from sweep.search.study import top_up
    from sweep.storage import open_storage

    study = optuna.create_study(study_name="bench", storage=open_storage(f"sqlite:///{tmp / 'sweep.db'}"))
    started = time.perf_counter()
    waiting = top_up(study, n_trials)
    seconds = time.perf_counter() - started
    assert waiting == n_trials, f"top_up left {waiting} trials waiting, not {n_trials}"
    print(f"  sweep top_up: {n_trials} trials in {seconds:.2f} s, {n_trials / seconds:.0f} trials/s")
    return n_trials / seconds


def enqueue_rate(tmp: Path, n_trials: int) -> float:
    """Trials per second of Optuna's enqueue_trial, one call per trial, on a fresh SQLite study of its own."""
    study = optuna.create_study(study_name="bench", storage=f"sqlite:///{tmp / 'optuna.db'}")

    def enqueue() -> None:
        for _ in range(n_trials):
            study.enqueue_trial({}, user_attrs={"sweep_enqueued": True})

    seconds = timed(enqueue)
    assert len(study.get_trials(deepcopy=False)) == n_trials
    print(f"  baseline Optuna enqueue_trial: {n_trials} trials in {seconds:.2f} s, {n_trials / seconds:.0f} "
          f"trials/s (extrapolated per trial to the sweep count)")
    return n_trials / seconds


def enqueueing(tmp: Path, n_trials: int, n_baseline: int) -> str:
    print(f"enqueueing on SQLite ({tmp}): sweep {n_trials} trials, baseline {n_baseline}")
    mine, base = top_up_rate(tmp, n_trials), enqueue_rate(tmp, n_baseline)
    print(f"  at the baseline's rate, {n_trials} trials would take {n_trials / base:.0f} s")
    return bench_line("launch_top_up_trials_per_s", mine, base, mine / base, ">=10", digits=0, ratio_digits=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="500 files, 20,000 trials (baseline 500)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs, nothing more")
    parser.add_argument("--files", type=int, help="wav files to check (default 2000)")
    parser.add_argument("--trials", type=int, help="trials sweep enqueues (default 100,000)")
    parser.add_argument("--baseline-trials", type=int, help="trials Optuna enqueues one by one (default 2000)")
    args = parser.parse_args()
    size = "smoke" if args.smoke else "quick" if args.quick else "full"
    n_files = args.files or {"smoke": 20, "quick": 500, "full": 2000}[size]
    n_trials = args.trials or {"smoke": 50, "quick": 20_000, "full": 100_000}[size]
    n_baseline = args.baseline_trials or {"smoke": 10, "quick": 500, "full": 2000}[size]
    repeats = {"smoke": 1, "quick": 3, "full": 5}[size]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        lines = [header_check(Path(tmp), n_files, repeats), enqueueing(Path(tmp), n_trials, n_baseline)]
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
