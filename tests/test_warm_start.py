"""`sweep launch FILE --warm-start STUDY[,STUDY…]`: earlier studies' complete trials seed a new one.

End to end through the real CLI on real SQLite (and PostgreSQL as the second storage, skipped without its
server): which trials are kept, clipped or skipped by the rule, their provenance, the budget they leave alone,
that TPE leaves its random startup phase on them, and every bad source refused with nothing created.
"""

from __future__ import annotations

import copy
import math
import os
import uuid
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from conftest import TINY, sweep_cli
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from sweep.config.resolve import resolve
from sweep.run.launch import create_or_resume
from sweep.search import space
from sweep.search.strategy import make_sampler
from sweep.search.study import SEEDED, SEEDED_RULE, counts
from sweep.search.warm_start import Skip, convert, fit
from sweep.storage import open_storage

PG = os.environ.get("SWEEP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")

OLD_SPACE = {
    "train.lr": {"type": "float", "low": 1.0e-3, "high": 3.0e-2, "log": True},
    "augment.strength": {"type": "float", "low": 0.0, "high": 1.0},
    "train.optimizer": ["adam", "sgd"],
}
# Narrowed: lr to [3e-3, 1e-2] (log width ln(10/3) = 1.20, so values within a factor e^0.12 = 1.128 of a bound
# are clipped), strength to [0, 0.6] (clipped within 0.06), sgd no longer offered.
NEW_SPACE = {
    "train.lr": {"type": "float", "low": 3.0e-3, "high": 1.0e-2, "log": True},
    "augment.strength": {"type": "float", "low": 0.0, "high": 0.6},
    "train.optimizer": ["adam", "adamw"],
}
# The deliberate old trials: (lr, strength, optimizer) → what the rule does with them.
OLD_TRIALS = [
    ((5.0e-3, 0.3, "adam"), "kept"),
    ((2.8e-3, 0.3, "adam"), "clipped: train.lr 0.0028 → 0.003"),
    ((5.0e-3, 0.62, "adam"), "clipped: augment.strength 0.62 → 0.6"),
    ((1.0e-3, 0.3, "adam"), "train.lr outside the new range"),
    ((5.0e-3, 0.9, "adam"), "augment.strength outside the new range"),
    ((5.0e-3, 0.3, "sgd"), "train.optimizer choice not offered"),
]


def _raw(name: str, search_space: dict, **study: Any) -> dict:
    raw = copy.deepcopy(TINY)
    raw["study"].update(name=name, **study)
    raw["search_space"] = copy.deepcopy(search_space)
    raw["sampler"]["n_startup_trials"] = 3
    raw["executor"] = {"name": "debug"}
    return raw


def _file(home: Path, name: str, search_space: dict, **study: Any) -> Path:
    path = home / f"{name}.yaml"
    path.write_text(yaml.safe_dump(_raw(name, search_space, **study), sort_keys=False))
    return path


def _old_trials(config: dict) -> list[optuna.trial.FrozenTrial]:
    dists = {p.path: p.distribution for p in space.parse(config["search_space"], config)}
    return [
        optuna.trial.create_trial(
            params=dict(zip(("train.lr", "augment.strength", "train.optimizer"), params)),
            distributions=dists, value=0.5 + i / 100, intermediate_values={1: 0.4, 2: 0.5 + i / 100},
        )
        for i, (params, _) in enumerate(OLD_TRIALS)
    ]


def _made(name: str, url: str, search_space: dict = OLD_SPACE, trials: bool = True, **study: Any) -> optuna.Study:
    """A study as sweep creates it (its config stored), holding the deliberate old trials."""
    config = resolve(_raw(name, search_space, **study), name)
    made = create_or_resume(config, open_storage(url), url)
    if trials:
        made.add_trials(_old_trials(config))
    return made


def _sqlite(home: Path, name: str) -> str:
    return f"sqlite:///{home}/studies/{name}/study.db"


def _random_first(search_space: dict, name: str) -> dict:
    """What a sampler seeded 0 draws first from nothing, in the order the worker draws: TPE's startup phase."""
    config = resolve(_raw(name, search_space), name)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    return space.suggest(study.ask(), space.parse(config["search_space"], config), config)


# ---- end to end ----------------------------------------------------------------------------------------


def test_a_narrowed_study_is_seeded_by_the_rule_and_tpe_models_the_seeded_trials(home: Path) -> None:
    cold = sweep_cli("launch", str(_file(home, "cold", OLD_SPACE)), "--trials", "1", cwd=home)
    assert cold.returncode == 0, cold.stderr
    url = _sqlite(home, "cold")
    old = optuna.load_study(study_name="cold", storage=url)
    (real,) = old.get_trials()  # its one trial came from TPE's random startup phase: our replay of it matches
    assert real.params == pytest.approx(_random_first(OLD_SPACE, "cold"))
    old.add_trials(_old_trials(resolve(_raw("cold", OLD_SPACE), "cold")))
    _made("empty", _sqlite(home, "empty"), trials=False)  # a source with nothing finished: a warning only

    warm_file = _file(home, "warm", NEW_SPACE)
    run = sweep_cli("launch", str(warm_file), "--warm-start", "cold,empty", "--trials", "2", cwd=home)
    assert run.returncode == 0, run.stderr
    assert "warning: warm start from empty@" in run.stderr and "no complete trial" in run.stderr

    lr, strength, optimizer = real.params["train.lr"], real.params["augment.strength"], real.params["train.optimizer"]
    real_fits = (  # the rule, restated: within 10 % of each range's width of it (log width for lr), adam
        math.log(3e-3) - 0.1 * math.log(10 / 3) <= math.log(lr) <= math.log(1e-2) + 0.1 * math.log(10 / 3)
        and strength <= 0.66 and optimizer == "adam"
    )
    study = optuna.load_study(study_name="warm", storage=_sqlite(home, "warm"))
    seeded = {t.user_attrs[SEEDED]: t for t in study.get_trials() if SEEDED in t.user_attrs}
    expected = {f"cold@{url}#{i + 1}": outcome for i, (_, outcome) in enumerate(OLD_TRIALS)}
    kept = {k: v for k, v in expected.items() if v == "kept" or v.startswith("clipped")}
    assert set(seeded) - {f"cold@{url}#0"} == set(kept)
    assert (f"cold@{url}#0" in seeded) == real_fits
    for source, rule in kept.items():
        t = seeded[source]
        assert t.user_attrs[SEEDED_RULE] == rule
        assert t.state == TrialState.COMPLETE and not counts(t)
        assert t.distributions == {p: (FloatDistribution(3e-3, 1e-2, log=True) if p == "train.lr" else
                                       FloatDistribution(0.0, 0.6) if p == "augment.strength" else
                                       CategoricalDistribution(("adam", "adamw"))) for p in NEW_SPACE}
        number = int(source.rsplit("#", 1)[1])
        assert t.value == old.trials[number].value and t.intermediate_values == old.trials[number].intermediate_values
    assert seeded[f"cold@{url}#2"].params["train.lr"] == 3e-3  # clipped onto the bound exactly
    skipped = {v for v in expected.values() if v not in kept.values()}
    line = next(x for x in run.stdout.splitlines() if x.startswith("warm start from cold@"))
    assert f"seeded {len(seeded)} " in line and all(f"{why}: " in line for why in skipped), line

    own = [t for t in study.get_trials() if SEEDED not in t.user_attrs]
    assert len(own) == 2 and all(t.state.is_finished() for t in own)  # the budget is the study's own trials
    assert all(t.number > max(s.number for s in seeded.values()) for t in own)  # seeded before any worker ran
    # n_startup_trials 3 <= the seeded trials: TPE's first trial is drawn from its model of them, not at random
    assert len(seeded) >= 3
    first = min(own, key=lambda t: t.number)
    assert first.params != _random_first(NEW_SPACE, "warm")
    config = resolve(_raw("warm", NEW_SPACE), "warm")
    replay = optuna.create_study(direction="maximize", sampler=make_sampler(config))  # the worker's TPE, seed 0
    replay.add_trials([optuna.trial.create_trial(params=t.params, distributions=t.distributions, value=t.value)
                       for t in sorted(seeded.values(), key=lambda t: t.number)])
    assert first.params == pytest.approx(space.suggest(replay.ask(), space.parse(NEW_SPACE, config), config))

    status = sweep_cli("status", "warm", cwd=home)
    assert f"{len(seeded)} seeded by a warm start (not counted)" in status.stdout
    assert f"best: trial {max(own, key=lambda t: t.value or -1).number}," in status.stdout or all(
        t.state != TrialState.COMPLETE for t in own)
    report = sweep_cli("report", "warm", cwd=home)
    assert report.returncode == 0, report.stderr
    page = (home / "studies" / "warm" / "report.html").read_text()
    assert f"{len(seeded)} seeded from cold@{url}" in page
    assert "complete (seeded)" in page and f"seeded from cold@{url}#2: clipped: train.lr 0.0028 → 0.003" in page

    again = sweep_cli("launch", str(warm_file), "--warm-start", "cold", cwd=home)  # into a non-empty study
    assert again.returncode == 2 and "use a new study name" in again.stderr, again.stderr
    assert len(optuna.load_study(study_name="warm", storage=_sqlite(home, "warm")).get_trials()) == len(study.trials)


# ---- bad sources, refused before anything is created ------------------------------------------------------


def _refused(home: Path, *args: str) -> str:
    run = sweep_cli("launch", str(_file(home, "new", NEW_SPACE)), *args, cwd=home)
    assert run.returncode == 2, run.stdout + run.stderr
    assert not (home / "studies" / "new").exists()  # no study, no folder, no database file
    return run.stderr


def test_bad_warm_starts_are_refused_before_anything_is_created(home: Path) -> None:
    _made("there", _sqlite(home, "there"))
    err = _refused(home, "--warm-start", "nosuch")
    assert "--warm-start nosuch: no study named 'nosuch'" in err and "there" in err
    err = _refused(home, "--warm-start", f"nosuch@{_sqlite(home, 'there')}")
    assert "no study named 'nosuch'" in err and "(studies there: there)" in err

    _made("lossy", _sqlite(home, "lossy"), metric="val_loss")
    err = _refused(home, "--warm-start", "there,lossy")
    assert "--warm-start lossy" in err and "optimizes minimize val_loss, this study maximize val_acc" in err
    _made("f1", _sqlite(home, "f1"), metric="val_f1")
    assert "optimizes maximize val_f1" in _refused(home, "--warm-start", "f1")
    other = _made("other", _sqlite(home, "other"))  # the same metric stored with another direction or objectives
    stored = other.user_attrs["sweep_config"]
    other.set_user_attr("sweep_config", dict(stored, study=dict(stored["study"], direction="minimize")))
    assert "optimizes minimize val_acc" in _refused(home, "--warm-start", "other")
    other.set_user_attr("sweep_config", dict(stored, study=dict(stored["study"], metrics=["val_acc", "params_mb"])))
    assert "(study.metrics ['val_acc', 'params_mb'])" in _refused(home, "--warm-start", "other")

    assert "is not a storage URL" in _refused(home, "--warm-start", "there@nowhere")
    err = _refused(home, "--warm-start", "there@postgresql://u:s3cret@127.0.0.1:1/none")  # nothing listens there
    assert "--warm-start there@postgresql://u:***@127.0.0.1:1/none: cannot open storage" in err
    assert "s3cret" not in err
    assert "no such file" in _refused(home, "--warm-start", "missing.yaml")
    assert "an empty study name" in _refused(home, "--warm-start", "there,")
    assert "does not exist" in _refused(home, "--warm-start", f"there@journal:///{home}/none.log")
    assert not (home / "none.log").exists()


def test_a_study_file_names_its_source(home: Path) -> None:
    """A study's YAML file as the source: its name and storage as the file resolves them."""
    _made("there", _sqlite(home, "there"))
    file = _file(home, "there", OLD_SPACE)
    new = _file(home, "fromfile", NEW_SPACE)
    from sweep.search.warm_start import parse_sources, plan

    config = resolve(_raw("fromfile", NEW_SPACE), str(new))
    (source,) = parse_sources(str(file), None, config)
    assert (source.name, source.url) == ("there", _sqlite(home, "there"))
    (result,) = plan(config, [source])
    assert len(result.trials) == 3 and result.rules == {"kept": 1, "clipped": 2}
    assert not result.differs
    # Multivariate TPE and CMA-ES model the intersection of the trials' distributions: the seeded trials keep every
    # param in it, where the old trials copied as they are (Optuna's add_trials) would drop the narrowed ones.
    new_space = {p.path: p.distribution for p in space.parse(config["search_space"], config)}
    fresh = optuna.trial.create_trial(params={"train.lr": 5e-3, "augment.strength": 0.1, "train.optimizer": "adamw"},
                                      distributions=new_space, value=0.7)
    assert optuna.search_space.intersection_search_space([*result.trials, fresh]) == new_space
    copied = _old_trials(resolve(_raw("there", OLD_SPACE), "there"))
    assert optuna.search_space.intersection_search_space([*copied, fresh]) == {}  # every range changed: none left
    config["train"]["epochs"] = 5  # a setting neither study searches, changed: said, not refused
    (result,) = plan(config, [source])
    assert result.differs == ["train.epochs=3 (this study: 5)"] and len(result.trials) == 3
    assert "; note: its trials ran with train.epochs=3 (this study: 5)" in result.line()


# ---- the rule, param by param --------------------------------------------------------------------------


def test_fit_keeps_clips_rounds_or_skips() -> None:
    lin = FloatDistribution(0.0, 1.0)
    assert fit("x", 0.5, lin) == (0.5, None)
    assert fit("x", 1.05, lin) == (1.0, "x 1.05 → 1")
    assert fit("x", -0.1, lin) == (0.0, "x -0.1 → 0")  # exactly 10 % of the width: still clipped
    for far in (1.2, -0.2):
        with pytest.raises(Skip, match="x outside the new range"):
            fit("x", far, lin)
    assert fit("n", 5, IntDistribution(0, 8, step=2)) == (4, "n 5 → 4")  # onto the new step's grid
    assert fit("n", 3, FloatDistribution(0.0, 8.0)) == (3.0, None)  # an int into a float: the same value
    with pytest.raises(Skip, match="not a number"):
        fit("n", "a", lin)
    with pytest.raises(Skip, match="choice not offered"):
        fit("c", 1, CategoricalDistribution((True, 2)))  # 1 == True, but not the choice True


def test_convert_fills_from_the_old_config_and_drops_only_what_the_new_study_fixes() -> None:
    new = resolve(_raw("n", {"train.lr": NEW_SPACE["train.lr"], "model.width": {"type": "int", "low": 4, "high": 8}}),
                  "n")
    new["augment"]["strength"] = 0.5
    old = resolve(_raw("o", {"train.lr": OLD_SPACE["train.lr"], "augment.strength": OLD_SPACE["augment.strength"]}),
                  "o")
    params = space.parse(new["search_space"], new)
    trial = optuna.trial.create_trial(params={"train.lr": 5e-3, "augment.strength": 0.5}, distributions={
        "train.lr": FloatDistribution(1e-3, 3e-2, log=True), "augment.strength": FloatDistribution(0, 1)}, value=0.6)
    drawn, changes = convert(trial, params, new, old)
    assert drawn == {"train.lr": 5e-3, "model.width": 4}  # the old study trained width 4, its fixed value
    assert changes == ["filled: model.width 4 (its study's fixed value)",
                       "dropped: augment.strength 0.5 (this study's fixed value)"]
    new["augment"]["strength"] = 0.7
    with pytest.raises(Skip, match="augment.strength differs from this study's fixed value"):
        convert(trial, params, new, old)
    old["search_space"]["model.width"] = {"type": "int", "low": 1, "high": 8}  # searched there, not drawn here
    with pytest.raises(Skip, match="model.width missing"):
        convert(trial, params, new, old)


# ---- another storage: PostgreSQL -------------------------------------------------------------------------


def _pg_or_skip() -> None:
    try:
        open_storage(PG)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no PostgreSQL at {PG}: {exc}")


def test_warm_start_from_a_study_in_postgresql(home: Path) -> None:
    _pg_or_skip()
    name = f"warm-src-{uuid.uuid4().hex[:8]}"
    try:
        _made(name, PG)
        err = _refused(home, "--warm-start", f"nosuch-{name}@{PG}")
        assert f"no study named 'nosuch-{name}'" in err and name in err  # the studies of that storage, listed
        run = sweep_cli("launch", str(_file(home, "frompg", NEW_SPACE)), "--warm-start", f"{name}@{PG}",
                        "--trials", "1", cwd=home)
        assert run.returncode == 0, run.stderr
        study = optuna.load_study(study_name="frompg", storage=_sqlite(home, "frompg"))
        seeded = sorted(t.user_attrs[SEEDED] for t in study.trials if SEEDED in t.user_attrs)
        assert seeded == [f"{name}@{PG}#{i}" for i in (0, 1, 2)]
        assert sum(counts(t) for t in study.trials) == 1
    finally:
        optuna.delete_study(study_name=name, storage=open_storage(PG))
