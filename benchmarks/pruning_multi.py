"""What pruning saves in a multi-objective study: epochs trained, and the hypervolume of the final Pareto front,
with sweep's dominance rule against no pruner.

    python benchmarks/pruning_multi.py [--quick | --smoke] [--trials N] [--epochs E] [--seeds S] [--first-seed K]
        [--jobs J] [--percentile P]

The study of benchmarks/pruning.py (same data, model family, epochs, trial budget, sampler seeds and TPE), with
two objectives, `study.metrics: [val_acc, params_mb]`, and a search space where the model's size varies: the
width (model.width 4–32, in steps of 4) joins lr, weight decay and augmentation strength. Each repetition runs
the study twice, the pruner at sweep's defaults (`pruner.name: median`: with several objectives sweep's
dominance rule, `sweep.search.dominance`) and without (`none`), each an in-memory Optuna study with the
directions sweep gives it. Each trial is what a worker runs (`sweep/run/trial.py`): `train_trial` measures params_mb
before the first epoch, records val_acc per epoch (`sweep_curve`) and asks the dominance rule after each; a
complete trial is told (best val_acc, params_mb), a pruned one is told PRUNED.

Epochs trained: the sum over the trials of the epochs each ran. Hypervolume: the area the complete trials'
Pareto front dominates in (params_mb, val_acc), up to the reference point (1.1 × the largest params_mb any
trial of the repetition measured, val_acc 0): the same reference for both studies of a repetition. Both are
printed per study, then per seed with their means; the BENCH lines compare the means over the seeds:
`BENCH pruning_mo_epochs ... goal=<=0.5` and `BENCH pruning_mo_hypervolume ... goal=>=0.97` (ratio: pruned /
unpruned).
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
import pruning
import torch
from _bench import bench_line
from _studies import each_in_a_process, states, train_trials

from sweep.config.resolve import resolve
from sweep.search.objectives import STATIC, curve, static, told_values
from sweep.search.pareto import front, hypervolume_2d
from sweep.search.strategy import make_pruner, make_sampler

EPOCHS_GOAL, HV_GOAL = 0.5, 0.97
ORDER = ("median", "none")  # the pruned study, then its baseline; --percentile P prunes at P instead
WIDTH = {"type": "int", "low": 4, "high": 32, "step": 4}
SMOKE_WIDTH = {"type": "int", "low": 2, "high": 6, "step": 2}


def make_config(pruner: str, epochs: int, seed: int = 0, smoke: bool = False,
                percentile: float | None = None) -> dict[str, Any]:
    raw = copy.deepcopy(pruning.BASE)
    if smoke:
        for section, values in pruning.SMOKE.items():
            raw[section].update(values)
    raw["study"] = {"name": "bench-pruning-mo", "metrics": ["val_acc", "params_mb"]}
    raw["search_space"]["model.width"] = dict(SMOKE_WIDTH if smoke else WIDTH)
    raw["train"]["epochs"] = epochs
    raw["sampler"]["seed"] = seed
    raw["pruner"] = {"name": pruner, **({"percentile": percentile} if pruner == "percentile" else {})}
    return resolve(raw, f"benchmarks/pruning_multi.py ({pruner}, seed {seed})")


def run_study(config: dict[str, Any], n_trials: int, trials_dir: Path) -> dict[str, Any]:
    study = optuna.create_study(storage=None, directions=config["study"]["directions"],
                                sampler=make_sampler(config), pruner=make_pruner(config))
    started = time.perf_counter()
    train_trials(study, config, n_trials, trials_dir,
                 lambda result, trial: told_values(config, result.best_value, trial.user_attrs[STATIC]))
    trials = study.get_trials(deepcopy=False)
    return {
        "epochs": sum(len(curve(t)) for t in trials),
        "front": [tuple(t.values) for t in front(trials, [False, True])],  # (val_acc, params_mb)
        "largest": max((static(t).get("params_mb", 0.0) for t in trials), default=0.0),
        "states": states(trials),
        "seconds": time.perf_counter() - started,
    }


def one_study(pruner: str, seed: int, n_trials: int, epochs: int, smoke: bool, threads: int,
              percentile: float | None = None) -> dict[str, Any]:
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        return run_study(make_config(pruner, epochs, seed, smoke, percentile), n_trials, Path(tmp))


def hypervolume(points: list[tuple[float, float]], largest: float) -> float:
    """In (params_mb, −val_acc %), both minimised, up to (1.1 × largest, 0)."""
    return hypervolume_2d([(size, -100 * acc) for acc, size in points], (1.1 * largest, 0.0))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="40 trials of 6 epochs, seeds 0-2")
    size.add_argument("--smoke", action="store_true", help="tiny data and model, 3 trials of 3 epochs, seeds 0-1")
    p.add_argument("--trials", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--seeds", type=int)
    p.add_argument("--first-seed", type=int, default=0, help="the first sampler seed (default 0: seeds 0..S-1)")
    p.add_argument("--jobs", type=int)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--percentile", type=float, help="prune with `pruner.name: percentile` at this percentile "
                   "(the trial must be in its peers' top P %%) instead of the median")
    args = p.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    order = ORDER if args.percentile is None else ("percentile", "none")
    n_trials, epochs, n_seeds = (g or d for g, d in zip((args.trials, args.epochs, args.seeds), pruning.SIZES[mode]))
    jobs = args.jobs or (1 if args.smoke else 2)
    seeds = list(range(args.first_seed, args.first_seed + n_seeds))
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rule = pruning.describe("median", epochs, None) if args.percentile is None else f"percentile {args.percentile:g}"
    print(f"multi-objective (val_acc, params_mb): {len(order)} studies × {n_seeds} sampler seeds, each {n_trials} "
          f"trials × up to {epochs} epochs, {jobs} at a time; {rule} "
          "(sweep's dominance rule with these settings) against none", flush=True)
    tasks = sorted(((pruner, seed) for seed in seeds for pruner in order), key=lambda t: (t[0] != "none", t[1]))
    same = (n_trials, epochs, args.smoke, args.threads, args.percentile)
    results: dict[tuple[str, int], dict[str, Any]] = {}
    started = time.perf_counter()

    def done(pruner: str, seed: int, got: dict[str, Any]) -> None:
        results[pruner, seed] = got
        shown = ", ".join(f"{100 * a:.1f}%@{s:.4f}MB" for a, s in sorted(got["front"], key=lambda v: v[1]))
        print(f"  {pruner:6s} seed {seed}: {got['epochs']:4d} epochs, {got['states']}, {got['seconds']:.0f} s; "
              f"front {shown}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SWEEP_CACHE_DIR"] = str(Path(tmp) / "cache")
        each_in_a_process(tasks, one_study, same, jobs, done)
    wall = time.perf_counter() - started

    hv: dict[tuple[str, int], float] = {}
    for seed in seeds:
        largest = max(results[p, seed]["largest"] for p in order)
        for p in order:
            hv[p, seed] = hypervolume(results[p, seed]["front"], largest)
    print(f"\n{'seed':>4s}  " + "  ".join(f"{p + ' epochs':>16s} {'HV':>8s}" for p in order))
    means = {p: {"epochs": pruning.mean([results[p, s]["epochs"] for s in seeds]),
                 "hv": pruning.mean([hv[p, s] for s in seeds])} for p in order}
    rows = [(str(s), {p: {"epochs": results[p, s]["epochs"], "hv": hv[p, s]} for p in order}) for s in seeds]
    for label, row in [*rows, ("mean", means)]:
        base = row["none"]
        cells = [f"{row[p]['epochs']:9.1f} ({row[p]['epochs'] / base['epochs']:4.2f}) "
                 f"{row[p]['hv']:8.4f} ({row[p]['hv'] / base['hv'] if base['hv'] else 0:5.3f})" for p in order]
        print(f"{label:>4s}  " + "  ".join(cells))
    print(f"{len(tasks)} studies in {wall:.0f} s", flush=True)
    got, base = means[order[0]], means["none"]
    print(bench_line("pruning_mo_epochs", got["epochs"], base["epochs"], got["epochs"] / base["epochs"],
                     f"<={EPOCHS_GOAL}", digits=1, ratio_digits=3), flush=True)
    print(bench_line("pruning_mo_hypervolume", got["hv"], base["hv"], got["hv"] / base["hv"] if base["hv"] else 0.0,
                     f">={HV_GOAL}", digits=4, ratio_digits=3), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
