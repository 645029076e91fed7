"""What pruning saves: epochs trained and best validation accuracy of the same study with and without a pruner.

    python benchmarks/pruning.py [--quick | --smoke] [--trials N] [--epochs E] [--seeds S] [--warmup W]
                                 [--jobs J] [--threads T]
    (the multi-objective study is benchmarks/pruning_multi.py)

One repetition runs the same study three times, each an in-memory Optuna study (`storage=None`) with sweep's
sampler (TPE, `sweep.search.strategy.make_sampler`, the same sampler seed for the three) and sweep's pruner at sweep's
defaults (`sweep.search.strategy.make_pruner` on a config that names only the pruner; the first output line prints the
settings): MedianPruner (n_startup_trials 5, interval_steps 1, n_warmup_steps 1 when this was written), no
pruner (NopPruner: the baseline) and Hyperband (min_resource 1, reduction_factor 3, max_resource = the epochs
of a trial). `--warmup W` gives the median pruner n_warmup_steps W instead. The repetition is made
for sampler seeds 0, 1, 2, ... (`--seeds`): one study is one noisy sample, and pruning changes what TPE sees,
so a pruned study draws other trials than the baseline from its first pruned trial on. All studies have the
same trial budget (`--trials`) and epochs per trial (`--epochs`).

Each trial is what a worker runs (`sweep/run/trial.py`): `sweep.search.space.suggest` draws the params,
`sweep.config.resolve(sweep.search.space.apply(base, drawn))` makes the trial's config, and
`sweep.run.trial.train_trial(config, trial_dir, trial)` trains it, reporting val_acc after every epoch (steps 1,
2, ...) and stopping when the pruner says so. The search space: train.lr (log), train.weight_decay (log),
model.width (4, 8, 16) and augment.strength. The task: synthetic audio (10 classes, 0.5 s clips at 8 kHz,
16-band log-mel of 16 frames), a small audio_cnn (depth 2), AdamW with a cosine schedule over the trial's
epochs, 200 training clips and 1000 validation clips. In 12 epochs the best trials reach 88-90 % and are
still rising at the end; poor ones stay near chance (10 %). Every trial trains with the same seed, so a
trial's learning curve depends only on its params.

Why 1000 validation clips (about one UrbanSound8K fold; it was 200 before 2026-11-23): the goal allows 1 point
of best accuracy, and the validation split must be able to tell 1 point apart. With 200 clips one clip is half
a point and a trial's accuracy at 93 % has a binomial standard error of 1.8 points, so the best of 100 trials
was mostly the luckiest draw of a cluster of near-equal trials, and the benchmark measured which of them a
pruner happened to keep. With 1000 clips the error is 1.0 point at 88 %.

Epochs trained: the sum over a study's trials of the epochs each reported (complete, pruned or failed: what
the worker records as `epochs_run`). Best validation accuracy: `study.best_value`, the best epoch's val_acc
of the best completed trial, in percent (the best val_acc any epoch of any trial reached, pruned ones
included, is printed beside it). Both are printed for every study, then in a table per seed with their means
over the seeds; the BENCH lines compare the means. Four lines, for median and for hyperband:
`BENCH pruning_<p>_epochs sweep=<mean epochs with p> baseline=<mean epochs without> ratio=<r> goal=<=0.5 ...`
`BENCH pruning_<p>_best_acc sweep=<mean best acc % with p> baseline=<without> ratio=<d> goal=>=-1.0 ...`
NB: in the best_acc lines `ratio` is not a ratio but a difference in accuracy points (sweep - baseline, in
percentage points): the pruned study may lose at most 1 point of best accuracy.

Sizes: the full run is 100 trials of 12 epochs for seeds 0-2 (the measurement); --quick is 40 trials of 6
epochs for seeds 0-2, a check of the trend in a few minutes (too few trials and epochs for a pruner to reach
the goal: the startup trials run in full, and at 6 epochs the curves are far from their end); --smoke is a
tiny model on tiny data, 3 trials of 3 epochs for seeds 0-1, to check the output. The studies run `--jobs`
at a time (default 2: one per core), each in its own process with `--threads` torch threads (default 1), as
two sweep workers would; which process runs a study changes the wall time, not its epochs or accuracies.
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
from _studies import each_in_a_process, states, train_trials

from sweep.config.resolve import resolve
from sweep.search.strategy import make_pruner, make_sampler

EPOCHS_GOAL = 0.5  # the pruned study trains at most half the epochs of the unpruned one
ACC_GOAL = -1.0  # and loses at most one accuracy point of its best trial

ORDER = ("median", "none", "hyperband")  # the three studies of one repetition
# Each pruner at sweep's defaults (`sweep.search.pruners.PRUNERS`: what a study gets when its config names only the
# pruner), so the benchmark measures what sweep does; the output prints the settings.
PRUNERS: dict[str, dict[str, Any]] = {name: {"name": name} for name in ORDER}

BASE: dict[str, Any] = {
    "study": {"name": "bench-pruning", "metric": "val_acc"},
    "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 5},
    # 140 clips per class in 14 folds of 10: folds 1-2 train (200 clips), 3-12 validate (1000 clips: see the
    # docstring for why so many), 13-14 test
    "data": {"dataset": "synthetic", "n_classes": 10, "clips_per_class": 140, "n_folds": 14, "sample_rate": 8000,
             "clip_seconds": 0.5, "folds": {"train": [1, 2], "val": list(range(3, 13)), "test": [13, 14]}},
    "features": {"n_mels": 16, "n_fft": 256, "hop_length": 256},  # 16 bands × 16 frames
    "model": {"name": "audio_cnn", "width": 8, "depth": 2},
    "train": {"epochs": 12, "batch_size": 16, "device": "cpu", "seed": 0},
    "search_space": {
        "train.lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-2, "log": True},
        "train.weight_decay": {"type": "float", "low": 1.0e-5, "high": 1.0e-1, "log": True},
        "model.width": {"type": "categorical", "choices": [4, 8, 16]},
        "augment.strength": {"type": "float", "low": 0.0, "high": 1.0},
    },
}
# Seconds, for tests: 4 classes × 12 clips (16 training, 16 validation), a 4-channel CNN.
SMOKE: dict[str, Any] = {
    "data": {"n_classes": 4, "clips_per_class": 12, "n_folds": 6,
             "folds": {"train": [1, 2], "val": [3, 4], "test": [5, 6]}},
    "model": {"width": 4, "depth": 1},
    "train": {"batch_size": 8},
    "search_space": {"model.width": {"type": "categorical", "choices": [2, 4]}},
}
SIZES = {  # trials per study, epochs per trial, sampler seeds
    "full": (100, 12, 3),
    "quick": (40, 6, 3),
    "smoke": (3, 3, 2),
}


def make_config(pruner: str, epochs: int, seed: int = 0, smoke: bool = False, warmup: int | None = None
                ) -> dict[str, Any]:
    """The study's config; `warmup` replaces the median pruner's n_warmup_steps (None: sweep's default)."""
    raw = copy.deepcopy(BASE)
    if smoke:
        for section, values in SMOKE.items():
            raw[section].update(values)
    raw["train"]["epochs"] = epochs
    raw["sampler"]["seed"] = seed
    raw["pruner"] = dict(PRUNERS[pruner])
    if pruner == "median" and warmup is not None:
        raw["pruner"]["n_warmup_steps"] = warmup
    return resolve(raw, f"benchmarks/pruning.py ({pruner}, seed {seed})")


def run_study(config: dict[str, Any], n_trials: int, trials_dir: Path) -> dict[str, Any]:
    """n_trials trials, one after another, as a sweep worker runs them; returns what the study spent and found."""
    study = optuna.create_study(
        storage=None,
        study_name=f"bench-pruning-{config['pruner']['name']}",  # Hyperband's brackets hash the study's name
        direction=config["study"]["direction"],
        sampler=make_sampler(config),
        pruner=make_pruner(config),
    )
    started = time.perf_counter()
    train_trials(study, config, n_trials, trials_dir)
    trials = study.get_trials(deepcopy=False)
    completed = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    return {
        "epochs": sum(len(t.intermediate_values) for t in trials),  # the worker's `epochs_run`
        "best_acc": 100 * study.best_value if completed else 0.0,
        "best_params": study.best_params if completed else {},
        "best_any": 100 * max((v for t in trials for v in t.intermediate_values.values()), default=0.0),
        "states": states(trials),
        "seconds": time.perf_counter() - started,
    }


def one_study(pruner: str, seed: int, n_trials: int, epochs: int, smoke: bool, threads: int, warmup: int | None
              ) -> dict[str, Any]:
    """One study in this process (a pool worker's or the main one), its trials in a temporary folder."""
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        return run_study(make_config(pruner, epochs, seed, smoke, warmup), n_trials, Path(tmp))


def describe(pruner: str, epochs: int, warmup: int | None) -> str:
    """The pruner's settings as the study gets them (sweep's defaults filled in and resolved as `make_pruner`
    resolves them: a null n_warmup_steps from the epochs, a null max_resource the epochs)."""
    config = make_config(pruner, epochs, warmup=warmup)
    cfg = {k: v for k, v in config["pruner"].items() if k != "name"}
    if "n_warmup_steps" in cfg:
        cfg["n_warmup_steps"] = make_pruner(config)._n_warmup_steps
    if pruner == "hyperband":
        cfg["max_resource"] = cfg["max_resource"] or epochs
    return f"{pruner} " + (" ".join(f"{k}={v}" for k, v in cfg.items()) or "(NopPruner)")


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="40 trials of 6 epochs, seeds 0-2 (about 5 minutes on 2 cores)")
    size.add_argument("--smoke", action="store_true",
                      help="tiny data and model, 3 trials of 3 epochs, seeds 0-1: output only")
    p.add_argument("--trials", type=int, help="trials per study (default 100; --quick 40; --smoke 3)")
    p.add_argument("--epochs", type=int, help="epochs per trial (default 12; --quick 6; --smoke 3)")
    p.add_argument("--seeds", type=int, help="sampler seeds 0..S-1, one repetition each (default 3; --smoke 2)")
    p.add_argument("--jobs", type=int, help="studies run at a time, one process each (default 2; --smoke 1)")
    p.add_argument("--warmup", type=int,
                   help="the median pruner's n_warmup_steps (default: sweep's)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per study (default 1: a worker's share)")
    args = p.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    n_trials, epochs, n_seeds = (
        given or default for given, default in zip((args.trials, args.epochs, args.seeds), SIZES[mode])
    )
    jobs = args.jobs or (1 if args.smoke else 2)
    seeds = list(range(n_seeds))
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruners = "; ".join(describe(p, epochs, args.warmup) for p in ORDER)
    print(f"{len(ORDER)} studies × {n_seeds} sampler seeds, each {n_trials} trials × up to {epochs} epochs, "
          f"{jobs} at a time, {args.threads} torch thread(s) each; {pruners}", flush=True)

    # The unpruned studies are the longest: started first, so the last ones to finish are short.
    tasks = sorted(((pruner, seed) for seed in seeds for pruner in ORDER), key=lambda t: (t[0] != "none", t[1]))
    same = (n_trials, epochs, args.smoke, args.threads, args.warmup)  # one_study's arguments after pruner, seed
    results: dict[tuple[str, int], dict[str, Any]] = {}
    started = time.perf_counter()

    def done(pruner: str, seed: int, got: dict[str, Any]) -> None:
        results[pruner, seed] = got
        print(f"  {pruner:9s} seed {seed}: {got['epochs']:4d} epochs, best val_acc {got['best_acc']:5.1f}% "
              f"(any epoch of any trial: {got['best_any']:5.1f}%), {got['states']}, {got['seconds']:.0f} s; "
              f"best params {got['best_params']}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SWEEP_CACHE_DIR"] = str(Path(tmp) / "cache")  # a private disk cache, shared by the processes
        each_in_a_process(tasks, one_study, same, jobs, done)
    wall = time.perf_counter() - started

    print(f"\n{'seed':>4s}  " + "  ".join(f"{p + ' epochs':>16s} {'best %':>6s}" for p in ORDER))
    rows = [(str(seed), {p: results[p, seed] for p in ORDER}) for seed in seeds]
    means = {p: {k: mean([results[p, s][k] for s in seeds]) for k in ("epochs", "best_acc")} for p in ORDER}
    for label, row in [*rows, ("mean", means)]:
        base = row["none"]["epochs"]
        cells = [f"{row[p]['epochs']:9.1f} ({row[p]['epochs'] / base:4.2f}) {row[p]['best_acc']:6.1f}" for p in ORDER]
        print(f"{label:>4s}  " + "  ".join(cells))
    print(f"{len(tasks)} studies in {wall:.0f} s", flush=True)

    base = means["none"]
    for pruner in ("median", "hyperband"):
        got = means[pruner]
        print(bench_line(f"pruning_{pruner}_epochs", got["epochs"], base["epochs"], got["epochs"] / base["epochs"],
                         f"<={EPOCHS_GOAL}", digits=1, ratio_digits=3), flush=True)
        print(bench_line(f"pruning_{pruner}_best_acc", got["best_acc"], base["best_acc"],
                         got["best_acc"] - base["best_acc"], f">={ACC_GOAL}", digits=2, ratio_digits=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
