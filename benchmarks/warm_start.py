"""What a warm start saves: trials a study needs to come within 1 point of the cold study's best, cold vs warm.

    python benchmarks/warm_start.py [--quick | --smoke] [--trials N] [--source N] [--epochs E] [--seeds S]
                                    [--jobs J] [--threads T]

The data, model and search space are benchmarks/pruning.py's (`make_config`: synthetic audio, 10 classes, 200
training and 1000 validation clips, a small audio_cnn; train.lr, train.weight_decay, model.width,
augment.strength), without a pruner so that every trial trains its epochs and "trials needed" counts trials
alone. One repetition per sampler seed s runs, as in-memory Optuna studies with sweep's TPE
(`make_sampler`) and each trial trained by `sweep.run.trial.train_trial`:

- a source study on a neighbouring space: train.lr's range divided by 3 ([3.3e-5, 1e-2] instead of
  [1e-4, 3e-2]), `--source` trials, sampler seed 1000 + s;
- the cold study on the target space: `--trials` trials, sampler seed s;
- the warm study on the target space, seeded first with the source's complete trials by sweep's rule
  (`sweep.search.warm_start.seeded`, what `sweep launch --warm-start` adds: kept, clipped near a bound, or
  skipped), then `--trials` trials of its own, sampler seed s.

Target: the cold study's best val_acc minus 1 point. Trials needed: the number of the study's own trials up to
and including the first that reaches the target (the seeded ones are not counted: the warm study did not train
them); a warm study that never reaches it counts `--trials` + 1 and is reported as a miss. The BENCH line
compares the means over the seeds: `ratio` = warm / cold, goal <= 1 (a warm start should not cost trials).
Sizes: full 40 trials (source 40) of 12 epochs, seeds 0-2 (`--first-seed K`: K..K+2); --quick 20 (source 20)
of 6 epochs, seeds 0-2 (584-680 s here, 2 cores shared with other work); --smoke tiny data, 3 trials of 2
epochs, seeds 0-1, to check the output.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import torch
from _bench import bench_line
from _studies import each_in_a_process, train_trials
from pruning import make_config

from sweep.config.resolve import resolve
from sweep.search import space
from sweep.search.strategy import make_pruner, make_sampler
from sweep.search.warm_start import Skip, seeded

SHIFT = 3.0  # the source's lr range is the target's divided by this
SIZES = {"full": (40, 40, 12, 3), "quick": (20, 20, 6, 3), "smoke": (3, 3, 2, 2)}  # trials, source, epochs, seeds


def configs(epochs: int, seed: int, smoke: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(target, source) configs: pruning.py's study without a pruner, the source's lr range shifted down."""
    target = make_config("none", epochs, seed, smoke)
    source = copy.deepcopy(target)
    lr = source["search_space"]["train.lr"]
    lr.update(low=lr["low"] / SHIFT, high=lr["high"] / SHIFT)
    source["sampler"]["seed"] = 1000 + seed
    return target, resolve(source, "benchmarks/warm_start.py (source)")


def run_study(config: dict[str, Any], n_trials: int, trials_dir: Path,
              seeds: list[optuna.trial.FrozenTrial] = ()) -> dict[str, Any]:
    """`n_trials` trials after the `seeds`, one after another as a sweep worker runs them."""
    study = optuna.create_study(direction=config["study"]["direction"], sampler=make_sampler(config),
                                pruner=make_pruner(config))  # NopPruner: pruner.name none
    study.add_trials(list(seeds))
    started = time.perf_counter()
    results = train_trials(study, config, n_trials, trials_dir)
    values = [float("nan") if r is None else 100 * r.best_value for r in results]  # no pruner: None is a failure
    return {"values": values, "trials": study.get_trials(deepcopy=False), "seconds": time.perf_counter() - started}


def repetition(seed: int, n_trials: int, n_source: int, epochs: int, smoke: bool, threads: int) -> dict[str, Any]:
    """Source, cold and warm studies for one sampler seed, in this process."""
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    target, source = configs(epochs, seed, smoke)
    params = space.parse(target["search_space"], target)
    with tempfile.TemporaryDirectory() as tmp:
        src = run_study(source, n_source, Path(tmp) / "source")
        seeds, skipped = [], 0
        for t in src["trials"]:
            if t.state != optuna.trial.TrialState.COMPLETE:
                continue
            try:
                seeds.append(seeded(t, params, target, source, f"source#{t.number}"))
            except Skip:
                skipped += 1
        cold = run_study(target, n_trials, Path(tmp) / "cold")
        warm = run_study(target, n_trials, Path(tmp) / "warm", seeds)
    best = max(v for v in cold["values"] if v == v)
    need = {name: next((i + 1 for i, v in enumerate(got["values"]) if v >= best - 1.0), n_trials + 1)
            for name, got in (("cold", cold), ("warm", warm))}
    return {"seed": seed, "cold_best": best, "warm_best": max(v for v in warm["values"] if v == v),
            "source_best": max(v for v in src["values"] if v == v), "seeded": len(seeds), "skipped": skipped,
            "need": need, "seconds": src["seconds"] + cold["seconds"] + warm["seconds"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="20 trials (source 20) of 6 epochs, seeds 0-2")
    size.add_argument("--smoke", action="store_true", help="tiny data, 3 trials of 2 epochs, seeds 0-1")
    p.add_argument("--trials", type=int, help="trials of the cold and of the warm study")
    p.add_argument("--source", type=int, help="trials of the source study")
    p.add_argument("--epochs", type=int, help="epochs per trial")
    p.add_argument("--seeds", type=int, help="sampler seeds, one repetition each (default 3; --smoke 2)")
    p.add_argument("--first-seed", type=int, default=0, help="the first sampler seed (default 0: seeds 0..S-1)")
    p.add_argument("--jobs", type=int, help="repetitions run at a time, one process each (default 2; --smoke 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    args = p.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    n_trials, n_source, epochs, n_seeds = (
        given or default for given, default in zip((args.trials, args.source, args.epochs, args.seeds), SIZES[mode]))
    jobs = args.jobs or (1 if args.smoke else 2)
    seeds = range(args.first_seed, args.first_seed + n_seeds)
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"sampler seeds {seeds.start}-{seeds.stop - 1} × "
          f"(source {n_source} trials on lr / {SHIFT:g}, cold {n_trials}, warm {n_trials} "
          f"after seeding), {epochs} epochs, no pruner, {jobs} at a time", flush=True)
    same = (n_trials, n_source, epochs, args.smoke, args.threads)
    results: list[dict[str, Any]] = []
    started = time.perf_counter()

    def done(got: dict[str, Any]) -> None:
        results.append(got)
        miss = " (warm never reached it)" if got["need"]["warm"] > n_trials else ""
        print(f"  seed {got['seed']}: cold best {got['cold_best']:.1f}%, target {got['cold_best'] - 1:.1f}%: "
              f"cold needs {got['need']['cold']}, warm needs {got['need']['warm']}{miss} "
              f"(seeded {got['seeded']}, skipped {got['skipped']}; warm best {got['warm_best']:.1f}%, source best "
              f"{got['source_best']:.1f}%), {got['seconds']:.0f} s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SWEEP_CACHE_DIR"] = str(Path(tmp) / "cache")
        each_in_a_process([(seed,) for seed in seeds], repetition, same, jobs, lambda seed, got: done(got))
    cold = sum(r["need"]["cold"] for r in results) / len(results)
    warm = sum(r["need"]["warm"] for r in results) / len(results)
    print(f"{len(results)} repetitions in {time.perf_counter() - started:.0f} s", flush=True)
    print(bench_line("warm_start_trials_needed", warm, cold, warm / cold, "<=1.0", digits=1, ratio_digits=2),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
