"""Waiting on a launch's jobs (or `sweep final`'s): until they end, until they are stopped, and what each left.

What differs between executors (whether a job has a result to read, whether SLURM still holds it, how it is
stopped) each job's executor says (`executors.of_job`).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import optuna

from sweep.look import status
from sweep.run.executors import of_job
from sweep.run.fence import Fence


def job_error(exc: BaseException) -> str:
    """The job's own exception line: submitit wraps a failed job's traceback between dashed lines."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    if "----------------------" in lines:
        start = lines.index("----------------------")
        end = lines.index("----------------------", start + 1) if lines.count("----------------------") > 1 else None
        trace = lines[start + 1 : end]
        if trace:
            return trace[-1].strip()
    return lines[-1] if lines else type(exc).__name__


# A job that ends without a result (cancelled, killed, preempted for good) is known only to SLURM's accounting,
# which submitit asks on its own when half the time since the submission has passed again, at most every 10
# minutes (`SlurmInfoWatcher(delay_s=600)`): a launcher learned that a worker was cancelled or killed an hour
# into a launch up to 10 minutes late. One forced sacct call every 10 s refreshes every job of the launch at once
# and is light on slurmdbd.
FORCE_CHECK_EVERY = 10.0


class JobsEnded:
    """Asked in a loop: whether every job has ended, forcing one accounting refresh every `force_every` s
    (at once on the first call when `force_now`: after a cancel, the states have just changed)."""

    def __init__(self, jobs: list, force_every: float = FORCE_CHECK_EVERY, force_now: bool = False) -> None:
        self.jobs, self.force_every = jobs, force_every
        self.forced = 0.0 if force_now else time.time()

    def __call__(self) -> bool:
        running = [job for job in self.jobs if not job.done()]
        if running and time.time() - self.forced >= self.force_every:
            self.forced = time.time()
            running[0].done(force_check=True)  # one sacct call refreshes every job of the launch
            running = [job for job in running if not job.done()]
        if running:
            return False
        # Ended for submitit (a result, or SLURM's accounting) is not yet gone: a cancelled worker trains on
        # until KillWait's SIGKILL, and may claim a trial after the launcher has handed the last one back.
        return not any(spec.held(mine) for spec, mine in by_executor(self.jobs))


def by_executor(jobs: list) -> list[tuple[Any, list]]:
    """The jobs grouped by the executor that made them (an object that only behaves like a job in none)."""
    groups: dict[int, tuple[Any, list]] = {}
    for job in jobs:
        spec = of_job(job)
        if spec is not None:
            groups.setdefault(id(spec), (spec, []))[1].append(job)
    return list(groups.values())


# submitit's result() waits this long for each missing result file in turn, in case a network file system shows
# it late: tests/test_slurm.py's cancel test waited 30 s for its 2 workers' files, which never come (32 workers:
# 8 minutes).
RESULT_GRACE = 15.0
# SLURM states of a job whose function never returned, and a local one killed by a signal: no result is coming.
NO_RESULT = ("CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "INTERRUPTED")


class Outcome(NamedTuple):
    kind: str  # "ok" (value: the result), "failed" (value: the exception it raised) or "lost" (no result)
    value: Any


def outcomes(jobs: list, poll: float = 1.0) -> list[Outcome]:
    """Each job's outcome, once every job has ended (the debug executor's jobs run here, one after another).

    A job that ended without a result (cancelled, killed, timed out, its node lost) is "lost". Missing result
    files are waited for once, for all jobs together, and not at all for a job SLURM says never returned.
    """
    ended = JobsEnded([job for job in jobs if not of_job(job).in_process])
    while not ended():
        time.sleep(poll)

    def has_result(job: Any) -> bool:
        return of_job(job).has_result(job)

    deadline = time.time() + RESULT_GRACE
    while time.time() < deadline and not all(has_result(j) or j.state.split()[0] in NO_RESULT for j in jobs):
        time.sleep(poll)
    out = []
    for job in jobs:
        if not has_result(job):
            out.append(Outcome("lost", None))
            continue
        exc = job.exception()  # the debug executor runs its job here: unlike result(), without pdb
        out.append(Outcome("ok", job.result()) if exc is None else Outcome("failed", exc))
    return out


# In a log file (not a terminal) `watch` writes a line when the study's state changes, and otherwise one every
# this many seconds, to show the launcher is still watching: a 10-hour study logged a line every 2 s before.
QUIET_LINE_EVERY = 600.0


def watch(
    study: optuna.Study,
    jobs: list,
    every: float = 2.0,
    quiet: float = QUIET_LINE_EVERY,
    check: Callable[[], None] | None = None,
    replace: Callable[[list], bool] | None = None,
) -> None:
    """Print progress until every job has ended: on a terminal one line rewritten every `every` s; elsewhere a
    line whenever the study's state changes, and at least one every `quiet` s while it does not. `check` is
    called at every poll (`Reserves.check`: it raises when the disk is full); so is `replace` (`Replacements`:
    it may append new jobs to `jobs`, which are then waited for too)."""
    tty, started, ended = sys.stdout.isatty(), time.time(), JobsEnded(jobs)
    last, written = "", float("-inf")
    while True:
        done = ended()
        if check is not None:  # after `ended`: a worker frees a reserve before it exits, so this sees it
            check()
        if replace is not None and replace(jobs):
            done = False
        state, now = status.progress_state(study), time.time()
        line = f"{status.clock(now - started)}  {state}"
        if tty:
            print(f"\r{line}\x1b[K", end="", flush=True)
        elif state != last or now - written >= quiet:
            print(line, flush=True)
            last, written = state, now
        if done:
            break
        time.sleep(every)
    if tty:
        print()


def _wait_gone(jobs: list, timeout: float = 15.0) -> None:
    deadline, ended = time.time() + timeout, JobsEnded(jobs, force_every=2.0, force_now=True)  # a short wait
    while time.time() < deadline and not ended():
        time.sleep(0.2)


# How long stopped local workers have to hand their trials back before they are killed (the launcher then hands
# back what they left RUNNING); a worker hands its trial back in a few storage writes.
STOP_GRACE = 30.0


def stop_workers(jobs: list, fence: Fence | None) -> None:
    """Stop this launch's workers and return once none runs: local ones through SIGTERM to their controllers
    (forwarded to the workers, which hand their trial back and exit), SLURM ones with scancel."""
    for spec, mine in by_executor(jobs):
        spec.stop(mine)
    if fence is None:
        _wait_gone(jobs)
    else:
        wait_stopped(jobs, fence, signal.SIGTERM)


def wait_stopped(jobs: list, fence: Fence | None, signum: int | None = None, poll: float = 0.2) -> None:
    """Wait until every local job has ended and the fence is closed (no worker of this launch runs, and none
    will claim a trial): `signum` is sent to the live controllers every second meanwhile (one that was still
    starting its workers when the first came may have started one since); after `STOP_GRACE` s the workers
    left are killed. Without a fence (debug, SLURM) there is nothing to wait for here."""
    if fence is None:
        return
    local = [job for job in jobs if of_job(job).processes_here]
    deadline, signalled = time.monotonic() + STOP_GRACE, float("-inf")
    while not (all(job.done() for job in local) and fence.try_close()):
        now = time.monotonic()
        if signum is not None and now - signalled >= 1.0:
            for job in local:
                if not job.done():  # polled, so its pid is not yet reaped: still this controller's
                    os.kill(int(job.job_id), signum)
            signalled = now
        if now >= deadline:
            for job in local:
                job.cancel(check=False)  # SIGINT: the controller kills its workers
            killed = fence.kill_holders()
            print(f"workers still running after {STOP_GRACE:.0f} s were killed (pids {killed})", flush=True)
            deadline = float("inf")
        time.sleep(poll)
