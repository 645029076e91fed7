"""Where a study lives and how it searches: storage URL → storage, sampler, pruner, and the trial budget.

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

from sweep.config import ConfigError, Field
from sweep.storage.optuna_private import reset_trial_cache, storage_of, trial_id_of

# A trial carrying this user attribute does not count toward the budget (interrupted, voided, retried);
# its value says why.
VOID = "sweep_void"
CONFIG_ATTR = "sweep_config"

SAMPLERS: dict[str, dict[str, Field]] = {
    "tpe": {
        "n_startup_trials": Field(int, 5, low=0),
        "multivariate": Field(bool, False),
        "constant_liar": Field(bool, True),
    },
    "random": {},
    "grid": {},
    "cmaes": {"n_startup_trials": Field(int, 1, low=0)},
    "qmc": {"qmc_type": Field(str, "sobol", choices=("sobol", "halton")), "scramble": Field(bool, True)},
    "gp": {"n_startup_trials": Field(int, 10, low=0)},
}

_STEPS = {
    "n_startup_trials": Field(int, 5, low=0),
    # 1: judged from the first epoch on (steps count from 1); null: a quarter of train.epochs (see `warmup_steps`)
    "n_warmup_steps": Field(int, 1, low=0, nullable=True),
    "interval_steps": Field(int, 1, low=1),
}
PRUNERS: dict[str, dict[str, Field]] = {
    "median": dict(_STEPS),
    "percentile": {"percentile": Field(float, 25.0, low=0.0, high=100.0), **_STEPS},
    "hyperband": {
        "min_resource": Field(int, 1, low=1),
        "max_resource": Field(int, None, low=1, nullable=True),
        "reduction_factor": Field(int, 3, low=2),
    },
    "successive_halving": {
        "min_resource": Field(int, 1, low=1),
        "reduction_factor": Field(int, 4, low=2),
        "min_early_stopping_rate": Field(int, 0, low=0),
    },
    "none": {},
}


def sampler_params(name: str) -> dict[str, Field]:
    return SAMPLERS[name]


def pruner_params(name: str) -> dict[str, Field]:
    return PRUNERS[name]


# ---- sampler and pruner ------------------------------------------------------------------------------


def make_sampler(config: Mapping[str, Any], worker_index: int = 0) -> optuna.samplers.BaseSampler:
    """Each worker gets seed + worker_index, so parallel workers do not draw the same random trials."""
    from sweep import space

    cfg = config["sampler"]
    seed = None if cfg["seed"] is None else cfg["seed"] + worker_index
    name = cfg["name"]
    if name == "tpe":
        return optuna.samplers.TPESampler(
            n_startup_trials=cfg["n_startup_trials"],
            multivariate=cfg["multivariate"],
            constant_liar=cfg["constant_liar"],
            seed=seed,
        )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(n_startup_trials=cfg["n_startup_trials"], seed=seed)
    if name == "qmc":
        return optuna.samplers.QMCSampler(qmc_type=cfg["qmc_type"], scramble=cfg["scramble"], seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(n_startup_trials=cfg["n_startup_trials"], seed=seed)
    grid = {}
    for param in space.parse(config["search_space"], config):
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


def warmup_steps(config: Mapping[str, Any]) -> int:
    """The median/percentile pruner's n_warmup_steps: the configured one, or (null) a quarter of the epochs.

    The default is 1, Optuna's own behaviour: on benchmarks/pruning.py (100 trials × 12 epochs, a validation
    split of 1000 clips, six sampler seeds) it trains 0.45 of the unpruned study's epochs for a best accuracy
    0.7 points lower; replayed offline on the same curves, 0.41 for 0.48 points, and a quarter (3) 0.59 for
    0.37. A warm-up guards against a noisy validation split: with 200 validation clips, where one clip is half
    a point and a trial's accuracy has a standard error of ~1.8 points, warm-up 1 lost 1.7–2.5 points and a
    quarter 0.5–0.75 (RESULTS.md). null keeps that choice proportional to the schedule for studies that want
    it, and for studies stored with it (`sweep.launch.CHANGED_DEFAULTS`).
    """
    steps = config["pruner"].get("n_warmup_steps")
    return max(1, round(config["train"]["epochs"] / 4)) if steps is None else steps


def make_pruner(config: Mapping[str, Any]) -> optuna.pruners.BasePruner:
    cfg, name = config["pruner"], config["pruner"]["name"]
    steps = {k: cfg[k] for k in _STEPS if k in cfg}
    if "n_warmup_steps" in steps:
        steps["n_warmup_steps"] = warmup_steps(config)
    if name == "median":
        return optuna.pruners.MedianPruner(**steps)
    if name == "percentile":
        return optuna.pruners.PercentilePruner(cfg["percentile"], **steps)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=cfg["min_resource"],
            max_resource=cfg["max_resource"] or config["train"]["epochs"],
            reduction_factor=cfg["reduction_factor"],
        )
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=cfg["min_resource"],
            reduction_factor=cfg["reduction_factor"],
            min_early_stopping_rate=cfg["min_early_stopping_rate"],
        )
    return optuna.pruners.NopPruner()


# ---- the study ---------------------------------------------------------------------------------------


def open_study(config: Mapping[str, Any], storage: optuna.storages.BaseStorage, worker_index: int = 0) -> optuna.Study:
    """The study as a worker runs it: its sampler and pruner, and a SQL storage behind `WorkerCache`."""
    from sweep.storage import worker_cache

    return optuna.load_study(
        study_name=config["study"]["name"],
        storage=worker_cache(storage),
        sampler=make_sampler(config, worker_index),
        pruner=make_pruner(config),
    )


def load_existing(name: str, storage: optuna.storages.BaseStorage, url: str) -> optuna.Study:
    """Open a study for reading; an unknown name lists the studies that storage does hold."""
    from sweep.storage import mask

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
    """Whether a trial uses up one unit of the study's trial budget."""
    return VOID not in trial.user_attrs


# Trials enqueued per write (one transaction, one journal append): a million owed trials take 100 writes.
ENQUEUE_BATCH = 10_000


def check_budget(config: Mapping[str, Any]) -> None:
    """Refuse a budget above `study.max_trials` before anything is stored: a typo's extra zeros would otherwise
    enqueue millions of trials (and every listing of the study reads them all)."""
    n_trials, ceiling = config["study"]["n_trials"], config["study"]["max_trials"]
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
    from sweep.storage import enqueue_waiting

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
    from sweep.storage import pop_waiting_trial_id

    trial_id = pop_waiting_trial_id(study, attrs, start)
    if trial_id is None:
        return None
    reset_trial_cache(study)  # as ask() does: the sampler must see fresh trials
    return optuna.Trial(study, trial_id)


def retry(study: optuna.Study, trial: FrozenTrial, reason: str, max_retries: int) -> int | None:
    """Fail a trial that cannot finish where it ran, and enqueue the same params to resume from its checkpoint.

    Several workers may notice the same dead trial at once; only the one whose RUNNING → FAIL transition
    succeeds enqueues the retry, so a trial is retried once. Returns the retry's queue position, or None.
    """
    storage = storage_of(study)
    retries = trial.user_attrs.get("sweep_retries", 0)
    try:
        if retries < max_retries:
            storage.set_trial_user_attr(trial_id_of(trial), VOID, f"{reason}; retried with the same params")
        else:
            storage.set_trial_user_attr(trial_id_of(trial), "fail_reason", f"{reason}; no retries left ({max_retries})")
        storage.set_trial_state_values(trial_id_of(trial), TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return None  # another worker got there first (or the trial did finish)
    if retries >= max_retries:
        return None
    study.enqueue_trial(
        trial.params,
        skip_if_exists=False,
        user_attrs={
            "sweep_retry_of": trial.number,
            "sweep_retries": retries + 1,
            "sweep_resume_from": trial.user_attrs.get("trial_dir"),
        },
    )
    return trial.number


def recover_stale(study: optuna.Study, stale_after: float, max_retries: int) -> list[int]:
    """Retry every RUNNING trial whose worker has sent no heartbeat for `stale_after` seconds.

    Optuna's own heartbeat only runs inside `study.optimize()` and not on the journal backend, so sweep
    stamps a `heartbeat` user attribute from each worker and checks it here, for every storage alike.
    """
    from sweep.storage import last_outage_end

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
