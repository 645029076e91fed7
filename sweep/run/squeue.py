"""What SLURM says of a launch's jobs (squeue for those it holds, sacct for those that ended), and scancel."""

from __future__ import annotations

import subprocess


def states(ids: list[str]) -> dict[str, str]:
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


def scancel(array: str) -> bool:
    """Cancel every task of an array job; whether scancel took it."""
    return subprocess.run(["scancel", array], capture_output=True).returncode == 0
