"""Sampler registry: `sampler.name` → the Optuna sampler it builds, and the `sampler.<key>`s it takes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import optuna

from sweep.config.typed import Section
from sweep.schema import ConfigError, Field, Registry, Spec

# build(sampler section, seed, the search space's params) → sampler; the params are `sweep.search.space.Param`s
Build = Callable[[Section, "int | None", Sequence[Any]], optuna.samplers.BaseSampler]



SAMPLERS: Registry[Spec[Build]] = Registry("sampler")


def _grid(sampler: Section, seed: int | None, params: Sequence[Any]) -> optuna.samplers.BaseSampler:
    grid = {}
    for param in params:
        values = grid_values(param.distribution)
        if values is None:
            raise ConfigError(
                "the grid sampler needs choices, ints, or floats with a `step`", key=f"search_space.{param.path}"
            )
        grid[param.path] = values
    return optuna.samplers.GridSampler(grid, seed=seed)


def grid_values(dist: optuna.distributions.BaseDistribution) -> list[Any] | None:
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return list(dist.choices)
    if dist.step is None or getattr(dist, "log", False):
        return None
    count = int(round((dist.high - dist.low) / dist.step)) + 1
    return [dist.low + i * dist.step for i in range(count)]


SAMPLERS.add("tpe", Spec(
    {
        "n_startup_trials": Field(int, 5, low=0),
        "multivariate": Field(bool, False),
        "constant_liar": Field(bool, True),
    },
    lambda sampler, seed, _: optuna.samplers.TPESampler(
        n_startup_trials=sampler.n_startup_trials,
        multivariate=sampler.multivariate,
        constant_liar=sampler.constant_liar,
        seed=seed,
    ),
    "Tree-structured Parzen estimator; constant_liar keeps parallel workers from drawing the same point",
))
SAMPLERS.add("random", Spec({}, lambda sampler, seed, _: optuna.samplers.RandomSampler(seed=seed)))
SAMPLERS.add("grid", Spec({}, _grid, "every combination of the choices, ints and stepped floats"))
SAMPLERS.add("cmaes", Spec(
    {"n_startup_trials": Field(int, 1, low=0)},
    lambda sampler, seed, _: optuna.samplers.CmaEsSampler(n_startup_trials=sampler.n_startup_trials, seed=seed),
))
SAMPLERS.add("qmc", Spec(
    {"qmc_type": Field(str, "sobol", choices=("sobol", "halton")), "scramble": Field(bool, True)},
    lambda s, seed, _: optuna.samplers.QMCSampler(qmc_type=s.qmc_type, scramble=s.scramble, seed=seed),
))
SAMPLERS.add("gp", Spec(
    {"n_startup_trials": Field(int, 10, low=0)},
    lambda sampler, seed, _: optuna.samplers.GPSampler(n_startup_trials=sampler.n_startup_trials, seed=seed),
))
SAMPLERS.add("nsga2", Spec(
    {"population_size": Field(int, 50, low=2)},
    lambda sampler, seed, _: optuna.samplers.NSGAIISampler(population_size=sampler.population_size, seed=seed),
    "NSGA-II, the genetic algorithm for several objectives (study.metrics); random until its first generation",
))
