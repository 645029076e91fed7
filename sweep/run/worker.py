"""A worker: the function submitit runs (in-process, as a local process, or as a SLURM task).

It pulls trials from the shared study one at a time until the budget is used up, so a fast worker takes
more trials than a slow one and no GPU waits for a batch to finish. Every trial's resolved config, seed,
package versions and git commit are written to studies/STUDY/trials/N/ and to the trial's attributes.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import optuna
import submitit

from sweep.checkpoint import CHECKPOINT, CheckpointError, resume_source
from sweep.config.resolve import resolve
from sweep.config.typed import typed
from sweep.config.yamlfile import dump_yaml
from sweep.look.hparams import write_summary
from sweep.look.status import best_epoch, maximizes
from sweep.run.cv import FoldsPruned, take_over_folds, train_cv
from sweep.run.diskspace import release as release_reserves
from sweep.run.diskspace import released as reserves_released
from sweep.run.executors import EXECUTORS, running_in
from sweep.run.fence import enter as enter_fence
from sweep.run.gpus import pin_local_gpu, share_gpus
from sweep.run.jobs import remove_template_folder
from sweep.run.measure import measure, one_clip
from sweep.search import space
from sweep.search.objectives import (
    CURVE,
    STATIC,
    constraint_values,
    curve,
    is_multi,
    static,
    static_metrics,
    told_values,
)
from sweep.search.strategy import open_study
from sweep.search.study import pop_trial, recover_stale, retry
from sweep.storage import flush_trial, is_disk_full, open_storage, tell_with
from sweep.storage.optuna_private import cached_frozen_trial, storage_of, trial_id_of
from sweep.train.loop import NonFiniteLoss, Result, fit, save, validate
from sweep.train.setup import Run, setup

MAX_CONSECUTIVE_ERRORS = 3  # a config or code bug fails every trial: stop instead of burning the budget


@dataclass
class WorkerReport:
    """What a worker did, returned to the launcher through submitit."""

    worker: int
    host: str
    trials: dict[int, str]
    seconds: float


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
        print("preempted or near the time limit: requeueing this worker", flush=True)
        return submitit.helpers.DelayedSubmission(Worker(), *args, **kwargs)

    def hand_over(self, signum: int, frame: Any) -> None:
        """The time-limit signal in a job's second or later task, which submitit leaves alone: unwind so that
        `run_worker` hands the trial back; the first task requeues the whole job, this one with it."""
        self.preempted = True
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
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP) if local else (signal.SIGINT,):
            signal.signal(signum, signal.SIG_IGN)  # Ctrl-C and the launcher's stop both arrive: finish this
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


def run_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    base: dict[str, Any],
    params: list[space.Param],
    study_dir: Path,
    worker: int,
    host: str,
    context: Mapping[str, Any],
    trainer: Callable[..., Any] | None = None,
) -> str:
    """Run one trial to its end and tell the study; returns complete, pruned, nan or error."""

    train = trainer or train_trial

    out_dir = study_dir / "trials" / str(trial.number)
    log = f"[worker {worker}] trial {trial.number}"
    started = time.time()
    closing: dict[str, Any] = {}  # written with the trial's final state, in the same transaction
    try:
        drawn = space.suggest(trial, params, base)
        flush_trial(study, trial)  # the journal appends the claim's attributes and the params together
        config = resolve(space.apply(base, drawn), f"trial {trial.number}")
        closing.update(_record(trial, config, drawn, out_dir, worker, host, context))
        refused = _take_over(trial.user_attrs.get("sweep_resume_from"), study_dir / "trials", out_dir, config)
        if refused:
            print(f"{log}: not resuming, starting from epoch 0: {refused}", file=sys.stderr, flush=True)
            closing["sweep_resume_refused"] = refused
        print(f"{log} starts: {json.dumps(drawn)}", flush=True)
        result = train(config, out_dir, trial)
    except FoldsPruned as exc:  # cross-validated: the mean of the folds it finished
        print(f"{log} {exc}", flush=True)
        _finished(study, trial, out_dir, "pruned", started, {**closing, **exc.attrs}, exc.value)
        return "pruned"
    except optuna.TrialPruned as exc:
        print(f"{log} {exc}", flush=True)
        top = best_epoch(cached_frozen_trial(trial), maximizes(study))  # a pruned trial's value is its best epoch's
        if top is None:  # pruned before its first epoch ended: nothing to show
            _finished(study, trial, out_dir, "pruned", started, closing)
        elif is_multi(study):  # Optuna takes no values with PRUNED; its curve and static values are its attributes
            _finished(study, trial, out_dir, "pruned", started, {**closing, "best_epoch": top[0]})
        else:
            _finished(study, trial, out_dir, "pruned", started, {**closing, "best_epoch": top[0]}, top[1])
        return "pruned"
    except NonFiniteLoss as exc:
        print(f"{log} failed: {exc}", flush=True)
        _fail(study, trial, str(exc), closing)
        return "nan"
    except CheckpointError as exc:  # its own folder held a checkpoint sweep did not write: no traceback to show
        print(f"{log} failed: {exc}", file=sys.stderr, flush=True)
        _fail(study, trial, str(exc), closing)
        return "error"
    except Exception as exc:
        if is_disk_full(exc):  # not the trial's fault: the worker stops and hands it back (`run_worker`)
            raise
        print(f"{log} failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        _fail(study, trial, f"{type(exc).__name__}: {exc}"[:2000], closing)
        return "error"
    stopped = {"stopped": result.stopped} if result.stopped else {}  # early stopping (`train.patience`)
    told = told_values(base, result.best_value, static(cached_frozen_trial(trial))) if is_multi(study) else None
    _finished(study, trial, out_dir, "complete", started,
              {**closing, "best_epoch": result.best_epoch, **stopped, **result.attrs}, told or result.best_value)
    print(f"{log} complete: {base['study']['metric']}={result.best_value:.4f}", flush=True)
    return "complete"


def train_trial(config: Mapping[str, Any], out_dir: Path, trial: optuna.Trial | None = None) -> Result:
    """Train one trial's config into `out_dir`: scored on the validation folds each epoch, then saved, reported
    to `trial` and stopped if its pruner says so (never after the last epoch: a fully trained trial completes).

    A checkpoint in `out_dir` is resumed from, so a trial restarted after its worker died continues where it
    stopped; the epochs it had run are reported again, so the retried trial carries the whole curve."""
    cfg = typed(config)
    if cfg.study.cv is not None:
        return train_cv(config, out_dir, trial)

    metric, epochs = cfg.study.metric, cfg.train.epochs
    better = max if cfg.study.direction == "maximize" else min
    run = setup(config, out_dir, ("train",), "val")
    if trial is not None and run.history:  # where a retry picked up: the epochs before it are not trained again
        trial.set_user_attr("sweep_resumed_at_epoch", len(run.history))
    if trial is not None:
        measure_static(trial, config, run)
    for row in run.history if trial is not None else ():
        report(trial, row[metric], int(row["epoch"]))

    def end_epoch(run: Run, row: dict[str, float]) -> None:
        best = better(run.history, key=lambda r: r[metric])
        stopped = {"stopped": "patience"} if run.stalled() else {}  # its last epoch: the trial completes
        save(run, {"metric": metric, "best_epoch": best["epoch"], "best_value": best[metric], **stopped,
                   "epochs": run.history})
        if trial is not None:
            report(trial, row[metric], row["epoch"])
            last = bool(stopped) or row["epoch"] == epochs  # after the last epoch, nothing is left to save
            if not last and should_prune(trial):
                raise optuna.TrialPruned(f"pruned after epoch {row['epoch']}: {metric}={row[metric]:.4f}")

    fit(run, validate, end_epoch)
    best = better(run.history, key=lambda r: r[metric])
    return Result(best[metric], int(best["epoch"]), run.history, "patience" if run.stalled() else None)


def report(trial: optuna.Trial, value: float, epoch: int) -> None:
    """`trial.report`; with several objectives, which Optuna does not take, the user attribute `CURVE`."""
    if not is_multi(trial.study):
        trial.report(value, epoch)
        return
    trial.set_user_attr(CURVE, {**trial.user_attrs.get(CURVE, {}), str(epoch): value})


def should_prune(trial: optuna.Trial) -> bool:
    """`trial.should_prune`; with several objectives, sweep's dominance rule (`sweep.search.dominance`)."""
    if not is_multi(trial.study):
        return trial.should_prune()
    return trial.study.pruner.prune(trial.study, cached_frozen_trial(trial))


def measure_static(trial: optuna.Trial, config: Mapping[str, Any], run: Run) -> None:
    """The trial's static metrics (`STATIC`) and constraint values, before its first epoch; a trial outside a
    hard limit stops here, untrained (its constraints tell the sampler why). A retried trial keeps the values
    its predecessor measured, so a trial resumed on another device keeps one latency."""
    names = static_metrics(config)
    if not names:
        return
    earlier = _earlier(trial)
    measured = static(earlier) if earlier is not None and static(earlier) else None
    measured = measured or measure(run.model, one_clip(config, run.device), names)
    trial.set_user_attr(STATIC, measured)
    broken = []
    for key, value in constraint_values(config, measured).items():
        trial.set_constraint(key, value)
        if value > 0:
            broken.append(f"{key.replace('.', ' ')} {measured[key.split('.')[0]]:.4g}")
    if broken:
        raise optuna.TrialPruned(f"infeasible before its first epoch: {', '.join(broken)} (study.constraints)")


def _earlier(trial: optuna.Trial) -> optuna.trial.FrozenTrial | None:
    number = trial.user_attrs.get("sweep_retry_of")
    if number is None:
        return None
    return next((t for t in trial.study.get_trials(deepcopy=False) if t.number == number), None)


def _claim_attrs(study_dir: Path, number: int, worker: int, host: str, context: Mapping[str, Any]) -> dict[str, Any]:
    """Written with the claim of trial `number`, so a trial is never RUNNING without them: which launch and
    worker run it (a launcher hands back its own trials) and where its checkpoint is (a retry resumes there)."""
    run = {"host": host, "worker": worker, "pid": os.getpid(), "gpu": os.environ.get("CUDA_VISIBLE_DEVICES") or None,
           **slurm_place(), **context}
    keys = ("host", "worker", "pid", "gpu", "launch", "slurm_job_id", "slurm_node", "slurm_slot", "git_commit",
            "versions")
    attrs = {k: run[k] for k in keys if run.get(k) is not None}
    return {**attrs, "trial_dir": str(study_dir / "trials" / str(number))}


def _finished(
    study: optuna.Study,
    trial: optuna.Trial,
    out_dir: Path,
    state: str,
    started: float,
    attrs: dict[str, Any],
    value: float | list[float] | None = None,
) -> None:
    """Tell the study, with what the dashboard shows of a finished trial (epochs, wall time, checkpoint) in the
    same write; then its TensorBoard HParams session."""

    attrs = {**attrs, "epochs_run": len(curve(cached_frozen_trial(trial)))}
    attrs["wall_seconds"] = round(time.time() - started, 3)
    if (out_dir / "checkpoint.pt").exists():
        attrs["checkpoint"] = str(out_dir / "checkpoint.pt")
    pruned = optuna.trial.TrialState.PRUNED
    tell_with(study, trial, attrs, value, state=pruned if state == "pruned" else None)
    try:
        write_summary(out_dir, trial.params, state, started)
    except Exception as exc:  # a TensorBoard summary is not worth the trial's result
        print(f"trial {trial.number}: no TensorBoard hparams summary: {type(exc).__name__}: {exc}", file=sys.stderr)


def _fail(study: optuna.Study, trial: optuna.Trial, reason: str, attrs: dict[str, Any]) -> None:
    epochs = len(curve(cached_frozen_trial(trial)))
    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # already handed back: keep that
        failed = optuna.trial.TrialState.FAIL
        tell_with(study, trial, {**attrs, "fail_reason": reason, "epochs_run": epochs}, state=failed,
                  skip_if_finished=True)


def _take_over(previous: str | None, trials_dir: Path, out_dir: Path, config: Mapping[str, Any]) -> str | None:
    """A retried trial starts from the checkpoint (and TensorBoard curves) its predecessor left, if that is a
    trial folder of this study holding a weights-only checkpoint; returns why not, when it is refused. A
    cross-validated one, from its fold folders (`cv.take_over_folds`).

    `previous` comes from a trial attribute, which anyone who can write to the study database can set."""

    if config["study"]["cv"] is not None:
        return take_over_folds(previous, trials_dir, out_dir)
    folder, refused = resume_source(previous, trials_dir, out_dir)
    if folder is None:
        return refused
    shutil.copy2(folder / CHECKPOINT, out_dir / CHECKPOINT)
    if (folder / "tb").is_dir() and not (folder / "tb").is_symlink():  # links inside are copied as links
        shutil.copytree(folder / "tb", out_dir / "tb", symlinks=True, dirs_exist_ok=True)
    return None


def _record(
    trial: optuna.Trial,
    config: Mapping[str, Any],
    drawn: Mapping[str, Any],
    out_dir: Path,
    worker: int,
    host: str,
    context: Mapping[str, Any],
) -> dict[str, Any]:
    """The trial's config.yaml and run.json; returns its attributes for the end of the trial (seed, config)."""
    cfg = typed(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(dump_yaml(config))
    run = {
        "trial": trial.number,
        "params": dict(drawn),
        "seed": cfg.train.seed,
        "host": host,
        "worker": worker,
        "pid": os.getpid(),
        **slurm_place(),
        **context,
    }
    (out_dir / "run.json").write_text(json.dumps(run) + "\n")  # C encoder: `indent` takes the Python one
    return {"seed": cfg.train.seed, "config": json.loads(json.dumps(config))}
