"""What pruning saves: epochs trained and best validation accuracy of one study with and without a pruner.

    python benchmarks/pruning.py [--quick | --smoke] [--trials N] [--epochs E] [--threads T]

The same study is run three times in this process, each in an in-memory Optuna study (`storage=None`) with
sweep's sampler (TPE, seed 0, `sweep.study.make_sampler`) and sweep's pruner (`sweep.study.make_pruner`):
MedianPruner (n_startup_trials 5, n_warmup_steps 2), no pruner (NopPruner: the baseline) and Hyperband
(min_resource 1, max_resource = epochs, reduction_factor 3). Each trial is what `sweep/worker.py` runs:
`sweep.space.suggest` draws the params, `sweep.config.resolve(sweep.space.apply(base, drawn))` makes the
trial's config, and `sweep.train.train(config, trial_dir, trial)` trains it, reporting val_acc every epoch
and stopping when the pruner says so. The search space: train.lr (log), train.weight_decay (log),
model.width and augment.strength, on synthetic audio (10 classes × 50 clips × 0.5 s at 8 kHz: 300 training
clips, 100 validation clips, so one clip is one accuracy point; a small audio_cnn). Every trial trains with
the same seed, so the three studies draw the same first trials (TPE's random startup trials).

Epochs trained: the sum of every trial's `epochs_run` (complete, pruned or failed). Best validation
accuracy: `study.best_value`, the best epoch's val_acc of the best completed trial, in percent (the
best val_acc any epoch of any trial reached, pruned ones included, is printed beside it for context).

Four lines, for median and for hyperband:
`BENCH pruning_<p>_epochs sweep=<epochs with p> baseline=<epochs without> ratio=<r> goal=<=0.5 pass|fail`
`BENCH pruning_<p>_best_acc sweep=<best acc % with p> baseline=<best acc % without> ratio=<d> goal=>=-1.0 ...`
NB: in the best_acc lines `ratio` is not a ratio but a difference in accuracy points (sweep - baseline, in
percentage points): the pruned study may lose at most 1 point of best accuracy.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import torch

from sweep import space
from sweep.config import resolve
from sweep.study import make_pruner, make_sampler
from sweep.train import NonFiniteLoss, train

EPOCHS_GOAL = 0.5  # the pruned study trains at most half the epochs of the unpruned one
ACC_GOAL = -1.0  # and loses at most one accuracy point of its best trial

PRUNERS: dict[str, dict[str, Any]] = {
    "median": {"name": "median", "n_startup_trials": 5, "n_warmup_steps": 2, "interval_steps": 1},
    "none": {"name": "none"},
    "hyperband": {"name": "hyperband", "min_resource": 1, "reduction_factor": 3},
}

BASE: dict[str, Any] = {
    "study": {"name": "bench-pruning", "metric": "val_acc"},
    "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 5},
    "data": {"dataset": "synthetic", "n_classes": 10, "clips_per_class": 50, "sample_rate": 8000,
             "clip_seconds": 0.5},
    "features": {"n_mels": 32, "n_fft": 256, "hop_length": 128},
    "model": {"name": "audio_cnn", "width": 8, "depth": 2},
    "train": {"epochs": 8, "batch_size": 16, "device": "cpu", "seed": 0},
    "search_space": {
        "train.lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-2, "log": True},
        "train.weight_decay": {"type": "float", "low": 1.0e-5, "high": 1.0e-1, "log": True},
        "model.width": {"type": "categorical", "choices": [4, 8, 16]},
        "augment.strength": {"type": "float", "low": 0.0, "high": 1.0},
    },
}
# Seconds, for tests: 4 classes × 10 clips, a 4-channel CNN, trials and epochs from the command line.
SMOKE: dict[str, Any] = {
    "data": {"n_classes": 4, "clips_per_class": 10},
    "model": {"width": 4, "depth": 1},
    "train": {"batch_size": 8},
    "search_space": {"model.width": {"type": "categorical", "choices": [2, 4]}},
}


def make_config(pruner: str, epochs: int, smoke: bool = False) -> dict[str, Any]:
    raw = copy.deepcopy(BASE)
    if smoke:
        for section, values in SMOKE.items():
            raw[section].update(values)
    raw["train"]["epochs"] = epochs
    raw["pruner"] = dict(PRUNERS[pruner])
    return resolve(raw, f"benchmarks/pruning.py ({pruner})")


def run_study(config: dict[str, Any], n_trials: int, trials_dir: Path) -> dict[str, Any]:
    """n_trials trials, one after another, as a sweep worker runs them; returns what the study spent and found."""
    study = optuna.create_study(
        storage=None,
        study_name=f"bench-pruning-{config['pruner']['name']}",  # Hyperband's brackets hash the study's name
        direction=config["study"]["direction"],
        sampler=make_sampler(config),
        pruner=make_pruner(config),
    )
    params = space.parse(config["search_space"], config)
    states: dict[str, int] = {}
    started = time.perf_counter()
    for _ in range(n_trials):
        trial = study.ask()
        state, value = optuna.trial.TrialState.COMPLETE, None
        try:
            drawn = space.suggest(trial, params, config)
            result = train(resolve(space.apply(config, drawn), f"trial {trial.number}"), trials_dir / str(trial.number),
                           trial)
            value = result.best_value
        except optuna.TrialPruned:
            state = optuna.trial.TrialState.PRUNED
        except NonFiniteLoss:
            state = optuna.trial.TrialState.FAIL
        study.tell(trial, value, state=state)
        states[state.name.lower()] = states.get(state.name.lower(), 0) + 1
    trials = study.get_trials(deepcopy=False)
    completed = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    return {
        "epochs": sum(t.user_attrs.get("epochs_run", 0) for t in trials),
        "best_acc": 100 * study.best_value if completed else 0.0,
        "best_params": study.best_params if completed else {},
        "best_any": 100 * max((v for t in trials for v in t.intermediate_values.values()), default=0.0),
        "states": states,
        "seconds": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="12 trials of 6 epochs (about 2 minutes on 2 cores)")
    size.add_argument("--smoke", action="store_true", help="tiny data and model, 3 trials of 3 epochs: output only")
    p.add_argument("--trials", type=int, help="trials per study (default 24; --quick 12; --smoke 3)")
    p.add_argument("--epochs", type=int, help="epochs per trial (default 8; --quick 6; --smoke 3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a worker's share of 2 cores)")
    args = p.parse_args(argv)
    n_trials = args.trials or (3 if args.smoke else 12 if args.quick else 24)
    epochs = args.epochs or (3 if args.smoke else 6 if args.quick else 8)
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SWEEP_CACHE_DIR"] = str(Path(tmp) / "cache")  # a private disk cache (a no-op without one)
        for pruner in ("median", "none", "hyperband"):
            config = make_config(pruner, epochs, smoke=args.smoke)
            results[pruner] = got = run_study(config, n_trials, Path(tmp) / pruner)
            print(
                f"{pruner:9s}: {n_trials} trials × up to {epochs} epochs: {got['epochs']:3d} epochs trained, "
                f"best val_acc {got['best_acc']:.2f}% (any epoch of any trial: {got['best_any']:.2f}%), "
                f"{json.dumps(got['states'])}, {got['seconds']:.1f} s; "
                f"best params {json.dumps(got['best_params'], default=str)}",
                flush=True,
            )

    base = results["none"]
    for pruner in ("median", "hyperband"):
        got = results[pruner]
        ratio = got["epochs"] / base["epochs"]
        print(
            f"BENCH pruning_{pruner}_epochs sweep={got['epochs']} baseline={base['epochs']} ratio={ratio:.3f} "
            f"goal=<={EPOCHS_GOAL} {'pass' if ratio <= EPOCHS_GOAL else 'fail'}",
            flush=True,
        )
        diff = got["best_acc"] - base["best_acc"]
        print(
            f"BENCH pruning_{pruner}_best_acc sweep={got['best_acc']:.2f} baseline={base['best_acc']:.2f} "
            f"ratio={diff:.2f} goal=>={ACC_GOAL} {'pass' if diff >= ACC_GOAL else 'fail'}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
