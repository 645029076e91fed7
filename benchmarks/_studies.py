"""What the study benchmarks (pruning, pruning_multi, warm_start) share: the trial loop a sweep worker runs,
in-process, and the pool that runs one study per process."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import optuna

from sweep.config.resolve import resolve
from sweep.run.trial import train_trial
from sweep.search import space
from sweep.train.loop import NonFiniteLoss, Result


def train_trials(study: optuna.Study, config: dict[str, Any], n_trials: int, trials_dir: Path,
                 told: Callable[[Result, optuna.Trial], Any] = lambda result, trial: result.best_value
                 ) -> list[Result | None]:
    """`n_trials` trials one after another, as a worker runs them: each drawn, trained by the real trainer in
    `trials_dir/NUMBER` and told (`told` gives the value(s)); pruned and diverged trials are told so. Returns each
    trial's result (None for a pruned or failed one)."""
    params = space.parse(config["search_space"], config)
    results: list[Result | None] = []
    for _ in range(n_trials):
        trial = study.ask()
        try:
            drawn = space.suggest(trial, params, config)
            result = train_trial(resolve(space.apply(config, drawn), f"trial {trial.number}"),
                                 trials_dir / str(trial.number), trial)
            study.tell(trial, told(result, trial))
            results.append(result)
        except optuna.TrialPruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            results.append(None)
        except NonFiniteLoss:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            results.append(None)
    return results


def states(trials: Iterable[optuna.trial.FrozenTrial]) -> dict[str, int]:
    """How many trials ended in each state, by lower-case name."""
    out: dict[str, int] = {}
    for t in trials:
        out[t.state.name.lower()] = out.get(t.state.name.lower(), 0) + 1
    return out


def each_in_a_process(tasks: Sequence[tuple], run: Callable[..., Any], same: tuple, jobs: int,
                      done: Callable[..., None]) -> None:
    """`run(*task, *same)` for every task, in `jobs` spawned processes (or this one for 1), calling
    `done(*task, result)` as each ends."""
    if jobs == 1:
        for task in tasks:
            done(*task, run(*task, *same))
        return
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run, *task, *same): task for task in tasks}
        for future in as_completed(futures):
            done(*futures[future], future.result())
