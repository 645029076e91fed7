"""The jobs a study's launches started: recorded in the study, so `status` and `cancel` find them from
any shell (a login node after logging out and back in, too)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import optuna

# Each job's logs go to logs/JOB_ID/: submitit's folder template, formatted per job.
JOB_FOLDER = "%j"


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
    """Each recorded job with its current state: SLURM's (squeue, then sacct), or a local process's."""
    entries = [dict(e) for e in study.user_attrs.get(JOBS_ATTR, [])]
    slurm = [e for e in entries if e["executor"] == "slurm"]
    if slurm:
        known = _slurm_states([e["id"] for e in slurm])
        for e in slurm:
            e["state"] = known.get(e["id"], "UNKNOWN")
    for e in entries:
        if e["executor"] == "local":
            e["state"] = "RUNNING" if _alive(e) else "ENDED"
        elif e["executor"] == "debug":
            e["state"] = "ENDED"
    return entries


def cancel(study: optuna.Study) -> list[str]:
    """Stop every still-active job of the study; returns the ids cancelled."""
    cancelled: list[str] = []
    for e in states(study):
        if e["state"].split()[0] in ENDED:
            continue
        if e["executor"] == "slurm":
            array = e["id"].split("_")[0]  # one scancel stops every task of the array
            if array not in cancelled and subprocess.run(["scancel", array], capture_output=True).returncode == 0:
                cancelled.append(array)
        elif e["executor"] == "local" and _alive(e):
            os.kill(int(e["id"]), signal.SIGINT)  # submitit's local controller stops its workers on SIGINT
            cancelled.append(e["id"])
    return cancelled


def _alive(entry: dict[str, Any]) -> bool:
    if entry["host"] != socket.gethostname():
        return False
    try:
        os.kill(int(entry["id"]), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def _slurm_states(ids: list[str]) -> dict[str, str]:
    """job id (ARRAY_TASK form) → state; squeue knows pending/running jobs, sacct the ended ones."""
    found = _squeue(ids)
    for job_id, state in _ask(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", _arrays(ids)]).items():
        found.setdefault(job_id, state)
    return found


def in_queue(ids: list[str]) -> set[str]:
    """The jobs SLURM still holds: pending, running, or completing (processes alive after a cancel, until
    KillWait's SIGKILL). Accounting says CANCELLED at once; a worker may still be training then."""
    return set(ids) & set(_squeue(ids)) if ids else set()


def _squeue(ids: list[str]) -> dict[str, str]:
    return _ask(["squeue", "-h", "-r", "-o", "%i %T", "-j", _arrays(ids)])


def _arrays(ids: list[str]) -> str:
    return ",".join(sorted({i.split("_")[0] for i in ids}))


def _ask(cmd: list[str]) -> dict[str, str]:
    """First two columns of a squeue/sacct listing as id → state (its first word); {} if the command fails."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    found: dict[str, str] = {}
    for line in out.splitlines():
        parts = line.replace("|", " ").split()
        if len(parts) >= 2:
            found.setdefault(parts[0], parts[1])
    return found
