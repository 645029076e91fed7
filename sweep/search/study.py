"""A study's trial budget and its bookkeeping: enqueued, popped, voided, retried.

The budget is global and exact: `launch` enqueues one empty WAITING trial per trial still owed, and
workers only ever pop WAITING trials. Popping is atomic (one locking transaction on the SQL storages,
see `sweep.storage.pop_waiting_trial_id`; a compare-and-set on the journal), so N workers on one
study never run more than `study.n_trials` trials between them, and TPE still samples each trial's
params at the moment a worker starts it, seeing every trial finished before.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweep.config.typed import typed
from sweep.schema import ConfigError
from sweep.storage import enqueue_waiting, last_outage_end, mask, pop_waiting_trial_id
from sweep.storage.optuna_private import reset_trial_cache, storage_of, trial_id_of

# A trial carrying this user attribute does not count toward the budget (interrupted, voided, retried);
# its value says why.
VOID = "sweep_void"
CONFIG_ATTR = "sweep_config"
RETRIED = "; retried with the same params"  # the end of a VOID written by `retry`: a retry is owed for it
# A trial copied from an earlier study by `--warm-start` (sweep.search.warm_start) carries this user attribute,
# "<study>@<storage>#<trial number>": evidence for the sampler and the pruner, not a trial of this study's budget.
SEEDED = "warm_start_from"
SEEDED_RULE = "warm_start_rule"  # "kept", or what the warm-start rule changed: "clipped: train.lr 0.2 → 0.1"

# ---- the study ---------------------------------------------------------------------------------------


def load_existing(name: str, storage: optuna.storages.BaseStorage, url: str) -> optuna.Study:
    """Open a study for reading; an unknown name lists the studies that storage does hold."""
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if name not in names:
        held = ", ".join(sorted(names)) or "none"
        raise ConfigError(f"no study named {name!r} in {mask(url)} (studies there: {held})")
    return optuna.load_study(study_name=name, storage=storage)


def stored_config(study: optuna.Study) -> dict[str, Any]:
    config = study.user_attrs.get(CONFIG_ATTR)
    if not isinstance(config, dict):
        raise ConfigError(f"study {study.study_name!r} was not created by sweep (it has no stored config)")
    return config


def counts(trial: FrozenTrial) -> bool:
    """Whether a trial uses up one unit of the study's trial budget: not a voided one, nor one seeded by a warm
    start (it was trained by another study; the budget is what this study trains)."""
    return VOID not in trial.user_attrs and SEEDED not in trial.user_attrs


# Trials enqueued per write (one transaction, one journal append): a million owed trials take 100 writes.
ENQUEUE_BATCH = 10_000


def check_budget(config: Mapping[str, Any]) -> None:
    """Refuse a budget above `study.max_trials` before anything is stored: a typo's extra zeros would otherwise
    enqueue millions of trials (and every listing of the study reads them all)."""
    cfg = typed(config)
    n_trials, ceiling = cfg.study.n_trials, cfg.study.max_trials
    if n_trials > ceiling:
        raise ConfigError(
            f"a budget of {n_trials} trials is above the ceiling of {ceiling} (study.max_trials); to allow it, "
            f"raise the ceiling: --set study.max_trials={n_trials}",
            key="study.n_trials",
        )


def top_up(study: optuna.Study, n_trials: int, report: Callable[[int, int], None] | None = None) -> int:
    """Enqueue empty trials until the budget is met (or void surplus waiting ones); returns # waiting.

    They are written `ENQUEUE_BATCH` at a time; `report(enqueued, owed)` is called after each write when more
    than one is needed, so a large budget shows its progress."""
    trials = study.get_trials(deepcopy=False)
    owed = n_trials - sum(counts(t) for t in trials)
    for done in range(0, max(owed, 0), ENQUEUE_BATCH):
        enqueue_waiting(study, min(ENQUEUE_BATCH, owed - done), {"sweep_enqueued": True})
        if report is not None and owed > ENQUEUE_BATCH:
            report(min(done + ENQUEUE_BATCH, owed), owed)
    if owed < 0:  # the budget was lowered: void the surplus of still-waiting trials, newest first
        for t in sorted((t for t in trials if t.state == TrialState.WAITING), key=lambda t: -t.number)[:-owed]:
            storage_of(study).set_trial_user_attr(trial_id_of(t), VOID, "budget lowered before it started")
            storage_of(study).set_trial_state_values(trial_id_of(t), TrialState.FAIL)
    return sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)) if counts(t))


def pop_trial(
    study: optuna.Study, attrs: Callable[[int], Mapping[str, Any]] | None = None, start: int = 0
) -> optuna.Trial | None:
    """The next WAITING trial of the budget, or None when the budget is used up.

    This is `Study.ask` without its fallback of creating a new trial, which would overrun the budget.
    `attrs(number)`: user attributes of the claimed trial, written with the claim (one transaction on SQL).
    `start`: where this worker begins looking among the waiting trials (its index), so that workers popping at
    once try different trials (SQL skips locked rows instead).
    """
    trial_id = pop_waiting_trial_id(study, attrs, start)
    if trial_id is None:
        return None
    reset_trial_cache(study)  # as ask() does: the sampler must see fresh trials
    return optuna.Trial(study, trial_id)


def retry(
    study: optuna.Study, trial: FrozenTrial, reason: str, max_retries: int, counted: bool = True
) -> int | None:
    """Fail a trial that cannot finish where it ran, and enqueue the same params to resume from its checkpoint.

    Several workers may notice the same dead trial at once; only the one whose RUNNING → FAIL transition
    succeeds enqueues the retry, so a trial is retried once. Returns the retry's queue position, or None.
    `counted=False`: the retry keeps the trial's count of retries (a preempted trial that got further).
    """
    storage = storage_of(study)
    retries = trial.user_attrs.get("sweep_retries", 0)
    try:
        if retries < max_retries:
            storage.set_trial_user_attr(trial_id_of(trial), VOID, reason + RETRIED)
        else:
            storage.set_trial_user_attr(trial_id_of(trial), "fail_reason", f"{reason}; no retries left ({max_retries})")
        storage.set_trial_state_values(trial_id_of(trial), TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return None  # another worker got there first (or the trial did finish)
    if retries >= max_retries:
        return None
    _enqueue_retry(study, trial, counted)
    return trial.number


def _enqueue_retry(study: optuna.Study, trial: FrozenTrial, counted: bool = True) -> None:
    study.enqueue_trial(
        trial.params,
        skip_if_exists=False,
        user_attrs={
            "sweep_retry_of": trial.number,
            "sweep_retries": trial.user_attrs.get("sweep_retries", 0) + (1 if counted else 0),
            "sweep_resume_from": trial.user_attrs.get("trial_dir"),
        },
    )


def restore_retries(study: optuna.Study, settled: Callable[[FrozenTrial], bool]) -> list[int]:
    """Enqueue the retry owed for each trial `retry` voided but whose retry was never written.

    `retry` is two writes, the trial's FAIL and then its retry's enqueue: a process killed between them, or
    refused the second by a disk that filled up again, leaves the budget one trial short and a checkpoint no one
    resumes. `settled(trial)`: whether the process that voided it can no longer be about to write the retry
    (its launch has stopped, or long enough has passed); only those are restored, so none is restored twice.
    """
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("sweep_retry_of") for t in trials}
    restored = []
    for t in trials:
        owed = t.state == TrialState.FAIL and str(t.user_attrs.get(VOID, "")).endswith(RETRIED)
        if owed and t.number not in retried and settled(t):
            _enqueue_retry(study, t)
            restored.append(t.number)
    return restored


def recover_stale(study: optuna.Study, stale_after: float, max_retries: int) -> list[int]:
    """Retry every RUNNING trial whose worker has sent no heartbeat for `stale_after` seconds.

    Optuna's own heartbeat only runs inside `study.optimize()` and not on the journal backend, so sweep
    stamps a `heartbeat` user attribute from each worker and checks it here, for every storage alike.
    """
    now, recovered = time.time(), []
    if now - last_outage_end() < stale_after:  # after a database outage no one could beat: wait for fresh beats
        return recovered
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = t.user_attrs.get("heartbeat") or (t.datetime_start.timestamp() if t.datetime_start else now)
        if (
            now - beat > stale_after
            and retry(study, t, f"no heartbeat for {now - beat:.0f} s", max_retries) is not None
        ):
            recovered.append(t.number)
    return recovered
