"""Cross-validated trials (`study.cv`), through `sweep launch`: every split trained and scored, the test folds
never read, a killed trial resumed in its fold and epoch, Wilcoxon pruning across folds, bad input refused."""

from __future__ import annotations

import copy
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import torch
import yaml
from conftest import TINY, sweep_cli
from optuna.trial import FrozenTrial, TrialState


def _study(home: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{home}/studies/{name}/study.db")


def _write(home: Path, name: str, **changes: dict) -> Path:
    config = copy.deepcopy(TINY)
    config["study"].update(name=name)
    for section, values in changes.items():
        config.setdefault(section, {}).update(values)
    path = home / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _fold_rows(trial: FrozenTrial, fold: int) -> list[dict]:
    return json.loads((Path(trial.user_attrs["trial_dir"]) / f"fold-{fold}" / "metrics.json").read_text())["epochs"]


def test_each_trial_trains_every_split_and_never_reads_the_test_fold(home: Path) -> None:
    """ESC-50's layout with fold 5 (test) unreadable: a cv 4 search validates on folds 1, 2, 3, 4 in turn; the
    value is the mean of the four folds' best epochs, and the garbage test files were never opened."""
    from sweep.data.layouts import write_esc50

    root = write_esc50(home / "ESC-50", n_classes=3, clips_per_class=5, sample_rate=8000, clip_seconds=1.0)
    for path in sorted((root / "audio").glob("5-*.wav")):
        path.write_bytes(b"this is not a wav file")
    path = _write(home, "esc", study={"n_trials": 2, "cv": 4}, train={"epochs": 2},
                  data={"dataset": "esc50", "root": str(root), "sample_rate": 8000, "clip_seconds": 0.5})
    yaml_config = yaml.safe_load(path.read_text())
    del yaml_config["data"]["clips_per_class"], yaml_config["data"]["n_classes"]
    path.write_text(yaml.safe_dump(yaml_config))
    run = sweep_cli("launch", str(path), "--executor", "debug", "--workers", "1", cwd=home)
    assert run.returncode == 0, run.stdout + run.stderr
    trials = _study(home, "esc").get_trials()
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        assert t.user_attrs["cv_folds"] == [[1], [2], [3], [4]]
        values = t.user_attrs["cv_values"]
        assert len(values) == 4 and t.value == pytest.approx(statistics.fmean(values))
        assert t.user_attrs["cv_std"] == pytest.approx(statistics.pstdev(values))
        assert t.user_attrs["cv_epochs"] == 8 == len(t.intermediate_values)  # global steps 1..8
        # what `sweep final` trains: the mean over folds of their best epochs
        assert t.user_attrs["best_epoch"] == round(statistics.fmean(t.user_attrs["cv_best_epochs"]))
        for k in range(1, 5):
            metrics = json.loads((Path(t.user_attrs["trial_dir"]) / f"fold-{k}" / "metrics.json").read_text())
            assert metrics["folds"] == {"train": [f for f in range(1, 5) if f != k], "val": [k], "test": [5]}
            assert metrics["best_value"] == values[k - 1]
            rows = metrics["epochs"]
            assert [t.intermediate_values[(k - 1) * 2 + r["epoch"]] for r in rows] == [r["val_acc"] for r in rows]


def _trials(home: Path) -> list[FrozenTrial]:
    try:
        return _study(home, "tiny").get_trials()
    except (KeyError, sqlalchemy.exc.SQLAlchemyError):  # the launcher is still creating the study
        return []


def test_a_killed_trial_resumes_in_its_fold_and_epoch(home: Path) -> None:
    """SIGKILL in fold 2 of 3 at its second epoch: the retried trial copies fold 1 (not retrained: the same rows,
    wall-clock seconds included), continues fold 2 after the epochs it had, and trains fold 3. Ten epochs a fold:
    the kill must land before the trial ends, and these epochs take tens of milliseconds."""
    epochs = 10
    path = _write(home, "tiny", study={"n_trials": 1, "cv": 3}, train={"epochs": epochs},
                  pruner={"n_warmup_steps": 100})
    launcher = subprocess.Popen(
        [sys.executable, "-m", "sweep", "launch", str(path), "--workers", "1", "--set",
         "executor.heartbeat_seconds=0.5", "--set", "executor.stale_after_seconds=4"],
        cwd=home, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline, victim = time.time() + 180, None
    while victim is None and time.time() < deadline and launcher.poll() is None:
        running = [t for t in _trials(home) if t.state == TrialState.RUNNING and "pid" in t.user_attrs]
        victim = next((t for t in running if len(t.intermediate_values) >= epochs + 2), None)
        time.sleep(0.05)
    assert victim is not None, launcher.communicate()[0]
    os.kill(victim.user_attrs["pid"], signal.SIGKILL)
    out, _ = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, out
    trials = _trials(home)
    lost = next(t for t in trials if t.number == victim.number)
    (again,) = [t for t in trials if t.user_attrs.get("sweep_retry_of") == lost.number]
    assert again.state == TrialState.COMPLETE and len(again.user_attrs["cv_values"]) == 3
    assert again.user_attrs["cv_epochs"] == 3 * epochs == len(again.intermediate_values)
    before = {k: _fold_rows(lost, k) for k in (1, 2)}
    assert len(before[1]) == epochs and len(before[2]) >= 2
    assert _fold_rows(again, 1) == before[1]  # copied, not retrained
    assert _fold_rows(again, 2)[: len(before[2])] == before[2]  # resumed at the epoch it had reached
    # ...by its checkpoint, which is written before metrics.json: a kill between the two leaves it one epoch ahead
    checkpointed = torch.load(Path(lost.user_attrs["trial_dir"]) / "fold-2" / "checkpoint.pt", weights_only=True)
    assert len(checkpointed["history"]) in (len(before[2]), len(before[2]) + 1)
    assert again.user_attrs["sweep_resumed_at_epoch"] == epochs + len(checkpointed["history"])
    for step, value in lost.intermediate_values.items():
        assert again.intermediate_values[step] == value


def test_wilcoxon_prunes_a_clearly_worse_trial_before_its_last_fold(home: Path) -> None:
    """lr 0 never learns: after two of its three folds, each below the best trial's, the Wilcoxon test
    (p = 0.25 < p_threshold 0.3) stops it; its value is the mean of the folds it finished."""
    path = _write(
        home, "wil", study={"n_trials": 2, "cv": 3}, train={"epochs": 3, "lr": 1.0e-2},
        data={"clips_per_class": 20}, sampler={"name": "random", "seed": 11},
        pruner={"name": "wilcoxon", "p_threshold": 0.3, "n_startup_steps": 2},
    )
    config = yaml.safe_load(path.read_text())
    del config["pruner"]["n_warmup_steps"], config["pruner"]["n_startup_trials"]
    del config["sampler"]["n_startup_trials"]
    config["search_space"] = {"train.lr": {"type": "categorical", "choices": [1.0e-2, 0.0]}}
    path.write_text(yaml.safe_dump(config))
    run = sweep_cli("launch", str(path), "--executor", "debug", "--workers", "1", cwd=home)
    assert run.returncode == 0, run.stdout + run.stderr
    good, bad = sorted(_study(home, "wil").get_trials(), key=lambda t: t.number)
    assert (good.params["train.lr"], bad.params["train.lr"]) == (1.0e-2, 0.0), "sampler.seed 11 draws these"
    assert good.state == TrialState.COMPLETE and sorted(good.intermediate_values) == [1, 2, 3]
    assert bad.state == TrialState.PRUNED and sorted(bad.intermediate_values) == [1, 2], bad.user_attrs
    assert bad.value == pytest.approx(statistics.fmean(bad.user_attrs["cv_values"]))
    assert bad.user_attrs["cv_epochs"] == 6 and not (Path(bad.user_attrs["trial_dir"]) / "fold-3").exists()
    assert good.user_attrs["cv_epochs"] == 9  # written each epoch too: how a stopped trial shows it progressed

    report = sweep_cli("report", "wil", cwd=home)
    assert report.returncode == 0, report.stderr
    page = (home / "studies" / "wil" / "report.html").read_text()
    good_folds = " ".join(f"{g}:{v:.3f}" for g, v in zip(("1+2", "3", "4"), good.user_attrs["cv_values"]))
    assert f"[folds {good_folds}; std {good.user_attrs['cv_std']:.3f}]" in page  # the per-fold values
    assert "<td>6/9</td>" in page  # the pruned trial trained 2 of its 3 folds' epochs
    status = sweep_cli("status", "wil", cwd=home)
    assert status.returncode == 0, status.stderr
    assert f"best: trial {good.number}, val_acc={good.value:.4f} [folds {good_folds}; std" in status.stdout


def test_the_median_pruner_compares_trials_at_the_same_fold_and_epoch(home: Path) -> None:
    """Any other pruner gets each epoch at step (fold - 1) × epochs + epoch: lr 0, at chance from its first epoch,
    is pruned inside its first fold, against the good trial's first fold."""
    path = _write(
        home, "med", study={"n_trials": 2, "cv": 3}, train={"epochs": 3, "lr": 1.0e-2},
        data={"clips_per_class": 20}, sampler={"name": "random", "seed": 11},
        pruner={"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
    )
    config = yaml.safe_load(path.read_text())
    del config["sampler"]["n_startup_trials"]
    config["search_space"] = {"train.lr": {"type": "categorical", "choices": [1.0e-2, 0.0]}}
    path.write_text(yaml.safe_dump(config))
    run = sweep_cli("launch", str(path), "--executor", "debug", "--workers", "1", cwd=home)
    assert run.returncode == 0, run.stdout + run.stderr
    good, bad = sorted(_study(home, "med").get_trials(), key=lambda t: t.number)
    assert good.state == TrialState.COMPLETE and sorted(good.intermediate_values) == list(range(1, 10))
    assert bad.state == TrialState.PRUNED and max(bad.intermediate_values) <= 3, bad.intermediate_values
    assert not (Path(bad.user_attrs["trial_dir"]) / "fold-2").exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"study": {"cv": 1}}, "study.cv"),
        ({"study": {"cv": 5}}, "5 splits need at least 5 search folds (data.folds.train + data.folds.val) and "
                               "there are 4: [1, 2, 3, 4]; accepted: 2 <= study.cv <= 4"),
        ({"study": {"cv": 2}, "data": {"folds": {"train": [1, 2, 3], "val": [4], "test": [4, 5]}}},
         "folds [4] are divided between val and test"),
        ({"pruner": {"name": "wilcoxon"}}, "wilcoxon compares trials fold by fold and needs study.cv"),
        ({"study": {"cv": 2, "metrics": ["val_acc", "params_mb"]}},
         "cross-validated trials take one metric for now"),
    ],
)
def test_bad_cross_validation_is_refused_before_anything_is_stored(home: Path, changes: dict, message: str) -> None:
    path = _write(home, "bad", **changes)
    if changes.get("pruner", {}).get("name") == "wilcoxon":
        config = yaml.safe_load(path.read_text())
        config["pruner"] = {"name": "wilcoxon"}
        path.write_text(yaml.safe_dump(config))
    run = sweep_cli("launch", str(path), "--executor", "debug", cwd=home)
    assert run.returncode == 2, run.stdout + run.stderr
    assert message in run.stderr and "study.cv" in run.stderr + "pruner.name", run.stderr
    assert not (home / "studies" / "bad").exists()


def test_final_retrains_a_cross_validated_best_on_every_search_fold(home: Path) -> None:
    """`sweep final` of a cv study: the best trial by its mean over folds, trained for the mean of its folds' best
    epochs on every search fold at once (train + val: no fold is held out), scored on the test fold the search
    never read; `--cv` then tests each fold of the dataset once."""
    path = _write(home, "cvf", study={"n_trials": 2, "cv": 3}, train={"epochs": 3})
    run = sweep_cli("launch", str(path), "--executor", "debug", "--workers", "1", cwd=home)
    assert run.returncode == 0, run.stdout + run.stderr
    best = max(_study(home, "cvf").get_trials(), key=lambda t: (t.value, -t.number))
    assert best.value == pytest.approx(statistics.fmean(best.user_attrs["cv_values"]))

    run = sweep_cli("final", "cvf", "--executor", "debug", cwd=home)
    assert run.returncode == 0, run.stdout + run.stderr
    metrics = json.loads((home / "studies" / "cvf" / "final" / "seed-0" / "metrics.json").read_text())
    assert metrics["trial"] == best.number and metrics["params"] == best.params
    epochs = round(statistics.fmean(best.user_attrs["cv_best_epochs"]))  # the mean of its folds' best epochs
    assert metrics["epochs"] == best.user_attrs["best_epoch"] == epochs
    assert metrics["folds"] == {"train": [1, 2, 3, 4], "test": [5]}

    run = sweep_cli("final", "cvf", "--cv", "--executor", "debug", cwd=home)
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads((home / "studies" / "cvf" / "final" / "summary.json").read_text())
    assert list(summary["runs"]) == [f"cv-fold-{k}" for k in range(1, 6)]
    for k in range(1, 6):
        folds = json.loads((home / "studies" / "cvf" / "final" / f"cv-fold-{k}" / "metrics.json").read_text())["folds"]
        assert folds == {"train": [f for f in range(1, 6) if f != k], "test": [k]}
