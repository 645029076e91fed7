"""A worker's view of a SQL study: Optuna's trial cache, with a pruning check that reads only what it needs."""

from __future__ import annotations

import copy
from collections.abc import Container, Iterable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweep.storage.optuna_private import (
    CachedStorage,
    add_to_cache,
    cache_knows_trial,
    cache_lock,
    cached_study,
    refresh_cache,
    trial_id_of,
    uncached,
)
from sweep.storage.rdb import RetryingRDBStorage


class WorkerCache(CachedStorage):
    """Optuna's trial cache (`CachedStorage`) over sweep's SQL storage; listing finished trials only reads newly
    finished ones.

    A pruner asks for the COMPLETE trials on every check (MedianPruner, PercentilePruner), and Optuna's cache
    answers any listing by first re-reading every unfinished trial in full (the worker's own running trial with
    its attributes and reports, every other worker's, each with six queries' worth of rows) just to learn which of
    them finished. Here a listing that asks for finished states only runs one query for the trials that finished
    since the last read (usually none) and loads just those. Any other listing (a sampler's, which needs the
    running trials' params) is Optuna's own, unchanged.
    """

    def __init__(self, backend: RetryingRDBStorage) -> None:
        super().__init__(backend)
        self._finished_ahead: dict[int, set[int]] = {}  # study id → finished trials above last_finished_trial_id

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._finished_ahead = {}

    def set_trial_param(
        self, trial_id: int, param_name: str, param_value_internal: float,
        distribution: optuna.distributions.BaseDistribution,
    ) -> None:
        """Optuna's, which fails with KeyError on a trial the cache has not read: a trial a storage proxy's client
        popped before the proxy restarted (or from another proxy). The cache reads the trial's study first."""
        if not cache_knows_trial(self, trial_id):
            refresh_cache(self, uncached(self).study_id_of_trial(trial_id))
        super().set_trial_param(trial_id, param_name, param_value_internal, distribution)

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        states = tuple(states) if isinstance(states, Iterable) else states  # iterated twice below
        if not isinstance(states, tuple) or not all(TrialState(s).is_finished() for s in states):
            return super().get_all_trials(study_id, deepcopy, states)
        self._read_newly_finished(study_id)
        with cache_lock(self):
            trials = sorted((t for t in cached_study(self, study_id).trials.values() if t.state in states),
                            key=lambda t: t.number)
        return copy.deepcopy(trials) if deepcopy else trials

    def _read_newly_finished(self, study_id: int) -> None:
        """Load the trials that finished since the last read into Optuna's cache, as its own read would: a finished
        trial leaves the unfinished ones it re-reads. Trials above `last_finished_trial_id` are only noted as read
        ahead: the ids between them, never listed here, may hold unfinished trials its next full read must find."""
        with cache_lock(self):
            study = cached_study(self, study_id)
            ahead = self._finished_ahead.setdefault(study_id, set())
            ahead.difference_update([i for i in ahead if i <= study.last_finished_trial_id])  # a full read passed them
            trials = uncached(self).read_finished(
                study_id, study.unfinished_trial_ids, study.last_finished_trial_id, ahead
            )
            add_to_cache(self, study_id, trials)
            for t in trials:
                if trial_id_of(t) > study.last_finished_trial_id:
                    ahead.add(trial_id_of(t))
                else:
                    study.unfinished_trial_ids.discard(trial_id_of(t))


def worker_cache(storage: optuna.storages.BaseStorage) -> optuna.storages.BaseStorage:
    """The storage a worker's study should use: `WorkerCache` over a sweep SQL storage, any other as it is."""
    return WorkerCache(storage) if isinstance(storage, RetryingRDBStorage) else storage
