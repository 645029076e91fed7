"""Replacing a worker that died while its launch still owes trials.

A worker killed from outside (the OOM killer, `kill -9`, an admin's `scancel` of one task) ends without a
result and without handing its trial back. Its trial's heartbeat goes stale and another worker retries it, but a
launch whose last worker died had no one left to run the retry: it ended "launch again". SLURM requeues a job
on its own only for a lost node or a preemption (the job is then pending again, not ended, and left alone here).

So the attached launcher, at each poll, hands back the RUNNING trials of each of its jobs that ended without a
result and starts a new worker in its place while trials are owed and fewer workers run than could use them,
at most `limit` times per launch (a worker that dies at once each time, e.g. out of memory on start, would
otherwise be started forever). Each replacement, and each one refused, says why on the launcher's output.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

from sweep.run.executors import of_job
from sweep.run.jobs import CANCELLED_ATTR
from sweep.search.study import counts, retry

# SLURM states of a job that ended without returning (and FAILED: killed by a signal, or its node's slurmd
# lost); COMPLETED without a result file is a network file system showing the file late, not a death.
DIED = ("CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "FAILED")
# Of those, the ones someone asked for: the job's trial is handed back, and no worker replaces it.
WANTED = ("CANCELLED",)


class Replacements:
    """Called with the launch's jobs at every poll; appends the replacements it starts to that list.

    `start(first)` submits one new job and returns its workers, numbered from `first`; `workers` is how many
    the launch asked for.
    """

    def __init__(
        self, study: optuna.Study, launch_id: str, start: Callable[[int], list], workers: int, limit: int,
        max_retries: int,
    ) -> None:
        self.study, self.launch_id, self.start = study, launch_id, start
        self.workers, self.limit, self.max_retries = workers, limit, max_retries
        self.since = time.time()
        self.settled: set[int] = set()  # indexes of ended jobs already dealt with
        self.replaced: dict[int, int] = {}  # index of a dead worker → index of its replacement

    def __call__(self, jobs: list) -> bool:
        """Deal with the jobs that ended since the last call; whether a replacement was started."""
        before = len(jobs)
        ended = []  # jobs that ended without a result since the last call: (index, job, executor, state)
        for index, job in enumerate(list(jobs)):
            if index in self.settled or not job.done():
                continue
            spec = of_job(job)
            if spec is None or spec.in_process or spec.has_result(job):
                self.settled.add(index)  # it returned (no trial left for it, or it raised: not a death)
                continue
            state = str(job.state)
            if spec.processes_here or state.split()[0] in DIED:  # else its result may yet show up
                ended.append((index, job, spec, state))
        held: set[str] = set()  # one squeue for them all: a whole array cancelled is hundreds of jobs at once
        for spec in {id(spec): spec for _, _, spec, _ in ended}.values():
            held |= spec.holding([job for _, job, other, _ in ended if other is spec])
        for index, job, _, state in ended:
            if str(job.job_id) in held:
                continue  # SLURM still holds it (completing, requeued)
            self.settled.add(index)
            self._hand_back(index, job, state)
            self._replace(index, job, state, jobs)
        return len(jobs) > before

    def _hand_back(self, index: int, job: Any, state: str) -> None:
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get("launch") == self.launch_id and t.user_attrs.get("worker") == index:
                retry(self.study, t, f"its worker (job {job.job_id}) ended: {state}", self.max_retries)

    def _replace(self, index: int, job: Any, state: str, jobs: list) -> None:
        owed = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
                if counts(t)]
        waiting = sum(1 for t in owed if t.state == TrialState.WAITING)
        if not waiting:
            return  # nothing left for a new worker: the others finish what runs
        live = sum(1 for j in jobs if not j.done())
        wanted = min(self.workers, len(owed))  # a worker per trial owed, up to as many as the launch asked for
        dead = f"worker {index} (job {job.job_id}) ended without a result ({state}) with {waiting} trial(s) owed"
        if state.split()[0] in WANTED or self.study.user_attrs.get(CANCELLED_ATTR, 0.0) >= self.since:
            print(f"{dead}; not replaced: it was cancelled (scancel, or sweep cancel)", flush=True)
            return
        if live >= wanted:
            print(f"{dead}; the {live} running worker(s) take them over", flush=True)
            return
        if len(self.replaced) >= self.limit:
            print(f"{dead}; not replaced: this launch has replaced {self.limit} worker(s) already "
                  "(executor.max_replacements)", flush=True)
            return
        new = len(jobs)
        jobs.extend(self.start(new))
        self.replaced[index] = new
        print(f"{dead}; started worker {new} (job {jobs[new].job_id}) in its place "
              f"({len(self.replaced)} of at most {self.limit} replacements)", flush=True)
