"""Multi-objective studies: accuracy against size and latency, pruned by sweep's dominance rule, constrained by
hard limits, a trial picked from the Pareto front; bad input refused before any trial."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import yaml
from conftest import TINY, sweep_cli
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from sweep.search import pareto
from sweep.search.dominance import DominancePruner
from sweep.search.objectives import CURVE, STATIC, curve, static

WIDTHS = {"type": "int", "low": 2, "high": 12}


def _write(home: Path, study: dict, **sections: dict) -> Path:
    config = copy.deepcopy(TINY)
    config["study"].update(study)
    config["search_space"]["model.width"] = dict(WIDTHS)
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    path = home / "tiny.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _study(home: Path) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{home}/studies/tiny/study.db")


def _counted(home: Path) -> list[FrozenTrial]:
    return [t for t in _study(home).get_trials() if "sweep_void" not in t.user_attrs]


# ---- through `sweep launch` --------------------------------------------------------------------------


def test_a_two_objective_study_finishes_with_both_values(home: Path) -> None:
    path = _write(home, {"metrics": ["val_acc", "params_mb"], "n_trials": 4}, executor={"name": "debug"})
    run = sweep_cli("launch", str(path), cwd=home)
    assert run.returncode == 0, run.stdout + run.stderr
    study = _study(home)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    counted = _counted(home)
    trials = [t for t in counted if t.state == TrialState.COMPLETE]
    assert len(counted) == 4 and len(trials) >= 2
    for t in counted:
        assert static(t)["params_mb"] > 0 and curve(t)  # a pruned trial keeps its static value and its curve
        if t.state == TrialState.PRUNED:
            assert t.values is None and len(curve(t)) == t.user_attrs["epochs_run"] < 3
    for t in trials:
        acc, size = t.values
        assert size == static(t)["params_mb"] > 0
        assert acc == max(curve(t).values()) and sorted(curve(t)) == [1, 2, 3]  # the best epoch's, every epoch
        assert t.intermediate_values == {}  # Optuna holds none for a multi-objective trial: sweep's curve does
    sizes = {t.params["model.width"]: static(t)["params_mb"] for t in counted}
    assert len(set(sizes.values())) == len(sizes)  # the size is the trial's own model's: it follows model.width

    # the picks: `--pick` changes which trial sweep best writes, and sweep final trains the one picked
    smallest = min(trials, key=lambda t: static(t)["params_mb"])
    limit = static(smallest)["params_mb"]
    best = sweep_cli("best", "tiny", "--pick", f"max:params_mb={limit}", cwd=home)
    assert best.returncode == 0 and f"best trial {smallest.number}:" in best.stdout, best.stdout + best.stderr
    assert f"(--pick max:params_mb={limit})" in (home / "studies/tiny/best.yaml").read_text()
    final = sweep_cli("final", "tiny", "--pick", f"max:params_mb={limit}", "--epochs", "1", cwd=home)
    assert final.returncode == 0, final.stdout + final.stderr
    summary = json.loads((home / "studies/tiny/final/summary.json").read_text())
    assert summary["trial"] == smallest.number and summary["params"] == smallest.params
    report = sweep_cli("report", "tiny", cwd=home)
    assert report.returncode == 0 and "not drawn yet" not in report.stdout, report.stdout + report.stderr
    page = (home / "studies/tiny/report.html").read_text()
    assert 'id="plot-pareto"' in page and "maximize <b>val_acc</b>, minimize params_mb" in page
    bad = sweep_cli("best", "tiny", "--pick", "max:flops=3", cwd=home)
    assert bad.returncode == 2 and "'flops' is not measured in this study" in bad.stderr, bad.stderr


def test_a_constraint_stops_a_trial_over_the_limit_before_its_first_epoch(home: Path) -> None:
    """`study.constraints: {params_mb: {max: M}}` with M between the smallest and the largest width's size: the
    trials over it are pruned untrained, with their constraint values set for the sampler; the rest train."""
    limit = 0.004  # MiB: TINY's CNN of width 2 is 0.0004, of 8 0.005, of 12 0.011
    path = _write(home, {"metrics": ["val_acc", "params_mb"], "n_trials": 6,
                         "constraints": {"params_mb": {"max": limit}}}, executor={"name": "debug"})
    run = sweep_cli("launch", str(path), cwd=home)
    assert run.returncode == 0, run.stdout + run.stderr
    trials = _counted(home)
    over = [t for t in trials if static(t)["params_mb"] > limit]
    under = [t for t in trials if static(t)["params_mb"] <= limit]
    assert over and under, [static(t) for t in trials]
    for t in over:
        assert t.state == TrialState.PRUNED and not curve(t) and t.user_attrs["epochs_run"] == 0
        assert t.constraints["params_mb.max"] == pytest.approx(static(t)["params_mb"] - limit)
    for t in under:
        assert t.state == TrialState.COMPLETE and len(curve(t)) == 3 and t.constraints["params_mb.max"] <= 0
    assert "infeasible before its first epoch: params_mb max" in run.stdout
    assert {t.number for t in _study(home).best_trials} <= {t.number for t in under}


@pytest.mark.parametrize(
    ("study", "expected"),
    [
        ({"metrics": ["val_acc", "flops"]}, "`study.metrics`: sweep cannot compute metric 'flops'"),
        ({"metrics": ["params_mb", "val_acc"]}, "the first metric is the one trained and scored each epoch"),
        ({"metrics": ["val_acc", "val_f1"]}, "only the first metric is scored each epoch"),
        ({"metrics": ["val_acc", "params_mb"], "directions": ["maximize"]}, "1 directions for 2 metrics"),
        ({"metrics": ["val_acc", "params_mb"], "directions": ["maximize", "maximize"]},
         "metric params_mb must be minimized, not maximized"),
        ({"metrics": ["val_acc", "params_mb"], "constraints": {"size_mb": {"max": 5}}},
         "`study.constraints.size_mb`: no constraint on unknown metric 'size_mb'"),
        ({"metrics": ["val_acc", "params_mb"], "constraints": {"val_acc": {"min": 0.5}}},
         "val_acc is known only when training ends"),
        ({"metrics": ["val_acc", "params_mb"], "metric": "val_f1"}, "give either study.metric"),
    ],
)
def test_bad_objectives_are_refused_before_any_trial(home: Path, study: dict, expected: str) -> None:
    path = _write(home, study)
    run = sweep_cli("launch", str(path), cwd=home)
    assert run.returncode == 2 and expected in run.stderr, run.stderr
    assert not (home / "studies" / "tiny").exists()


@pytest.mark.parametrize(("section", "expected"), [
    ({"pruner": {"name": "hyperband"}}, "`pruner.name`: pruner hyperband needs a single objective"),
    ({"sampler": {"name": "cmaes"}}, "`sampler.name`: sampler cmaes takes a single objective"),
])
def test_a_pruner_or_sampler_that_needs_one_objective_is_refused(home: Path, section: dict, expected: str) -> None:
    path = _write(home, {"metrics": ["val_acc", "params_mb"]})
    config = {**yaml.safe_load(path.read_text()), **section}
    path.write_text(yaml.safe_dump(config))
    run = sweep_cli("launch", str(path), cwd=home)
    assert run.returncode == 2 and expected in run.stderr, run.stderr
    assert not (home / "studies" / "tiny").exists()


# ---- kill and resume ---------------------------------------------------------------------------------


def _trials_now(home: Path) -> list[FrozenTrial]:
    try:
        return _study(home).get_trials()
    except (KeyError, sqlalchemy.exc.SQLAlchemyError):  # the launcher is still creating the study
        return []


def test_a_killed_multi_objective_trial_resumes_with_its_curve_and_static_values(home: Path) -> None:
    """latency_ms is measured anew on every measurement (a median of timings): the resumed trial carrying the
    killed one's exact value shows it was kept, not measured again."""
    path = _write(home, {"metrics": ["val_acc", "params_mb", "latency_ms"], "n_trials": 2},
                  executor={"workers": 1, "heartbeat_seconds": 0.5, "stale_after_seconds": 4},
                  train={"epochs": 30}, pruner={"n_warmup_steps": 100})
    launcher = subprocess.Popen([sys.executable, "-m", "sweep", "launch", str(path)], cwd=home,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, victim = time.time() + 120, None
    while victim is None and time.time() < deadline and launcher.poll() is None:
        running = [t for t in _trials_now(home) if t.state == TrialState.RUNNING and len(curve(t)) >= 2]
        victim = next((t for t in running if "pid" in t.user_attrs), None)
        time.sleep(0.05)
    assert victim is not None, launcher.communicate()[0]
    os.kill(victim.user_attrs["pid"], signal.SIGKILL)
    out, _ = launcher.communicate(timeout=240)
    assert launcher.returncode == 0, out
    trials = _study(home).get_trials()
    lost = next(t for t in trials if t.number == victim.number)
    (again,) = [t for t in trials if t.user_attrs.get("sweep_retry_of") == lost.number]
    assert again.state == TrialState.COMPLETE and again.params == lost.params
    assert static(again) == static(lost) and set(static(lost)) == {"params_mb", "latency_ms"}
    assert again.values[1:] == [static(lost)["params_mb"], static(lost)["latency_ms"]]
    assert len(curve(again)) == 30
    for step, value in curve(lost).items():  # re-reported from the checkpoint, not retrained
        assert curve(again)[step] == value


# ---- the rule and the picks, on constructed trials -----------------------------------------------------


def _trial(number: int, values: list[float], size: float, state: TrialState = TrialState.COMPLETE) -> FrozenTrial:
    """A trial whose primary metric per epoch is `values`, with static objective params_mb = `size`."""
    t = optuna.trial.create_trial(
        state=state,
        values=None if state != TrialState.COMPLETE else [max(values), size],
        params={"x": float(number)},
        distributions={"x": FloatDistribution(0, 100)},
        user_attrs={CURVE: {str(i + 1): v for i, v in enumerate(values)}, STATIC: {"params_mb": size}},
    )
    t.number = number
    return t


def test_a_small_model_is_not_pruned_for_being_less_accurate_than_big_ones() -> None:
    rule = DominancePruner(["params_mb"], n_startup_trials=2, n_warmup_steps=1)
    big = [_trial(i, [0.8, 0.9], size=10.0) for i in range(4)]
    small = _trial(9, [0.3], size=1.0, state=TrialState.RUNNING)
    assert not rule.judge(small, [*big, small], maximize=True)  # every other trial is bigger: no peer
    bigger_still = _trial(8, [0.3], size=20.0, state=TrialState.RUNNING)
    assert rule.judge(bigger_still, [*big, bigger_still], maximize=True)  # its peers are smaller and better


def test_a_trial_below_the_median_of_its_static_peers_is_pruned() -> None:
    rule = DominancePruner(["params_mb"], n_startup_trials=2, n_warmup_steps=1)
    peers = [_trial(0, [0.5, 0.6], 1.0), _trial(1, [0.6, 0.7], 2.0), _trial(2, [0.7, 0.8], 3.0)]  # median 0.6 at 1
    bigger = _trial(5, [0.2, 0.9], size=4.0, state=TrialState.PRUNED)  # an unrelated huge model, not a peer
    assert rule.judge(_trial(9, [0.55], 3.0, TrialState.RUNNING), peers, maximize=True)
    assert not rule.judge(_trial(9, [0.65], 3.0, TrialState.RUNNING), peers, maximize=True)
    # only the peers no worse statically count: at size 1.5 the one peer is trial 0 (0.5 at epoch 1)
    assert not rule.judge(_trial(9, [0.55], 1.5, TrialState.RUNNING), [*peers, bigger], maximize=True)
    assert not DominancePruner(["params_mb"], n_startup_trials=4).judge(  # fewer complete trials than startup
        _trial(9, [0.1], 3.0, TrialState.RUNNING), peers, maximize=True)
    assert not DominancePruner(["params_mb"], n_startup_trials=0, n_warmup_steps=2).judge(  # still warming up
        _trial(9, [0.1], 3.0, TrialState.RUNNING), peers, maximize=True)


def test_picks_from_the_pareto_front() -> None:
    config = {"study": {"metric": "val_acc", "metrics": ["val_acc", "params_mb"],
                        "directions": ["maximize", "minimize"], "constraints": {}}}
    trials = [_trial(0, [0.9], 10.0), _trial(1, [0.8], 2.0), _trial(2, [0.5], 1.0), _trial(3, [0.7], 5.0)]
    assert [t.number for t in pareto.front(trials, [False, True])] == [0, 1, 2]  # 3 is dominated by 1
    assert pareto.pick(trials, config).number == 0  # default: best:val_acc
    assert pareto.pick(trials, config, "best:params_mb").number == 2
    assert pareto.pick(trials, config, "knee").number == 1
    assert pareto.pick(trials, config, "max:params_mb=5").number == 1
    assert pareto.pick(trials, config, "max:params_mb=0.5") is None
    assert pareto.hypervolume_2d([(1, 3), (2, 2), (3, 1)], (4, 4)) == 6.0


def test_the_report_draws_the_front_and_marks_pruned_trials_at_their_static_value() -> None:
    from sweep.look import front

    config = {"study": {"metrics": ["val_acc", "params_mb"], "directions": ["maximize", "minimize"]}}
    trials = [_trial(0, [0.9], 10.0), _trial(1, [0.8], 2.0), _trial(3, [0.7], 5.0),
              _trial(4, [0.3, 0.4], 7.0, TrialState.PRUNED)]
    traces = {trace.name: trace for trace in front.figure(trials, config).data}
    assert list(traces["Pareto front (2 trials)"].x) == [2.0, 10.0]  # trial 3 is dominated by trial 1
    assert list(traces["complete"].x) == [5.0]
    assert list(traces["pruned (last epoch)"].x) == [7.0] and list(traces["pruned (last epoch)"].y) == [0.4]


def test_nsga2_population_size_changes_the_trials_drawn() -> None:
    """NSGA-II draws its first generation at random, then breeds from it: population_size 2 breeds from the
    third trial on, 50 is still random there (same seed)."""
    from sweep.config.resolve import resolve
    from sweep.search.strategy import make_sampler

    def drawn(population: int) -> list[float]:
        config = copy.deepcopy(TINY)
        config["study"]["metrics"] = ["val_acc", "params_mb"]
        config["sampler"] = {"name": "nsga2", "seed": 0, "population_size": population}
        sampler = make_sampler(resolve(config, "nsga2"))
        assert isinstance(sampler, optuna.samplers.NSGAIISampler)
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
        study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_float("y", 0, 1)), n_trials=8)
        return [t.params["x"] for t in study.trials]

    small, large = drawn(2), drawn(50)
    assert small[:2] == large[:2] and small[2:] != large[2:]
