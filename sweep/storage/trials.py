"""Trial-level writes that sweep's storages batch (claim, attributes, finish) and Optuna's loops elsewhere:
what the study and the workers call instead of the storage's own methods."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweep.storage.journal import SweepJournalStorage
from sweep.storage.optuna_private import (
    cache_knows_trial,
    filter_study,
    refresh_cache,
    reset_trial_cache,
    storage_of,
    study_id_of,
    tell_with_warning,
    trial_id_of,
    uncached,
)
from sweep.storage.rdb import RetryingRDBStorage
from sweep.storage.remote import RetryingGrpcProxy


def pop_waiting_trial_id(
    study: optuna.Study, attrs: Callable[[int], Mapping[str, Any]] | None = None, start: int = 0
) -> int | None:
    """Claim the study's next WAITING trial for this worker: `Study._pop_waiting_trial_id`, in one transaction
    on a sweep SQL storage (see `RetryingRDBStorage.pop_waiting_trial_id`) and through sweep's storage proxy, a
    compare-and-set per waiting trial on the others (through Optuna's own proxy: the compare-and-set runs on the
    proxy's database), from the `start`-th on (`_pop_from`; a worker passes its index).
    `attrs(number)`: user attributes for the claimed trial, written with the claim where the storage can (SQL),
    else with its params (the journal: `flush_trial`)."""
    backend = _sweep_storage(storage_of(study))
    if not isinstance(backend, (RetryingRDBStorage, RetryingGrpcProxy)):
        trial_id = _pop_from(study, start)
        if trial_id is not None and attrs is not None:
            given = attrs(storage_of(study).get_trial(trial_id).number)
            if isinstance(backend, SweepJournalStorage):
                backend.hold(trial_id, given)  # appended with the trial's params: see `flush_trial`
            else:
                set_trial_user_attrs(storage_of(study), trial_id, given)
        return trial_id
    trial_id = backend.pop_waiting_trial_id(study_id_of(study), attrs)
    cache = storage_of(study)
    known = cache is backend or cache_knows_trial(cache, trial_id)
    if trial_id is not None and not known:  # Optuna's cache must know the trial it did not pop; one it read
        refresh_cache(cache, study_id_of(study))  # while WAITING is read afresh (unfinished)
    return trial_id


def _pop_from(study: optuna.Study, start: int) -> int | None:
    """Optuna's loop over the WAITING trials, begun at the `start`-th (wrapping round) instead of the first.

    Optuna sends every worker to the first waiting trial: workers that pop at once race for it, and all but
    one lose and try the next. On the journal each lost race is a locked, fsynced append: 581 of them for 128
    trials with 32 workers on a network file system (sshfs), 44 with each worker beginning at its own index."""
    waiting = storage_of(study).get_all_trials(study_id_of(study), deepcopy=False, states=(TrialState.WAITING,))
    first = start % len(waiting) if waiting else 0
    for trial in waiting[first:] + waiting[:first]:
        try:
            if storage_of(study).set_trial_state_values(trial_id_of(trial), state=TrialState.RUNNING):
                return trial_id_of(trial)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # finished meanwhile (handed back by another worker): not ours to run
    return None


def enqueue_waiting(study: optuna.Study, count: int, user_attrs: Mapping[str, Any]) -> None:
    """`count` empty WAITING trials, stored in one write on sweep's storages (`create_waiting_trials`); the caller
    sizes `count` to what one transaction or append should hold.

    Not `study.enqueue_trial({})`: that marks each trial with empty `fixed_params`, which Optuna's GridSampler
    takes for a point given by the user, so it assigns the trial no grid point and fails its first suggest."""
    backend = _sweep_storage(storage_of(study))
    if backend is None:
        template = FrozenTrial(
            number=-1, state=TrialState.WAITING, value=None, datetime_start=None, datetime_complete=None, params={},
            distributions={}, user_attrs=dict(user_attrs), system_attrs={}, intermediate_values={}, trial_id=-1,
        )
        for _ in range(count):
            storage_of(study).create_new_trial(study_id_of(study), template_trial=template)
        return
    backend.create_waiting_trials(study_id_of(study), count, user_attrs, {})


def flush_trial(study: optuna.Study, trial: optuna.Trial) -> None:
    """Write what the storage holds back of this trial: on the journal, the attributes of its claim and its
    params, one append for all (a worker calls this once the trial's params are drawn). Nothing elsewhere."""
    backend = _sweep_storage(storage_of(study))
    if isinstance(backend, SweepJournalStorage):
        backend.flush(trial_id_of(trial))


def _sweep_storage(
    storage: optuna.storages.BaseStorage,
) -> RetryingRDBStorage | SweepJournalStorage | RetryingGrpcProxy | None:
    """The sweep storage under Optuna's cache, if it is one (they batch a trial's writes): sweep's SQL storage,
    its journal, or a proxy that answers sweep's own calls (`sweep storage-proxy`)."""
    backend = uncached(storage)
    if isinstance(backend, RetryingGrpcProxy):
        return backend if backend.extras else None
    return backend if isinstance(backend, (RetryingRDBStorage, SweepJournalStorage)) else None


def set_trial_user_attrs(storage: optuna.storages.BaseStorage, trial_id: int, attrs: Mapping[str, Any]) -> None:
    """A trial's bookkeeping in one write instead of one per attribute: one transaction on a sweep SQL storage
    (one commit, also through sweep's proxy), one fsynced append on sweep's journal, one call per attribute on any
    other storage."""
    batched = _sweep_storage(storage)
    if batched is not None:
        batched.set_trial_user_attrs(trial_id, attrs)
        return
    for key, value in attrs.items():
        storage.set_trial_user_attr(trial_id, key, value)


def tell_with(
    study: optuna.Study, trial: optuna.Trial, attrs: Mapping[str, Any], value: float | Sequence[float] | None = None,
    state: TrialState | None = None, skip_if_finished: bool = False,
) -> None:
    """`study.tell(trial, value, state=state)` that also writes the trial's closing attributes, in the same
    transaction (SQL) or append (journal) as its new state: a trial's end costs one write, as in plain Optuna.
    `value`: one per objective with several (a pruned trial of such a study is told none).
    With `skip_if_finished` a trial finished meanwhile (handed back by another worker) is left as it is."""
    batched = _sweep_storage(storage_of(study))
    if batched is None:
        set_trial_user_attrs(storage_of(study), trial_id_of(trial), attrs)
        _tell(study, trial, value, state, skip_if_finished)
        return
    batched.stage_closing_attrs(trial_id_of(trial), attrs)
    try:
        _tell(study, trial, value, state, skip_if_finished)
    finally:
        batched.stage_closing_attrs(trial_id_of(trial), None)


def _tell(study: optuna.Study, trial: optuna.Trial, value: float | Sequence[float] | None, state: TrialState | None,
          skip_if_finished: bool) -> None:
    """`Study.tell` without what it does after telling: read the trial back and return a deep copy of it, which
    sweep never uses (a read, and a copy of the whole config attribute, per trial)."""
    if state != TrialState.PRUNED or value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        tell_with_warning(study, trial, value, state, skip_if_finished)
        return
    # Optuna takes no value with PRUNED and stores the last epoch's; sweep's value of a pruned trial is its best
    # epoch's (as a complete trial's), so that the dashboard and `study.trials` say what sweep's views say.
    reset_trial_cache(study)
    frozen = storage_of(study).get_trial(trial_id_of(trial))
    if frozen.state.is_finished() and skip_if_finished:
        return
    if frozen.state != TrialState.RUNNING:
        raise ValueError(f"Cannot tell a {frozen.state.name} trial.")
    try:
        study.sampler.after_trial(filter_study(study, frozen), frozen, state, [float(value)])
    finally:
        storage_of(study).set_trial_state_values(trial_id_of(trial), state, [float(value)])
