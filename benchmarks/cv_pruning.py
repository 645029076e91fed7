"""What Wilcoxon pruning saves in a cross-validated search (`study.cv`), and whether it keeps the best trial.

    python benchmarks/cv_pruning.py [--quick | --smoke] [--trials N] [--epochs E] [--cv K] [--p P] [--jobs J]

Three studies of the same trials: no pruner (every trial trains all K folds: the baseline), `wilcoxon` at
sweep's defaults (p_threshold 0.1, n_startup_steps 2) and `wilcoxon` at `--p` (default 0.3). The sampler is
random with one seed, so the three studies draw the same params in the same order whatever is pruned, and
every trial trains with the same seed: a trial the pruner lets finish has the value it has in the baseline.
Each trial is what a sweep worker runs: `sweep.run.trial.train_trial` (which hands a config with study.cv to
`sweep.run.cv.train_cv`), each fold's best val_acc reported at step = fold, should_prune after every fold but
the last, a pruned trial's value the mean of the folds it finished.

The task: synthetic audio, 10 classes × 60 clips in 6 folds of 100; folds 1-5 are the search folds (cv 5:
each validates once, 400 training clips per split), fold 6 the test fold, never read. A small audio_cnn
(depth 2), AdamW with a cosine schedule. Search space: train.lr (log 1e-4…3e-2), train.weight_decay (log),
model.width (4, 8, 16).

Measured: epochs trained (all folds, every trial), as a share of the baseline's; the best trial (by the mean
over folds) of each study against the baseline's: the same trial or not, and the difference of their values
in points. `BENCH cv_wilcoxon_epochs` compares the epochs of the `--p` study (goal: at most 0.8 of the
baseline), `BENCH cv_wilcoxon_best_acc` its best mean accuracy (goal: at most 0.5 points lower).
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import optuna
import torch
from _bench import bench_line

from sweep.config.resolve import resolve
from sweep.run.cv import FoldsPruned
from sweep.run.trial import train_trial
from sweep.search import space
from sweep.search.strategy import make_pruner, make_sampler
from sweep.train.loop import NonFiniteLoss

BASE: dict[str, Any] = {
    "study": {"name": "bench-cv", "metric": "val_acc", "cv": 5},
    "sampler": {"name": "random", "seed": 0},
    "pruner": {"name": "none"},
    "data": {"dataset": "synthetic", "n_classes": 10, "clips_per_class": 60, "n_folds": 6, "sample_rate": 8000,
             "clip_seconds": 0.5, "folds": {"train": [1, 2, 3, 4], "val": [5], "test": [6]}},
    "features": {"n_mels": 16, "n_fft": 256, "hop_length": 256},
    "model": {"name": "audio_cnn", "width": 8, "depth": 2},
    "train": {"epochs": 4, "batch_size": 16, "device": "cpu", "seed": 0, "threads": 1},
    "search_space": {
        "train.lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-2, "log": True},
        "train.weight_decay": {"type": "float", "low": 1.0e-5, "high": 1.0e-1, "log": True},
        "model.width": {"type": "categorical", "choices": [4, 8, 16]},
    },
}
SMOKE = {"data": {"n_classes": 4, "clips_per_class": 6}, "model": {"width": 4, "depth": 1}}


def make_config(pruner: dict[str, Any], epochs: int, cv: int, smoke: bool) -> dict[str, Any]:
    raw = copy.deepcopy(BASE)
    for section, values in (SMOKE if smoke else {}).items():
        raw[section].update(values)
    raw["pruner"], raw["train"]["epochs"], raw["study"]["cv"] = dict(pruner), epochs, cv
    return resolve(raw, "benchmarks/cv_pruning.py")


def run_study(pruner: dict[str, Any], n_trials: int, epochs: int, cv: int, smoke: bool) -> dict[str, Any]:
    """n_trials trials one after another, as a sweep worker runs them."""
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = make_config(pruner, epochs, cv, smoke)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(config), pruner=make_pruner(config))
    params = space.parse(config["search_space"], config)
    spent, started = 0, time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(n_trials):
            trial = study.ask()
            state, value = optuna.trial.TrialState.COMPLETE, None
            try:
                drawn = space.suggest(trial, params, config)
                result = train_trial(resolve(space.apply(config, drawn), f"trial {trial.number}"),
                                     Path(tmp) / str(trial.number), trial)
                value, spent = result.best_value, spent + result.attrs["cv_epochs"]
            except FoldsPruned as exc:  # Optuna's tell takes no value with PRUNED (sweep's worker stores one)
                state, spent = optuna.trial.TrialState.PRUNED, spent + exc.attrs["cv_epochs"]
            except NonFiniteLoss:
                state = optuna.trial.TrialState.FAIL
            study.tell(trial, value, state=state)
    trials = study.get_trials(deepcopy=False)
    return {
        "epochs": spent,
        "best_trial": study.best_trial.number,
        "best_acc": 100 * study.best_value,
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
        "values": {t.number: t.value for t in trials},
        "seconds": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny data, 4 trials of 2 epochs, cv 3")
    parser.add_argument("--quick", action="store_true", help="12 trials of 3 epochs")
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--cv", type=int, default=5)
    parser.add_argument("--p", type=float, default=0.3, help="the second Wilcoxon study's p_threshold")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    trials, epochs, cv = (4, 2, 3) if args.smoke else (12, 3, args.cv) if args.quick else (
        args.trials, args.epochs, args.cv)
    studies = {"none": {"name": "none"}, "wilcoxon": {"name": "wilcoxon"},
               f"wilcoxon_p{args.p:g}": {"name": "wilcoxon", "p_threshold": args.p}}
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = {name: pool.submit(run_study, p, trials, epochs, cv, args.smoke) for name, p in studies.items()}
        out = {name: f.result() for name, f in futures.items()}
    base = out["none"]
    print(f"{trials} trials × cv {cv} × {epochs} epochs; random sampler seed 0")
    print(f"{'study':<18} {'epochs':>7} {'share':>6} {'pruned':>6} {'best trial':>10} {'best acc %':>10} {'s':>6}")
    for name, r in out.items():
        print(f"{name:<18} {r['epochs']:>7} {r['epochs'] / base['epochs']:>6.2f} {r['pruned']:>6} "
              f"{r['best_trial']:>10} {r['best_acc']:>10.2f} {r['seconds']:>6.0f}")
    for name, r in out.items():
        same = [n for n, v in r["values"].items() if v is not None and v == base["values"][n]]
        print(f"{name}: best trial {'=' if r['best_trial'] == base['best_trial'] else '≠'} baseline's "
              f"({base['best_trial']}); {len(same)} of {trials} trials with the baseline's exact value")
    r = out[f"wilcoxon_p{args.p:g}"]
    print(bench_line("cv_wilcoxon_epochs", r["epochs"], base["epochs"], r["epochs"] / base["epochs"], "<=0.8", 0))
    print(bench_line("cv_wilcoxon_best_acc", r["best_acc"], base["best_acc"], r["best_acc"] - base["best_acc"],
                     ">=-0.5"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
