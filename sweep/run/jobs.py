"""The jobs a study's launches started: recorded in the study, so `status` and `cancel` find them from
any shell (a login node after logging out and back in, too)."""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path
from typing import Any

import optuna

from sweep.run.executors import EXECUTORS, JOB_FOLDER


def remove_template_folder(logs: Path) -> None:
    """Remove the empty folder literally named `%j` that submitit's local job controller makes from the folder
    template (`Controller.start_tasks` mkdirs the unformatted path) before it starts the job: the job removes
    it on starting, so no logs/ folder keeps one. A folder that is not empty is not sweep's to remove."""
    with contextlib.suppress(OSError):  # not there (SLURM, debug), not empty, or another job removed it first
        (logs / JOB_FOLDER).rmdir()


JOBS_ATTR = "sweep_jobs"
ENDED = {
    "ENDED",
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
}


def record(study: optuna.Study, jobs: list, executor: str) -> None:
    entries = list(study.user_attrs.get(JOBS_ATTR, []))
    host = socket.gethostname()
    entries += [{"id": str(job.job_id), "executor": executor, "host": host, "submitted": time.time()} for job in jobs]
    study.set_user_attr(JOBS_ATTR, entries)


def states(study: optuna.Study) -> list[dict[str, Any]]:
    """Each recorded job with its current state, as its executor tells it (SLURM's squeue then sacct, a local
    process's liveness)."""
    entries = [dict(e) for e in study.user_attrs.get(JOBS_ATTR, [])]
    for name, spec in EXECUTORS.items():
        mine = [e for e in entries if e["executor"] == name]
        if mine:
            for e, state in zip(mine, spec.states(mine)):
                e["state"] = state
    return entries


CANCELLED_ATTR = "sweep_cancelled_at"  # when `sweep cancel` last ran: an attached launcher replaces no worker after it


def cancel(study: optuna.Study) -> list[str]:
    """Stop every still-active job of the study; returns the ids cancelled."""
    study.set_user_attr(CANCELLED_ATTR, time.time())  # first: the launcher must not replace what is cancelled
    cancelled: list[str] = []
    for e in states(study):
        if e["state"].split()[0] in ENDED:
            continue
        stopped = EXECUTORS[e["executor"]].cancel(e, cancelled)
        if stopped is not None:
            cancelled.append(stopped)
    return cancelled
