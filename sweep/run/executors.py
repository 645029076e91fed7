"""Executor registry: `executor.name` → how its workers are checked, made, waited on, stopped and read.

One class per executor. The launcher, `sweep final`, `status` / `cancel` and the worker ask the chosen one
(`EXECUTORS[name]`, or the one behind a job: `of_job`) instead of comparing names, so an executor is added with
one entry here (and its test).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sweep.config.typed import typed
from sweep.run import squeue
from sweep.run.profile import check_with_cluster, load_profile, submitit_parameters
from sweep.schema import ConfigError, Field, Registry

# Each job's logs go to logs/JOB_ID/: submitit's folder template, formatted per job.
JOB_FOLDER = "%j"


class Executor:
    """What every executor answers; the defaults are those of one whose jobs are processes with their own
    result files. A subclass overrides where its executor differs."""

    params: Mapping[str, Field] = {}  # the `executor.<key>`s it takes beside the section's own
    doc = ""
    cluster = ""  # submitit's name for it: AutoExecutor(cluster=…), and $SUBMITIT_EXECUTOR in its jobs
    runs_here = True  # its workers run on this machine: a CUDA device asked for must be here, and data problems
    # found here stop the launch (they are only warnings where the workers may see other paths)
    in_process = False  # it runs its one worker in this process, when its result is asked for: no --detach
    processes_here = False  # its workers are processes on this machine, side by side: a launch fences them and
    # logs their controllers, stops them with SIGTERM (which they obey as Ctrl-C), and notes shared cores

    @property
    def job_name(self) -> str:
        """submitit's class of the jobs it returns, named after the executor: DebugJob, LocalJob, SlurmJob."""
        return f"{self.cluster.title()}Job"

    # checked
    def check(self, config: Mapping[str, Any]) -> dict[str, Any] | None:
        """Its own checks before anything is stored or submitted; returns the cluster profile, if it has one."""
        return None

    def threads(self, profile: Mapping[str, Any] | None) -> int | None:
        """The CPUs one worker is given, where the executor decides (else the config and this machine do)."""
        return None

    def per_job(self, config: Mapping[str, Any], profile: Mapping[str, Any] | None) -> int:
        """Workers each of a launch's jobs runs side by side (`executor.trials_per_gpu` on SLURM): the launch
        submits workers / per_job jobs and waits on each worker (`workers_of`); `sweep final` runs one per job."""
        return 1

    def workers_of(self, job: Any) -> list:
        """The job's workers as jobs of their own: each has its own result, log and outcome."""
        return [job]

    def slot(self) -> tuple[int, int]:
        """In one of its jobs: (this worker's slot in the job, the job's workers)."""
        return 0, 1

    # made
    def make(
        self, config: Mapping[str, Any], folder: str, workers: int, profile: Mapping[str, Any] | None, per_job: int = 1
    ) -> Any:
        """The submitit executor that starts `workers` workers, `per_job` to a job, their logs in `folder` (a
        JOB_FOLDER template)."""
        cfg = typed(config)
        executor = _submitit().AutoExecutor(folder=folder, cluster=self.cluster)
        executor.update_parameters(timeout_min=int(cfg.executor.timeout_min), name=cfg.study.name)
        return executor

    # waited on
    def owns(self, job: Any) -> bool:
        """Whether this executor made the job."""
        return isinstance(job, getattr(_submitit(), self.job_name))

    def has_result(self, job: Any) -> bool:
        """Whether an ended job left its result (or its exception) to read."""
        with contextlib.suppress(OSError):  # a network file system refreshes a folder's listing on a chmod
            job.paths.folder.chmod(job.paths.folder.stat().st_mode)
        return job.paths.result_pickle.exists()

    def held(self, jobs: list) -> bool:
        """Whether any of these jobs, ended for submitit, still runs somewhere (a cancelled SLURM task until
        KillWait's SIGKILL): it may claim a trial after the launcher has handed the last one back."""
        return bool(self.holding(jobs))

    def holding(self, jobs: list) -> set[str]:
        """The ids of those of these jobs that still run somewhere (`held`), asked once for all of them."""
        return set()

    def stop(self, jobs: list) -> None:
        """The first step of stopping these jobs of a launch, all made by this executor (local ones are then sent
        SIGTERM: `waiting.wait_stopped`)."""
        for job in jobs:
            job.cancel(check=False)

    # status and cancel (a job as the study recorded it: `jobs.record`)
    def states(self, entries: list[dict[str, Any]]) -> list[str]:
        """The current state of each of its recorded jobs."""
        return ["ENDED" for _ in entries]

    def cancel(self, entry: dict[str, Any], cancelled: list[str]) -> str | None:
        """Stop a recorded job that has not ended; returns the id cancelled (None: nothing to cancel)."""
        return None


class Debug(Executor):
    doc = "in the launcher's own process, one trial after another (pdb works)"
    cluster = "debug"
    in_process = True

    def has_result(self, job: Any) -> bool:
        return True  # it runs when its result is asked for


class Local(Executor):
    doc = "worker processes on this machine"
    cluster = "local"
    processes_here = True

    def stop(self, jobs: list) -> None:
        pass  # SIGTERM to its controller, which forwards it to the worker: it hands its trial back and exits

    def states(self, entries: list[dict[str, Any]]) -> list[str]:
        return ["RUNNING" if _alive(e) else "ENDED" for e in entries]

    def cancel(self, entry: dict[str, Any], cancelled: list[str]) -> str | None:
        if not _alive(entry):
            return None
        os.kill(int(entry["id"]), signal.SIGINT)  # submitit's local controller stops its workers on SIGINT
        return entry["id"]


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


# How often one array task requeues itself at its time limit. submitit's default, 3, ended a worker (its trial left
# RUNNING until its heartbeat went stale) at its fourth time limit however much budget was left; what bounds a
# worker is its budget, and a trial that makes no progress between time limits runs out of retries.
MAX_REQUEUES = 10_000


class Slurm(Executor):
    doc = "a SLURM array job, one task per worker (or executor.trials_per_gpu workers per task)"
    cluster = "slurm"
    runs_here = False
    # Small models leave most of a GPU idle: K workers in one array task share its GPU(s) (and MIG slice), its
    # CPUs divided among them.
    params = {"trials_per_gpu": Field(int, 1, low=1, high=64)}

    def check(self, config: Mapping[str, Any]) -> dict[str, Any] | None:
        """The SLURM profile, validated and tried on the cluster (`sbatch --test-only`)."""
        cfg = typed(config)
        ex = cfg.executor
        if not ex.cluster:
            raise ConfigError("the slurm executor needs a profile: --cluster cluster/a100.yaml", key="executor.cluster")
        profile = load_profile(ex.cluster)
        if shutil.which("sbatch") is None:
            raise ConfigError(
                "sbatch is not on PATH: launch SLURM studies from a login node of the cluster", key="executor.name"
            )
        per_job = self.per_job(config, profile)
        if per_job > profile["cpus_per_task"]:
            raise ConfigError(
                f"{per_job} workers per array task need a CPU each, and the profile {ex.cluster} gives a task "
                f"cpus_per_task: {profile['cpus_per_task']}: raise cpus_per_task there (the task's CPUs are divided "
                f"among its workers) or lower executor.trials_per_gpu", key="executor.trials_per_gpu",
            )
        check_with_cluster(profile, ex.cluster, ex.workers, cfg.study.name, self.cluster, per_job)
        return profile

    def threads(self, profile: Mapping[str, Any] | None) -> int | None:
        return None if profile is None else int(profile["cpus_per_task"])

    def per_job(self, config: Mapping[str, Any], profile: Mapping[str, Any] | None) -> int:
        """K = trials_per_gpu workers share the array task's GPU (or MIG slice); with `gpus_per_node: G` they are
        spread over its G GPUs, slot k on GPU k mod G (`gpus.share_gpus`). K = 1 is one worker per task."""
        return typed(config).executor.trials_per_gpu

    def workers_of(self, job: Any) -> list:
        return [job.task(k) for k in range(job.num_tasks)] if job.num_tasks > 1 else [job]

    def slot(self) -> tuple[int, int]:
        try:  # srun starts a job's tasks with these; submitit's own JobEnvironment reads the same
            return int(os.environ.get("SLURM_PROCID", 0)), max(1, int(os.environ.get("SLURM_NTASKS", 1)))
        except ValueError:
            return 0, 1

    def make(
        self, config: Mapping[str, Any], folder: str, workers: int, profile: Mapping[str, Any] | None, per_job: int = 1
    ) -> Any:
        cfg = typed(config)
        executor = _submitit().AutoExecutor(folder=folder, cluster=self.cluster, slurm_max_num_timeout=MAX_REQUEUES)
        executor.update_parameters(**submitit_parameters(profile, workers, cfg.study.name, per_job))
        return executor

    def holding(self, jobs: list) -> set[str]:
        return squeue.in_queue([str(job.job_id) for job in jobs])

    def stop(self, jobs: list) -> None:
        """One scancel per array: submitit's `job.cancel` runs one per task, 500 for a 500-worker launch."""
        for array in sorted({str(job.job_id).split("_")[0] for job in jobs}):
            squeue.scancel(array)

    def states(self, entries: list[dict[str, Any]]) -> list[str]:
        known = squeue.states([e["id"] for e in entries])
        return [known.get(e["id"], "UNKNOWN") for e in entries]

    def cancel(self, entry: dict[str, Any], cancelled: list[str]) -> str | None:
        array = entry["id"].split("_")[0]  # one scancel stops every task of the array
        return array if array not in cancelled and squeue.scancel(array) else None


EXECUTORS: Registry[Executor] = Registry("executor")
EXECUTORS.add("debug", Debug())
EXECUTORS.add("local", Local())
EXECUTORS.add("slurm", Slurm())
DEFAULT = "local"  # `executor.name` when a config gives none


def _submitit() -> Any:
    """submitit, imported on first use: ~120 ms that `sweep --help` and `sweep status` do without."""
    import submitit

    return submitit


def make_executor(
    config: Mapping[str, Any], logs: Path, workers: int, profile: Mapping[str, Any] | None, per_job: int = 1
) -> Any:
    """The config's submitit executor for `workers` workers, `per_job` to a job, their logs under `logs`."""
    cfg = typed(config)
    logs.mkdir(parents=True, exist_ok=True)
    logs.chmod(0o700)  # submitit's pickles hold each job's arguments, its logs whatever a run prints: owner only
    return EXECUTORS[cfg.executor.name].make(config, str(logs / JOB_FOLDER), workers, profile, per_job)


def of_job(job: Any) -> Executor | None:
    """The executor that made a submitit job (None for an object that only behaves like one)."""
    return next((spec for _, spec in EXECUTORS.items() if spec.owns(job)), None)


def running_in() -> Executor | None:
    """The executor whose job this process is ($SUBMITIT_EXECUTOR, set in a submitit job), None outside one."""
    cluster = os.environ.get("SUBMITIT_EXECUTOR")
    return next((spec for _, spec in EXECUTORS.items() if spec.cluster == cluster), None)
