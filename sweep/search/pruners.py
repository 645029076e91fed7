"""Pruner registry: `pruner.name` → the Optuna pruner it builds, and the `pruner.<key>`s it takes."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import optuna

from sweep.config.typed import Section, typed
from sweep.schema import Field, Registry, Spec

# build(pruner section, the whole config) → pruner; the whole config for keys that default from train.epochs
Build = Callable[[Section, Section], optuna.pruners.BasePruner]



PRUNERS: Registry[Spec[Build]] = Registry("pruner")

STEPS = {
    "n_startup_trials": Field(int, 5, low=0),
    # 1: judged from the first epoch on (steps count from 1); null: a quarter of train.epochs (see `warmup_steps`)
    "n_warmup_steps": Field(int, 1, low=0, nullable=True),
    "interval_steps": Field(int, 1, low=1),
}


def warmup_steps(config: Mapping[str, Any]) -> int:
    """The median/percentile pruner's n_warmup_steps: the configured one, or (null) a quarter of the epochs.

    The default is 1, Optuna's own behaviour: on benchmarks/pruning.py (100 trials × 12 epochs, a validation
    split of 1000 clips, six sampler seeds) it trains 0.45 of the unpruned study's epochs for a best accuracy
    0.7 points lower; replayed offline on the same curves, 0.41 for 0.48 points, and a quarter (3) 0.59 for
    0.37. A warm-up guards against a noisy validation split: with 200 validation clips, where one clip is half
    a point and a trial's accuracy has a standard error of ~1.8 points, warm-up 1 lost 1.7–2.5 points and a
    quarter 0.5–0.75 (RESULTS.md). null keeps that choice proportional to the schedule for studies that want
    it, and for studies stored with it (`sweep.run.launch.CHANGED_DEFAULTS`).
    """
    cfg = typed(config)
    steps = cfg.pruner.get("n_warmup_steps")
    return max(1, round(cfg.train.epochs / 4)) if steps is None else steps  # epochs 0 (no limit): 1


def step_settings(pruner: Section, cfg: Section) -> dict[str, int]:
    """n_startup_trials, n_warmup_steps, interval_steps: the median and percentile pruners', and sweep's
    dominance rule's with several objectives (`sweep.search.dominance`)."""
    steps = warmup_steps(cfg)
    return dict(n_startup_trials=pruner.n_startup_trials, n_warmup_steps=steps, interval_steps=pruner.interval_steps)


PRUNERS.add("median", Spec(dict(STEPS), lambda pruner, cfg: optuna.pruners.MedianPruner(**step_settings(pruner, cfg))))
PRUNERS.add("percentile", Spec(
    {"percentile": Field(float, 25.0, low=0.0, high=100.0), **STEPS},
    lambda pruner, cfg: optuna.pruners.PercentilePruner(pruner.percentile, **step_settings(pruner, cfg)),
))
PRUNERS.add("hyperband", Spec(
    {
        "min_resource": Field(int, 1, low=1),
        "max_resource": Field(int, None, low=1, nullable=True),
        "reduction_factor": Field(int, 3, low=2),
    },
    lambda pruner, cfg: optuna.pruners.HyperbandPruner(
        min_resource=pruner.min_resource,
        max_resource=pruner.max_resource or cfg.train.epochs or "auto",  # epochs 0 (no limit): Optuna's estimate
        reduction_factor=pruner.reduction_factor,
    ),
))
PRUNERS.add("successive_halving", Spec(
    {
        "min_resource": Field(int, 1, low=1),
        "reduction_factor": Field(int, 4, low=2),
        "min_early_stopping_rate": Field(int, 0, low=0),
    },
    lambda pruner, cfg: optuna.pruners.SuccessiveHalvingPruner(
        min_resource=pruner.min_resource,
        reduction_factor=pruner.reduction_factor,
        min_early_stopping_rate=pruner.min_early_stopping_rate,
    ),
))
def _wilcoxon(pruner: Section, cfg: Section) -> optuna.pruners.BasePruner:
    """Optuna's WilcoxonPruner (experimental since 3.6: its warning says so once per trial, so it is hushed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.pruners.WilcoxonPruner(p_threshold=pruner.p_threshold, n_startup_steps=pruner.n_startup_steps)


PRUNERS.add("wilcoxon", Spec(  # across the folds of study.cv (sweep.run.cv), each fold's best value a step
    {"p_threshold": Field(float, 0.1, low=0.0, high=1.0), "n_startup_steps": Field(int, 2, low=0)}, _wilcoxon,
))
PRUNERS.add("none", Spec({}, lambda pruner, cfg: optuna.pruners.NopPruner()))
