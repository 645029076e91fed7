"""The single-node SLURM cluster in cluster/: real slurmctld, slurmd and slurmdbd, driven through sbatch and submitit.

The cluster is started once per module with cluster/start.sh (idempotent: a no-op when it is already up) and is
left running for the tests that come after.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest


def _sacct_state(job_id: str, timeout: float = 20.0) -> str:
    """The job's final state from accounting; slurmdbd may record the end a moment after sbatch --wait returns."""
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        out = subprocess.run(["sacct", "-j", job_id, "-X", "-n", "-P", "--format=JobID,State"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, f"sacct failed: {out.stderr}"
        rows = dict(line.split("|", 1) for line in out.stdout.splitlines() if "|" in line)
        state = rows.get(job_id, "")
        if state and state not in {"PENDING", "RUNNING", "COMPLETING"}:
            return state
        time.sleep(0.5)
    return state


def test_sbatch_job_completes_and_sacct_reports_it(slurm_cluster: str, tmp_path: Path) -> None:
    """submitit learns job states from sacct, so a finished job must show up there as COMPLETED."""
    out = tmp_path / "job.out"
    sub = subprocess.run(["sbatch", "--parsable", "--wait", f"--partition={slurm_cluster}", "--time=2",
                          f"--output={out}", "--wrap", "echo ran on $(hostname -s) as job $SLURM_JOB_ID"],
                         capture_output=True, text=True, timeout=60)
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip().split(";")[0]
    assert _sacct_state(job_id) == "COMPLETED"
    assert f"as job {job_id}" in out.read_text()


def _square(x: int) -> int:
    return x * x


def _negate(x: int) -> int:
    return -x


def _describe(x: int) -> str:
    return f"{x}@{os.environ.get('SLURM_ARRAY_TASK_ID')}"


def _apply(fn: Callable[[int], object], x: int) -> object:
    return fn(x)


def test_submitit_map_array_runs_on_slurm(slurm_cluster: str, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    """The launcher's path: an array of Python functions through submitit, at most 2 at once, results back."""
    submitit = pytest.importorskip("submitit")
    import cloudpickle

    # The jobs can't import this test module (tests/ is not on their sys.path): ship its functions by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    caplog.set_level(logging.WARNING, logger="submitit")
    executor = submitit.AutoExecutor(folder=str(tmp_path / "%j"), cluster="slurm")
    executor.update_parameters(slurm_partition=slurm_cluster, timeout_min=5, cpus_per_task=1,
                               slurm_array_parallelism=2)
    jobs = executor.map_array(_apply, [_square, _negate, _describe], [3, 4, 5])
    try:
        assert len({job.job_id.split("_")[0] for job in jobs}) == 1, "expected one job array"
        throttle = subprocess.run(["scontrol", "show", "job", jobs[0].job_id.split("_")[0]],
                                  capture_output=True, text=True, timeout=30).stdout
        assert "ArrayTaskThrottle=2" in throttle or not throttle  # gone from slurmctld already: fine
        deadline = time.monotonic() + 90
        while not all(job.done() for job in jobs):
            assert time.monotonic() < deadline, f"jobs not done: {[(j.job_id, j.state) for j in jobs]}"
            time.sleep(0.5)
        results = [job.result() for job in jobs]
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        for job in jobs:
            if not job.done():
                job.cancel(check=False)
    assert results == [9, -4, "5@2"]
    sacct_problems = [r.getMessage() for r in caplog.records if "sacct" in r.getMessage().lower()]
    assert not sacct_problems, sacct_problems
