"""Where a worker runs and with what: the facts recorded with every trial (the launch's git commit and package
versions, the SLURM job, node and slot), and the CPU threads a run computes with.

Apart from the worker loop because the launcher and `sweep final` need them before any worker exists.
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Mapping
from importlib import metadata
from typing import Any

from sweep.config.typed import typed
from sweep.run.executors import EXECUTORS, running_in


def run_context(workers: int) -> dict[str, Any]:
    """Facts recorded with every trial, computed once at launch (the git commit of the launch directory)."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=True)
            return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    if commit and git("status", "--porcelain", "--untracked-files=no"):
        commit += "-dirty"
    versions = {}
    for pkg in ("sweep", "torch", "torchaudio", "optuna", "submitit", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    versions["python"] = platform.python_version()
    return {"git_commit": commit, "versions": versions, "workers": workers}


def slurm_place() -> dict[str, Any]:
    """Which SLURM job, node and slot run this worker (None outside SLURM): a node that fails its trials shows
    here, and `SLURMD_NODENAME` is the node's SLURM name, which on a cluster with several nodes per host is not
    the host's. The slot is the worker's task within its job when a job runs several (`trials_per_gpu`)."""
    slot, slots = slurm_slot()
    return {"slurm_job_id": slurm_job_id(), "slurm_node": os.environ.get("SLURMD_NODENAME"),
            "slurm_slot": slot if slots > 1 else None}


def slurm_slot() -> tuple[int, int]:
    """(this worker's slot in its job, the job's workers): (0, 1) outside a job that runs several."""
    spec = running_in()
    return (0, 1) if spec is None else spec.slot()


def slurm_job_id() -> str | None:
    """ARRAYJOB_TASK for an array task (what squeue/sacct show), else the plain job id."""
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
    return os.environ.get("SLURM_JOB_ID")


def default_threads(config: Mapping[str, Any], profile: Mapping[str, Any] | None = None, per_job: int = 1) -> int:
    """The torch threads a run computes with when `train.threads` is null: the CPUs one worker is given (the
    SLURM profile's cpus_per_task, shared by the `per_job` workers of a job, else executor.cpus_per_worker, else
    an equal share of this machine among executor.workers).

    Called once, where a study is created or a final run starts, and stored in the config: CPU arithmetic
    changes with the thread count, so a run must not take it from how many runs happen to share its machine.
    """
    cfg = typed(config)
    given = EXECUTORS[cfg.executor.name].threads(profile)
    if given is not None:
        return max(1, given // per_job)
    if cfg.executor.cpus_per_worker:
        return cfg.executor.cpus_per_worker
    return max(1, (os.cpu_count() or 1) // cfg.executor.workers)


def shared_cores(config: Mapping[str, Any], concurrent: int) -> str | None:
    """A note when `concurrent` local runs of `train.threads` threads each ask for more threads than this machine
    has cores: they then share cores, slower but with the same numbers (the count is not lowered to fit)."""
    cfg = typed(config)
    wanted, cores = concurrent * cfg.train.threads, os.cpu_count() or 1
    if not EXECUTORS[cfg.executor.name].processes_here or wanted <= cores:
        return None
    return (f"note: {concurrent} runs × train.threads {config['train']['threads']} = {wanted} threads on {cores} "
            "cores: they share cores (slower, same numbers); a smaller train.threads trains faster here")
