"""sweep's orchestration overhead: wall time of many short trials on W workers against the time they train.

    python benchmarks/orchestration.py [--quick | --smoke] [--trials 100,200,400] [--workers 4] [--epochs 4]
                                       [--sleep 0.25] [--backend sqlite|postgresql|mariadb|journal]

sweep: W local worker processes, each `sweep.run.worker.run_worker` (the function every sweep worker runs), on
one study whose budget `sweep.search.study.top_up` enqueued, as `sweep launch` does: the claim with its run
attributes, the search-space draw, the resolved config, the trial folder (config.yaml, run.json, the TensorBoard
hparams summary), a report and a median-pruner check per epoch, `tell` with the closing attributes. The training
is replaced by a fixed sleep per epoch (storage_overhead.py's `Reporting` trainer, the one piece both scripts
run; here every trial reports the same curve, so the pruner is asked every epoch and prunes none).
baseline: the floor, trials × epochs × sleep / W: what the same trials take with no orchestration at all.
ratio = wall time (the go signal to the end of the last `tell`) / floor.

The workers are processes forked from a forkserver that imported everything but never connected
(storage_overhead.py's machinery): the launcher's own start-up (imports, submitit) is not a per-trial cost and
is measured by slurm_launch.py. Sleeping workers need no cores: 4 workers fit a 2-core machine, where only the
orchestration itself competes for the CPU.

For reference, Ray Tune's published figure for 10,000 one-second trials on 16 CPUs: 715 s against a 625 s
floor, 1.14. Goal here: ≤ 1.05. Each point ends with
`BENCH orchestration_<trials>_<W>w sweep=<wall s> baseline=<floor s> ratio=<r> goal=<=1.05 pass|fail`.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys

import optuna
from _bench import bench_line
from storage_overhead import BACKENDS, PRELOAD, Reporting, backend, timed

GOAL = "<=1.05"


def point(url: str, trials: int, workers: int, epochs: int, sleep: float, ctx: mp.context.BaseContext) -> float:
    """Wall seconds of `trials` trials of `epochs` × `sleep` s on `workers` sweep workers."""
    return timed("sweep", url, workers, trials, ctx, trainer=Reporting(epochs, sleep, spread=False))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="100 and 200 trials")
    size.add_argument("--smoke", action="store_true", help="8 trials of 2 × 0.05 s on 2 workers (tests)")
    p.add_argument("--trials", default=None, help="trial counts (default 100,200,400; --quick 100,200)")
    p.add_argument("--workers", type=int, default=None, help="local workers (default 4)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per trial (default 4)")
    p.add_argument("--sleep", type=float, default=None, help="seconds per epoch (default 0.25)")
    p.add_argument("--backend", choices=BACKENDS, default="sqlite", help="the study's storage (default sqlite)")
    args = p.parse_args(argv)
    trials = [int(n) for n in (args.trials or ("8" if args.smoke else "100,200" if args.quick else "100,200,400"))
              .split(",")]
    workers = args.workers or (2 if args.smoke else 4)
    epochs = args.epochs or (2 if args.smoke else 4)
    sleep = args.sleep if args.sleep is not None else (0.05 if args.smoke else 0.25)
    if min(trials) < workers or workers < 1 or epochs < 1 or sleep <= 0:
        p.error(f"--trials {args.trials}, --workers {workers}, --epochs {epochs}, --sleep {sleep}: every trial "
                "count must be at least the workers, and workers, epochs and sleep must be positive")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    for n in trials:
        floor = n * epochs * sleep / workers
        with backend(args.backend) as url:
            wall = point(url, n, workers, epochs, sleep, ctx)
        print(f"{args.backend} {n:5d} trials of {epochs} × {sleep} s on {workers} workers: {wall:7.2f} s, floor "
              f"{floor:7.2f} s, {1000 * (wall - floor) * workers / n:6.1f} ms per trial per worker over it",
              flush=True)
        print(bench_line(f"orchestration_{n}_{workers}w", wall, floor, wall / floor, GOAL, digits=2, ratio_digits=3),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
