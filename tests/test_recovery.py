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
from conftest import sweep_cli
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


def _assert_resumed(home: Path, lost: FrozenTrial, *reasons: str) -> FrozenTrial:
    trials = _trials(home)
    lost = next(t for t in trials if t.number == lost.number)
    assert lost.state == TrialState.FAIL and any(r in lost.user_attrs["sweep_void"] for r in reasons), lost.user_attrs
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


def _signal_a_running_trial(
    home: Path, tiny_file: Path, sig: signal.Signals, *args: str, code: int = 0
) -> tuple[FrozenTrial, str]:
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
    assert launcher.returncode == code, out
    return victim, out


def test_sigkilled_worker_trial_resumes_from_checkpoint(home: Path, tiny_file: Path) -> None:
    victim, out = _signal_a_running_trial(home, tiny_file, signal.SIGKILL, "--trials", "4")
    assert "ended without finishing" in out  # the killed worker is reported, the study still finished
    # Handed back by the launcher, which saw its job end, or by the other worker, which saw its heartbeat stop.
    _assert_resumed(home, victim, "no heartbeat", "ended: ")
    counted = [t for t in _trials(home) if "sweep_void" not in t.user_attrs]
    assert len(counted) == 4 and all(t.state == TrialState.COMPLETE for t in counted)


def test_a_lone_worker_killed_is_replaced_and_the_study_finishes(home: Path, tiny_file: Path) -> None:
    """With no other worker to take its trial over, the launcher hands the trial back and starts a new worker,
    which resumes it from its checkpoint: the launch ends with the budget met, not with "launch again"."""
    victim, out = _signal_a_running_trial(home, tiny_file, signal.SIGKILL, "--trials", "3", "--workers", "1")
    assert "worker 0 (job" in out and "started worker 1 (job" in out and "(1 of at most 1 replacements)" in out, out
    assert "(worker 1 took its place)" in out and "launch again" not in out, out
    again = _assert_resumed(home, victim, "ended: ")
    assert again.user_attrs["worker"] == 1 and again.user_attrs["pid"] != victim.user_attrs["pid"]
    counted = [t for t in _trials(home) if "sweep_void" not in t.user_attrs]
    assert len(counted) == 3 and all(t.state == TrialState.COMPLETE for t in counted)


def test_replacements_are_bounded(home: Path, tiny_file: Path) -> None:
    """`executor.max_replacements: 0`: the dead worker's trial is handed back, nothing replaces it, and the
    launch says what is left and how to run it."""
    victim, out = _signal_a_running_trial(
        home, tiny_file, signal.SIGKILL, "--trials", "3", "--workers", "1", "--set", "executor.max_replacements=0",
        code=1,
    )
    assert "not replaced: this launch has replaced 0 worker(s) already (executor.max_replacements)" in out, out
    assert "launch again to run them" in out, out
    trials = _trials(home)
    lost = next(t for t in trials if t.number == victim.number)
    assert lost.state == TrialState.FAIL and "ended: " in lost.user_attrs["sweep_void"]
    assert len([t for t in trials if "sweep_void" not in t.user_attrs]) == 3  # the retry waits for the next launch
    status = sweep_cli("status", "tiny", cwd=home)
    assert "no worker is left to run the 3 trial(s) owed (3 waiting, 0 running" in status.stdout, status.stdout


def test_timeout_signal_hands_the_trial_back_and_requeues(home: Path, tiny_file: Path) -> None:
    """submitit sends USR2 before a job's time limit (SLURM's --signal, or the local executor's timer)."""
    victim, _ = _signal_a_running_trial(home, tiny_file, signal.SIGUSR2, "--trials", "3", "--workers", "1")
    again = _assert_resumed(home, victim, "preempted or timed out")
    assert again.user_attrs["pid"] != victim.user_attrs["pid"]  # the requeued job is a new process
    counted = [t for t in _trials(home) if "sweep_void" not in t.user_attrs]
    assert len(counted) == 3 and all(t.state == TrialState.COMPLETE for t in counted)


def test_a_cancelled_local_launch_replaces_no_worker(home: Path, tiny_file: Path) -> None:
    """`sweep cancel` from another shell: the workers stop and hand their trials back, and the attached launcher,
    which replaces workers that die, starts none."""
    launcher = subprocess.Popen(
        [sys.executable, "-m", "sweep", "launch", str(tiny_file), "--trials", "3", "--workers", "1", *FAST],
        cwd=home, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    _wait_for_trial_in_epoch(home, launcher, 1)
    cancel = sweep_cli("cancel", "tiny", cwd=home)
    assert cancel.returncode == 0 and "cancelled 1 job(s)" in cancel.stdout, cancel.stdout + cancel.stderr
    out, _ = launcher.communicate(timeout=120)
    assert launcher.returncode == 1 and "still to run" in out, out
    assert "started worker" not in out, out
    assert not [t for t in _trials(home) if t.state == TrialState.RUNNING]
