"""Pruning a multi-objective study: sweep's dominance rule (Optuna prunes single-objective studies only).

The static objectives (params_mb, latency_ms, macs) are measured before a trial's first epoch, so only the
primary metric is unknown while it trains. At epoch k (from epoch `n_warmup_steps` on, every `interval_steps`,
once `n_startup_trials` trials have completed, counted as Optuna's MedianPruner does), a trial is compared with
its *peers*: the other trials, finished or running, that reached epoch k and are no worse than it on every static
objective. It is stopped when its best primary metric so far is worse than the peers' median at epoch k (as Optuna's
MedianPruner compares; `pruner.name: percentile` keeps the top `percentile` per cent instead, as Optuna's).

Why peers no worse statically, and not every trial it does not dominate: a trial is on the final Pareto front
unless some trial at least as small/fast is also more accurate, so only those can show it is not worth
training. A small model is never pruned for being less accurate than bigger ones, and a model that is smaller
but slower than another is not judged against it either. A trial with no peer at epoch k goes on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from sweep.search.objectives import curve, static


class DominancePruner(optuna.pruners.BasePruner):
    """Stop a trial whose best primary metric so far is below the median (or percentile) of its static peers'.

    `names`: the static objectives, each minimised (every static metric is: `study.directions` is checked
    against each metric's nature), in the order of `study.metrics` after the primary."""

    def __init__(self, names: Sequence[str], percentile: float = 50.0, n_startup_trials: int = 5,
                 n_warmup_steps: int = 1, interval_steps: int = 1) -> None:
        self.names, self.percentile, self.n_startup_trials = list(names), percentile, n_startup_trials
        self.n_warmup_steps, self.interval_steps = n_warmup_steps, interval_steps

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
        return self.judge(trial, trials, maximize)

    def judge(self, trial: FrozenTrial, others: Sequence[FrozenTrial], maximize: bool) -> bool:
        """The rule itself, on trials as given."""
        own = curve(trial)
        if not own:
            return False
        step = max(own)
        if step < self.n_warmup_steps or (step - self.n_warmup_steps) % self.interval_steps:
            return False
        complete = [t for t in others if t.state == TrialState.COMPLETE and t.number != trial.number]
        if len(complete) < self.n_startup_trials:
            return False
        mine = self.values(trial)
        if mine is None:
            return False
        peers = []
        for t in others:
            theirs = self.values(t)
            if t.number != trial.number and step in curve(t) and theirs is not None and no_worse(theirs, mine):
                peers.append(curve(t)[step])
        if not peers:
            return False
        best = max(own.values()) if maximize else min(own.values())
        if maximize:
            return bool(best < np.percentile(peers, 100 - self.percentile))
        return bool(best > np.percentile(peers, self.percentile))

    def values(self, t: FrozenTrial) -> list[float] | None:
        measured = static(t)
        return None if any(n not in measured for n in self.names) else [measured[n] for n in self.names]


def no_worse(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether `a` is at least as good (as small) as `b` on every static objective."""
    return all(x <= y for x, y in zip(a, b))
