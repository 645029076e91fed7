"""How a study searches: its sampler and pruner, built from the config, and the study as a worker opens it.

Apart from `sweep.search.study` (the budget) because drawing needs the search space, whose schema imports every
registry (torch included): `sweep status` reads the budget without them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna

from sweep.config.typed import typed
from sweep.search import space
from sweep.search.dominance import DominancePruner
from sweep.search.pruners import PRUNERS, step_settings
from sweep.search.samplers import SAMPLERS
from sweep.storage import worker_cache


def make_sampler(config: Mapping[str, Any], worker_index: int = 0) -> optuna.samplers.BaseSampler:
    """Each worker gets seed + worker_index, so parallel workers do not draw the same random trials."""
    cfg = typed(config)
    seed = None if cfg.sampler.seed is None else cfg.sampler.seed + worker_index
    return SAMPLERS[cfg.sampler.name].build(cfg.sampler, seed, space.parse(config["search_space"], config))


def make_pruner(config: Mapping[str, Any]) -> optuna.pruners.BasePruner:
    """Several objectives: sweep's dominance rule with the median/percentile pruner's settings (`none`: never)."""
    cfg = typed(config)
    if not config["study"].get("metrics") or cfg.pruner.name == "none":
        return PRUNERS[cfg.pruner.name].build(cfg.pruner, cfg)
    percentile = cfg.pruner.percentile if cfg.pruner.name == "percentile" else 50.0
    return DominancePruner(config["study"]["metrics"][1:], percentile, **step_settings(cfg.pruner, cfg))


def open_study(config: Mapping[str, Any], storage: optuna.storages.BaseStorage, worker_index: int = 0) -> optuna.Study:
    """The study as a worker runs it: its sampler and pruner, and a SQL storage behind `WorkerCache`."""
    cfg = typed(config)
    return optuna.load_study(
        study_name=cfg.study.name,
        storage=worker_cache(storage),
        sampler=make_sampler(config, worker_index),
        pruner=make_pruner(config),
    )
