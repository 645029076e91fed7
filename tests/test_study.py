"""Every sampler and pruner on a real search space, and the exact trial budget."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from test_storage import _commits, _url_for, mysql, pg  # noqa: F401  (the database servers' fixtures)

from sweep.config.resolve import resolve
from sweep.schema import ConfigError
from sweep.search import space
from sweep.search.pruners import PRUNERS
from sweep.search.samplers import SAMPLERS
from sweep.search.strategy import make_pruner, make_sampler
from sweep.search.study import VOID, pop_trial, top_up
from sweep.storage import open_storage, resolve_storage

SPACE = {
    "train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-1, "log": True},
    "train.weight_decay": {"type": "float", "low": 0.0, "high": 0.1, "step": 0.05},
    "model.depth": {"type": "int", "low": 1, "high": 3},
    "train.optimizer": ["adamw", "sgd"],
    "train.momentum": {"type": "float", "low": 0.5, "high": 0.9, "step": 0.2, "when": {"train.optimizer": "sgd"}},
}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_draws_from_the_search_space(name: str, tmp_path: Path) -> None:
    """Through the budget's own path, as workers draw: WAITING trials enqueued by `top_up`, claimed by `pop_trial`
    (the grid sampler failed every such trial: it took their empty enqueued params for a fixed point)."""
    from sweep.search.study import pop_trial, top_up
    from sweep.storage import open_storage

    search = SPACE if name != "grid" else {k: v for k, v in SPACE.items() if k != "train.lr"}
    config = resolve({"sampler": {"name": name, "seed": 1}, "search_space": search}, "test")
    params = space.parse(config["search_space"], config)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(config),
                                storage=open_storage(f"sqlite:///{tmp_path / 'study.db'}"))
    top_up(study, 6)
    drawn_all = []
    while (trial := pop_trial(study)) is not None:
        drawn = space.suggest(trial, params, config)
        assert 1 <= drawn["model.depth"] <= 3
        assert ("train.momentum" in drawn) == (drawn["train.optimizer"] == "sgd")
        study.tell(trial, float(drawn["model.depth"]))
        drawn_all.append(tuple(sorted(drawn.items())))
    assert len(study.trials) == 6 and all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    if name == "grid":
        assert len(set(drawn_all)) == 6  # six points of the grid, none twice


def test_grid_sampler_refuses_a_continuous_float() -> None:
    config = resolve({"sampler": {"name": "grid"}, "search_space": SPACE}, "test")
    with pytest.raises(ConfigError, match="grid sampler needs"):
        make_sampler(config)


@pytest.mark.parametrize("name", sorted(PRUNERS))
def test_every_pruner_builds(name: str) -> None:
    study = {"cv": 2} if name == "wilcoxon" else {}  # Wilcoxon compares fold by fold: it needs study.cv
    config = resolve({"pruner": {"name": name}, "train": {"epochs": 7}, "study": study}, "test")
    pruner = make_pruner(config)
    assert isinstance(pruner, optuna.pruners.BasePruner)
    if name == "hyperband":
        assert pruner._max_resource == 7  # null max_resource follows train.epochs


def test_budget_is_exact_and_can_be_lowered(home: Path) -> None:
    study = optuna.create_study(study_name="b", storage=open_storage(resolve_storage("b")))
    assert top_up(study, 3) == 3
    assert top_up(study, 3) == 3  # idempotent
    first = pop_trial(study)
    study.tell(first, 1.0)
    assert top_up(study, 2) == 1  # lowered: one waiting trial is voided
    voided = [t for t in study.get_trials() if VOID in t.user_attrs]
    assert len(voided) == 1 and voided[0].state == TrialState.FAIL
    assert pop_trial(study) is not None
    assert pop_trial(study) is None  # the budget is used up: no new trial is created
    assert len(study.get_trials()) == 3


@pytest.mark.parametrize("backend", ["sqlite", "pg", "mysql", "journal"])
def test_a_large_budget_is_enqueued_in_a_few_writes_with_progress(backend: str, request: pytest.FixtureRequest) -> None:
    """25,001 trials in three writes (not 25,001), each what Optuna's `enqueue_trial` stores but its empty
    `fixed_params`, numbered on from the trials already there; a worker pops them as any other."""
    from sweep.search.study import ENQUEUE_BATCH

    storage = open_storage(_url_for(backend, request))
    study = optuna.create_study(study_name="big", storage=storage)
    study.enqueue_trial({}, user_attrs={"sweep_enqueued": True})  # Optuna's own, to compare with
    writes, reports = _commits(study._storage), []
    owed = 2 * ENQUEUE_BATCH + 1
    assert top_up(study, owed + 1, lambda done, total: reports.append((done, total))) == owed + 1
    assert writes[0] == 3
    assert reports == [(ENQUEUE_BATCH, owed), (2 * ENQUEUE_BATCH, owed), (owed, owed)]
    trials = optuna.load_study(study_name="big", storage=open_storage(_url_for(backend, request))).get_trials()
    assert [t.number for t in trials] == list(range(owed + 1))
    ours, theirs = trials[1], trials[0]
    for field in ("state", "params", "user_attrs", "intermediate_values", "datetime_start", "value"):
        assert getattr(ours, field) == getattr(theirs, field), field
    assert ours.system_attrs == {}  # no empty `fixed_params`: GridSampler would take it for a given point
    assert pop_trial(study).number == 0 and pop_trial(study).number == 1


def test_a_budget_above_the_ceiling_is_refused_unless_raised(home: Path) -> None:
    from conftest import sweep_cli

    (home / "s.yaml").write_text("study: {name: s}\n")
    huge = sweep_cli("launch", "s.yaml", "--trials", "100000000", cwd=home)
    assert huge.returncode == 2, huge.stderr
    assert "100000000" in huge.stderr and "study.max_trials" in huge.stderr
    assert "--set study.max_trials=100000000" in huge.stderr
    assert not (home / "studies" / "s").exists()  # refused before anything was stored


def test_a_preempted_trial_that_progressed_is_retried_without_using_up_a_retry(tmp_path: Path) -> None:
    """A trial may span any number of time limits or preemptions as long as it trains an epoch in each; stopped
    before any progress, each stop uses up a retry, so a time limit shorter than an epoch ends, not loops."""
    from sweep.run.worker import progressed
    from sweep.search.study import retry

    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", study_name="s", direction="maximize")
    study.enqueue_trial({"x": 1.0}, user_attrs={"sweep_retries": 1, "sweep_resumed_at_epoch": 2})
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 2)})
    for epoch in (1, 2):  # the epochs it resumed after, reported again
        trial.report(0.5, epoch)
    stuck = study._storage.get_trial(trial._trial_id)
    assert not progressed(stuck)
    trial.report(0.6, 3)
    moved = study._storage.get_trial(trial._trial_id)
    assert progressed(moved)
    assert retry(study, moved, "preempted", max_retries=3, counted=False) == trial.number
    (again,) = [t for t in study.get_trials() if t.user_attrs.get("sweep_retry_of") == trial.number]
    assert again.user_attrs["sweep_retries"] == 1  # unchanged
    assert VOID in study.get_trials()[trial.number].user_attrs

    # cross-validated under Wilcoxon: one report per fold, the epochs counted in cv_epochs (sweep.run.cv)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", study_name="cv", direction="maximize")
    study.enqueue_trial({"x": 1.0}, user_attrs={"sweep_resumed_at_epoch": 13})  # fold 1's 10 epochs, 3 of fold 2
    folds = study.ask({"x": optuna.distributions.FloatDistribution(0, 2)})
    folds.report(0.5, 1)  # fold 1 again, from its checkpoint
    folds.set_user_attr("cv_epochs", 13)
    assert not progressed(study._storage.get_trial(folds._trial_id))
    folds.set_user_attr("cv_epochs", 14)  # an epoch of fold 2 trained, no report: it progressed
    assert progressed(study._storage.get_trial(folds._trial_id))
