"""A worker: the function submitit runs (in-process, as a local process, or as a SLURM task).

It pulls trials from the shared study one at a time until the budget is used up, so a fast worker takes
more trials than a slow one and no GPU waits for a batch to finish. Every trial's resolved config, seed,
package versions and git commit are written to studies/STUDY/trials/N/ and to the trial's attributes.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import submitit

from sweep.config.typed import typed
from sweep.run.diskspace import release as release_reserves
from sweep.run.diskspace import released as reserves_released
from sweep.run.executors import running_in
from sweep.run.fence import enter as enter_fence
from sweep.run.gpus import pin_local_gpu, share_gpus
from sweep.run.jobs import remove_template_folder
from sweep.run.place import slurm_place, slurm_slot
from sweep.run.signals import STOP_SIGNALS, WorkerStop, signals_ignored, stop_if_asked
from sweep.run.trial import run_trial
from sweep.search import space
from sweep.search.objectives import curve
from sweep.search.strategy import open_study
from sweep.search.study import pop_trial, recover_stale, retry
from sweep.storage import is_disk_full, open_storage
from sweep.storage.optuna_private import storage_of, trial_id_of

MAX_CONSECUTIVE_ERRORS = 3  # a config or code bug fails every trial: stop instead of burning the budget


@dataclass
class WorkerReport:
    """What a worker did, returned to the launcher through submitit."""

    worker: int
    host: str
    trials: dict[int, str]
    seconds: float


class Heartbeat:
    """Stamps the trial this worker runs every `every` seconds (the first stamp `every` seconds after it
    started; until then its start time stands for one), so other workers can tell a dead worker's trial apart.

    One thread for the whole worker, pointed at each trial in turn: starting a thread per trial cost a few ms
    a trial on a busy machine."""

    def __init__(self, study: optuna.Study, every: float) -> None:
        self.study, self.every = study, every
        self.trial_id: int | None = None
        self.due = 0.0
        self.lock, self.changed, self.closed = threading.Lock(), threading.Event(), False
        self.thread = threading.Thread(target=self._run, name="sweep-heartbeat", daemon=True)
        self.thread.start()

    @contextlib.contextmanager
    def beating(self, trial: optuna.Trial) -> Iterator[None]:
        self._point(trial_id_of(trial))
        try:
            yield
        finally:
            self._point(None)

    def close(self) -> None:
        self.closed = True
        self.changed.set()
        self.thread.join()

    def _point(self, trial_id: int | None) -> None:
        with self.lock:
            self.trial_id, self.due = trial_id, time.monotonic() + self.every
        self.changed.set()

    def _run(self) -> None:
        while not self.closed:
            with self.lock:
                trial_id, due = self.trial_id, self.due
            if self.changed.wait(None if trial_id is None else max(0.0, due - time.monotonic())):
                self.changed.clear()  # another trial, or none, or closing: look again
                continue
            try:
                storage_of(self.study).set_trial_user_attr(trial_id, "heartbeat", time.time())
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # finished (or handed back) meanwhile: the worker moves on
            except Exception as exc:  # a storage hiccup must not kill the trial; the next beat retries
                print(f"heartbeat: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            with self.lock:
                if self.trial_id == trial_id:
                    self.due = time.monotonic() + self.every


class Worker:
    """The job submitit runs. On SLURM's timeout or preemption signal it hands the running trial back to
    the study (to be resumed from its last epoch) and asks submitit to requeue the job."""

    def __init__(self) -> None:
        self.max_retries = 0
        self.preempted = False

    def __call__(
        self, config: dict[str, Any], storage_url: str, study_dir: str, index: int, context: dict[str, Any]
    ) -> WorkerReport:
        return run_worker(config, storage_url, study_dir, index, context, self)

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Runs inside submitit's signal handler, which may have interrupted a storage call holding a lock or
        a transaction: no storage work here. submitit then requeues the job and raises SystemExit, and
        `run_worker` hands the trial back while unwinding, with every lock released."""

        self.preempted = True
        WorkerStop.ask()
        print("preempted or near the time limit: requeueing this worker", flush=True)
        return submitit.helpers.DelayedSubmission(Worker(), *args, **kwargs)

    def hand_over(self, signum: int, frame: Any) -> None:
        """The time-limit signal in a job's second or later task, which submitit leaves alone: unwind so that
        `run_worker` hands the trial back; the first task requeues the whole job, this one with it."""
        self.preempted = True
        WorkerStop.ask()
        print(f"{signal.Signals(signum).name}: near the time limit: handing the trial back", flush=True)
        raise SystemExit(0)


def run_worker(
    config: dict[str, Any],
    storage_url: str,
    study_dir: str,
    index: int,
    context: dict[str, Any],
    job: Worker | None = None,
    trainer: Callable[..., Any] | None = None,
) -> WorkerReport:
    """Pull trials until the budget is used up and no other worker's trial may still need a retry.

    `trainer` replaces `train_trial` (same signature): benchmarks/storage_overhead.py times everything
    a worker does around training with one that only reports to the pruner.
    """
    cfg = typed(config)
    # Everything imported so far (torch, the registries, Optuna: ~280k objects) lives as long as the worker;
    # frozen, a full collection skips it. Unfrozen, each one walks it (0.1-0.3 s here), and where one falls
    # depends on how much was imported: benchmarks/storage_overhead.py's 8-worker points doubled over 4% more.
    gc.freeze()

    local = _stop_on_sigterm()
    WorkerStop.reset()
    job = job or Worker()
    slot, slots = slurm_slot()
    index = index * slots + slot  # the launch's array entry `index` runs workers index*K … index*K + K-1
    share_gpus(slot, slots)
    if context.get("gpus") is not None:  # set by the launcher for local workers only
        pin_local_gpu(context["gpus"], index)
    if slot and threading.current_thread() is threading.main_thread():
        # submitit checkpoints and requeues a job from its first task only: the others hand their trial back here
        signal.signal(signal.SIGUSR2, job.hand_over)
    started, host = time.time(), socket.gethostname()
    context = dict(context)
    fence, reserves = context.pop("fence", None), context.pop("reserves", ())
    if fence and enter_fence(fence) is None:
        print("the launch that started this worker has stopped: no trial claimed", flush=True)
        return WorkerReport(index, host, {}, 0.0)
    remove_template_folder(Path(study_dir) / "logs")
    ex = cfg.executor
    study = open_study(config, open_storage(storage_url, wait_s=300), worker_index=index)
    params = space.parse(config["search_space"], config)
    done: dict[int, str] = {}
    errors, trial, checked = 0, None, float("-inf")
    job.max_retries = ex.max_retries
    deadline = started + cfg.study.timeout if cfg.study.timeout else None
    heartbeat = Heartbeat(study, ex.heartbeat_seconds)
    try:
        while deadline is None or time.time() < deadline:
            if time.monotonic() - checked >= ex.heartbeat_seconds:  # no heartbeat changes faster than this
                recover_stale(study, ex.stale_after_seconds, ex.max_retries)
                checked = time.monotonic()
            stop_if_asked()  # told to stop while between trials, or the handler's unwinding was lost
            trial = pop_trial(study, lambda number: _claim_attrs(Path(study_dir), number, index, host, context), index)
            if trial is None:
                if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                    break
                time.sleep(min(ex.heartbeat_seconds, 2.0))  # a running trial may yet need a retry: stay
                continue
            with heartbeat.beating(trial):
                outcome = run_trial(study, trial, config, params, Path(study_dir), index, host, context, trainer)
            done[trial.number], trial = outcome, None
            errors = errors + 1 if outcome == "error" else 0
            if errors >= MAX_CONSECUTIVE_ERRORS:
                raise RuntimeError(
                    f"worker {index}: {errors} trials in a row failed with an error; see their fail_reason "
                    f"(sweep status {config['study']['name']}) and this worker's log"
                )
    except Exception as exc:
        if job.preempted and trial is not None:  # checkpointed, but submitit's requeue failed (scontrol refused)
            hand_back(study, trial, "its SLURM job was preempted or timed out", job)
            raise
        if not is_disk_full(exc):
            raise
        release_reserves(reserves)  # room for the hand-back and for these lines in the log
        print(f"worker {index}: the disk is full ({type(exc).__name__}: {exc}); free space under "
              f"{study_dir} and where the storage lives, then launch again", file=sys.stderr, flush=True)
        if trial is not None:
            with contextlib.suppress(Exception):  # the launcher hands it back if this fails too
                retry(study, storage_of(study).get_trial(trial_id_of(trial)), "the disk was full", job.max_retries + 1)
                print(f"trial {trial.number} handed back to the study (the disk was full)", flush=True)
        raise
    except (KeyboardInterrupt, SystemExit):
        # Ctrl-C and the launcher's stop both arrive: finish this, and the exit after it, in a worker process of its
        # own; in a process that goes on (the debug executor's, a test's), only the hand-back, so that it does not
        # keep ignoring them and pass that on to every process it starts.
        spec = running_in()
        if spec is not None and not spec.in_process:  # ignored from here to the exit
            for signum in STOP_SIGNALS if local else (signal.SIGINT,):
                signal.signal(signum, signal.SIG_IGN)
        with signals_ignored((signal.SIGINT,)):  # and in-process, for the hand-back only (restored after)
            full = reserves_released(reserves)  # the launcher saw the disk fill up and stops every worker
            if full:
                print(f"worker {index}: stopped by the launcher: the disk is full; free space under {study_dir} "
                      "and where the storage lives, then launch again", file=sys.stderr, flush=True)
            if trial is not None:  # a requeued job, another worker or the next launch resumes it from its last epoch
                reason = ("its SLURM job was preempted or timed out" if job.preempted
                          else "the disk was full" if full else "interrupted")
                hand_back(study, trial, reason, job)
        raise
    finally:
        heartbeat.close()
        WorkerStop.reset()  # this process may train again outside a worker (in-process executors, tests)
    return WorkerReport(index, host, done, time.time() - started)


def hand_back(study: optuna.Study, trial: optuna.Trial, reason: str, job: Worker) -> None:
    """Give a trial this worker cannot finish back to the study, to be resumed from its last checkpoint."""
    frozen = storage_of(study).get_trial(trial_id_of(trial))
    retry(study, frozen, reason, job.max_retries + 1, counted=not (job.preempted and progressed(frozen)))
    print(f"trial {trial.number} handed back to the study ({reason})", flush=True)


def progressed(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether the trial finished an epoch since it started or resumed: then a preemption or time limit that
    stops it does not use up one of its retries (a trial may span any number of time limits), and one that stops
    it before any progress does, so a time limit shorter than an epoch ends in a failed trial, not a loop.
    Epochs, not reports: a cross-validated trial pruned by Wilcoxon reports once a fold, and records its epochs
    over every fold as `cv_epochs` (as `sweep_resumed_at_epoch` counts them)."""
    done = trial.user_attrs.get("cv_epochs", len(curve(trial)))
    return int(done) > int(trial.user_attrs.get("sweep_resumed_at_epoch", 0))


def _stop_on_sigterm() -> bool:
    """A local worker stops on SIGTERM and SIGHUP as on Ctrl-C (handing its trial back): the launcher stops its
    local workers with SIGTERM, which submitit's controller forwards, and a closed terminal sends SIGHUP to the
    launcher's whole process group. Returns whether this is a local worker.

    Only there: on SLURM, submitit ignores SIGTERM on purpose (SLURM sends it before the preemption signal)."""
    spec = running_in()
    local = spec is not None and spec.processes_here
    if local and threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.default_int_handler)  # raises KeyboardInterrupt
    return local


def _claim_attrs(study_dir: Path, number: int, worker: int, host: str, context: Mapping[str, Any]) -> dict[str, Any]:
    """Written with the claim of trial `number`, so a trial is never RUNNING without them: which launch and
    worker run it (a launcher hands back its own trials) and where its checkpoint is (a retry resumes there)."""
    run = {"host": host, "worker": worker, "pid": os.getpid(), "gpu": os.environ.get("CUDA_VISIBLE_DEVICES") or None,
           **slurm_place(), **context}
    keys = ("host", "worker", "pid", "gpu", "launch", "slurm_job_id", "slurm_node", "slurm_slot", "git_commit",
            "versions")
    attrs = {k: run[k] for k in keys if run.get(k) is not None}
    return {**attrs, "trial_dir": str(study_dir / "trials" / str(number))}

