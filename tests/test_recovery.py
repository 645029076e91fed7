"""Trials survive their workers: a worker killed with SIGKILL, or told to checkpoint by submitit's timeout
signal, leaves its trial to be resumed from the last epoch's checkpoint, and the budget is still met."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

FAST = [
    "--set",
    "executor.heartbeat_seconds=0.5",
    "--set",
    "executor.stale_after_seconds=4",
    "--set",
    "train.epochs=30",
    "--set",
    "pruner.n_warmup_steps=100",
]


def _trials(home: Path) -> list[FrozenTrial]:
    try:
        return optuna.load_study(study_name="tiny", storage=f"sqlite:///{home}/studies/tiny/study.db").get_trials()
    except (KeyError, sqlalchemy.exc.SQLAlchemyError):  # the launcher is still creating the study
        return []


def _wait_for_trial_in_epoch(home: Path, launcher: subprocess.Popen, epoch: int, timeout: float = 120) -> FrozenTrial:
    deadline = time.time() + timeout
    while time.time() < deadline and launcher.poll() is None:
        for t in _trials(home):
            if t.state == TrialState.RUNNING and len(t.intermediate_values) >= epoch and "pid" in t.user_attrs:
                return t
        time.sleep(0.05)
    raise AssertionError(f"no trial reached epoch {epoch}: {launcher.communicate()[0] if launcher.poll() else ''}")


def _assert_resumed(home: Path, lost: FrozenTrial, reason: str) -> FrozenTrial:
    trials = _trials(home)
    lost = next(t for t in trials if t.number == lost.number)
    assert lost.state == TrialState.FAIL and reason in lost.user_attrs["sweep_void"]
    (again,) = [t for t in trials if t.user_attrs.get("sweep_retry_of") == lost.number]
    assert again.state == TrialState.COMPLETE and again.params == lost.params
    assert len(again.intermediate_values) == 30
    for step, value in lost.intermediate_values.items():  # re-reported from the checkpoint, not retrained
        assert again.intermediate_values[step] == value
    before = {
        r["epoch"]: r for r in json.loads(Path(lost.user_attrs["trial_dir"], "metrics.json").read_text())["epochs"]
    }
    after = json.loads(Path(again.user_attrs["trial_dir"], "metrics.json").read_text())["epochs"]
    resumed = [r for r in after if r["epoch"] in lost.intermediate_values]
    assert resumed and all(r == before[r["epoch"]] for r in resumed)  # same wall-clock seconds: copied history
    return again


def _signal_a_running_trial(home: Path, tiny_file: Path, sig: signal.Signals, *args: str) -> tuple[FrozenTrial, str]:
    """Launch, send `sig` to the worker of the first trial to reach epoch 2, and wait for the launch to end."""
    launcher = subprocess.Popen(
        [sys.executable, "-m", "sweep", "launch", str(tiny_file), *args, *FAST],
        cwd=home,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    victim = _wait_for_trial_in_epoch(home, launcher, 2)
    os.kill(victim.user_attrs["pid"], sig)
    out, _ = launcher.communicate(timeout=240)
    assert launcher.returncode == 0, out
    return victim, out


def test_sigkilled_worker_trial_resumes_from_checkpoint(home: Path, tiny_file: Path) -> None:
    victim, out = _signal_a_running_trial(home, tiny_file, signal.SIGKILL, "--trials", "4")
    assert "ended without finishing" in out  # the killed worker is reported, the study still finished
    _assert_resumed(home, victim, "no heartbeat")
    counted = [t for t in _trials(home) if "sweep_void" not in t.user_attrs]
    assert len(counted) == 4 and all(t.state == TrialState.COMPLETE for t in counted)


def test_timeout_signal_hands_the_trial_back_and_requeues(home: Path, tiny_file: Path) -> None:
    """submitit sends USR2 before a job's time limit (SLURM's --signal, or the local executor's timer)."""
    victim, _ = _signal_a_running_trial(home, tiny_file, signal.SIGUSR2, "--trials", "3", "--workers", "1")
    again = _assert_resumed(home, victim, "preempted or timed out")
    assert again.user_attrs["pid"] != victim.user_attrs["pid"]  # the requeued job is a new process
    counted = [t for t in _trials(home) if "sweep_void" not in t.user_attrs]
    assert len(counted) == 3 and all(t.state == TrialState.COMPLETE for t in counted)
