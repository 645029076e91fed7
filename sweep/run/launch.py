"""`sweep launch`: create or resume the study, top up its budget, start workers through submitit, watch.

One code path for every executor: `debug` runs the worker in this process, `local` starts N worker
processes; each worker pulls trials from the study until the budget is met.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import functools
import os
import re
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import optuna
from optuna.trial import TrialState

from sweep.config.resolve import resolve
from sweep.look import status
from sweep.run.diskspace import DiskFull, Reserves
from sweep.run.fence import Fence
from sweep.run.jobs import JOB_FOLDER, in_queue
from sweep.run.jobs import record as jobs_record
from sweep.run.profile import check_with_cluster, load_profile, submitit_parameters
from sweep.schema import ConfigError
from sweep.search.study import CONFIG_ATTR, check_budget, counts, retry, top_up
from sweep.storage import mask, open_storage, study_dir
from sweep.storage.urls import for_workers

# Keys a resumed study may change: how much and how it runs, not what a trial means.
RESUMABLE = ("study.n_trials", "study.max_trials", "study.timeout", "executor.", "storage")
# Defaults that changed since a study may have been stored: (section, key, old default, new default). A study
# stored with the old value resumes with it, so the config that created it still resumes it unchanged.
CHANGED_DEFAULTS = (("pruner", "n_warmup_steps", None, 1),)  # 2026-11-23: a quarter of train.epochs → 1


def create_or_resume(
    config: dict[str, Any], storage: optuna.storages.BaseStorage, url: str, profile: Mapping[str, Any] | None = None
) -> optuna.Study:
    """Create the study with its config stored, or load it after checking the config still matches; a resumed
    study keeps what it was created with where only a default changed since (`config` is updated to it).

    A null `train.threads` is set here, once: a new study's from what one worker is given (`profile`: the SLURM
    one), a resumed study's from what it was created with, so every trial computes with the same thread count."""
    from sweep.run.worker import default_threads
    from sweep.search.study import make_pruner, make_sampler

    name = config["study"]["name"]
    threads_given = config["train"]["threads"] is not None
    if not threads_given:
        config["train"]["threads"] = default_threads(config, profile)
    stored = copy.deepcopy(config)
    stored["storage"] = None  # it may carry credentials
    try:
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            direction=config["study"]["direction"],
            sampler=make_sampler(config),
            pruner=make_pruner(config),
        )
        study.set_user_attr(CONFIG_ATTR, stored)
        return study
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage)
    previous = study.user_attrs.get(CONFIG_ATTR)
    if not isinstance(previous, dict):
        raise ConfigError(f"study {name!r} in {mask(url)} was not created by sweep; choose another --study name")
    created_with = previous.get("train", {}).get("threads")
    if not threads_given and created_with is not None:
        config["train"]["threads"] = stored["train"]["threads"] = created_with
    for section, key, old, new in CHANGED_DEFAULTS:
        was = previous.get(section, {})
        if key in was and was[key] == old and config[section].get(key) == new:
            config[section][key] = stored[section][key] = old
            print(f"study {name!r} was created when {section}.{key} defaulted to {old!r}: it resumes with "
                  f"{old!r} (the default is now {new!r}; a new study, --study NAME, gets it)", flush=True)
    before, now = _flat(previous), _flat(stored)
    for key in sorted(set(now) - set(before)):  # a stored config is complete: a key it lacks is newer than the study
        print(f"study {name!r} was created before {key} existed: it resumes with {now[key]!r}", flush=True)
    changed = [
        k
        for k in sorted(set(before) | set(now))
        if k in before and before.get(k) != now.get(k) and not k.startswith(RESUMABLE)
    ]
    if changed:
        lines = "; ".join(f"{k}: {before.get(k)!r} → {now.get(k)!r}" for k in changed[:8])
        raise ConfigError(
            f"study {name!r} already exists in {mask(url)} with a different config ({lines}). Trials of one "
            "study must be comparable: resume with the same settings, or start a new study with --study NAME",
        )
    study.set_user_attr(CONFIG_ATTR, stored)  # records the new budget
    return study


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value and key != "search_space":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_executor(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The SLURM profile, validated and tried on the cluster (`sbatch --test-only`) before anything is stored or
    submitted (None for other executors)."""
    ex = config["executor"]
    if ex["name"] != "slurm":
        return None
    if not ex["cluster"]:
        raise ConfigError("the slurm executor needs a profile: --cluster cluster/a100.yaml", key="executor.cluster")
    profile = load_profile(ex["cluster"])
    if shutil.which("sbatch") is None:
        raise ConfigError(
            "sbatch is not on PATH: launch SLURM studies from a login node of the cluster", key="executor.name"
        )
    check_with_cluster(profile, ex["cluster"], ex["workers"], config["study"]["name"])
    return profile


def preflight(config: Mapping[str, Any], profile: Mapping[str, Any] | None = None) -> None:
    """Check what a trial would fail on at once, before anything is stored or submitted: the dataset's metadata,
    the headers of every file the search decodes (the test fold's files only for presence and size), the
    pretrained weights, and a CUDA device asked for where the workers run on this machine."""
    from sweep import data, models
    from sweep.search import space

    problems, warnings, everywhere = [], [], []
    try:
        index = data.DATASETS[config["data"]["dataset"]].index(config)
    except data.DataError as exc:
        problems.append(str(exc))
    else:
        problems += empty_splits(index, config, ("train", "val"))
        bad, warnings = data.check_files(config, *search_files(index, config))
        problems += bad
    names = {config["model"]["name"]}
    for param in space.parse(config["search_space"], config):
        if param.path == "model.name":
            names.update(param.distribution.choices)
    missing = []
    for name in sorted(names):
        try:
            models.check_weights(resolve(space.apply(config, {"model.name": name}), "preflight")["model"])
        except models.WeightsMissing as exc:
            missing.append(str(exc))
    if profile is not None and own_caches(profile):
        problems += missing
    else:
        everywhere += missing
    if config["executor"]["name"] != "slurm":
        everywhere += cuda_missing(config)
    settle(config, problems, warnings, everywhere)


def search_files(index: Any, config: Mapping[str, Any]) -> tuple[dict[str, list], dict[str, list]]:
    """The items a search decodes (train, val) and those it must never open (test), by split."""
    from sweep.data import split_items

    folds, seed = config["data"]["folds"], config["data"]["split_seed"]
    decoded = {f"split {split}": split_items(index.items, folds, split, seed) for split in ("train", "val")}
    return decoded, {"split test": split_items(index.items, folds, "test", seed)}


# Variables that move the weight caches (models.hf_cache, models.torch_cache): a profile whose `setup` sets one
# gives its jobs other caches than this machine's, so what is missing here may be there.
CACHE_VARIABLES = re.compile(r"\b(HF_HOME|HF_HUB_CACHE|TORCH_HOME|XDG_CACHE_HOME)=")


def own_caches(profile: Mapping[str, Any]) -> bool:
    """Whether the profile's jobs set their own weight caches (else they read this machine's, exported)."""
    return any(CACHE_VARIABLES.search(line) for line in profile["setup"])


def cuda_missing(config: Mapping[str, Any]) -> list[str]:
    """A problem line if `train.device` (or a value the search picks for it) is cuda and this machine, where
    debug and local workers run, has no CUDA device."""
    from sweep.search import space

    devices = {config["train"]["device"]}
    for param in space.parse(config["search_space"], config):
        if param.path == "train.device":
            devices.update(param.distribution.choices)
    if "cuda" not in devices:
        return []
    import torch

    if torch.cuda.is_available():
        return []
    return [
        f"train.device is cuda, but this machine has no CUDA device (torch {torch.__version__}, "
        f"CUDA build {torch.version.cuda or 'none'}) and {config['executor']['name']} workers run here: "
        "set train.device: auto (CUDA where there is one) or cpu, or run on a GPU machine or --executor slurm"
    ]


def empty_splits(index: Any, config: Mapping[str, Any], splits: tuple[str, ...], run: str = "") -> list[str]:
    """A problem line for each split of the config that holds no clip of the dataset's index."""
    from sweep.data import split_items

    folds, present = config["data"]["folds"], sorted({it.fold for it in index.items})
    return [
        f"{run}{': ' if run else ''}data.folds.{split} {folds[split]} holds no clips (the dataset's folds: {present})"
        for split in splits
        if not split_items(index.items, folds, split, config["data"]["split_seed"])
    ]


def settle(
    config: Mapping[str, Any], problems: Sequence[str], warnings: Sequence[str] = (), everywhere: Sequence[str] = ()
) -> None:
    """Stop the command on what was found before submitting; `warnings` only warn.

    `problems` (data on this machine's paths) are warnings on SLURM: the jobs may see other paths there than
    the login node (node-local scratch, a root from their own environment). `everywhere` stops on every
    executor: a CUDA device asked for where the workers run here, and weights missing from the caches the
    SLURM jobs read too (they inherit this environment unless the profile's `setup` moves the caches).
    """
    for warning in warnings:
        print(f"sweep: warning: {warning}", file=sys.stderr, flush=True)
    stop = list(everywhere)
    if config["executor"]["name"] == "slurm":
        for problem in problems:
            print(f"sweep: warning: {problem} (checked on this machine; the SLURM jobs may see otherwise)",
                  file=sys.stderr, flush=True)
    else:
        stop = [*problems, *stop]
    if stop:
        raise ConfigError("; ".join(stop))


# What stops a launch: Ctrl-C, SIGTERM (what `kill`, `timeout` and SLURM send), SIGHUP (its terminal closed).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP raised where Ctrl-C raises KeyboardInterrupt, so that all three stop the launch the
    same way: workers stopped, their trials handed back, exit 128 + the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def signal_of(stop: KeyboardInterrupt) -> int:
    """The signal behind an interrupt: `Stopped`'s own, else SIGINT (Ctrl-C). After SIGHUP the terminal is gone
    (writing to it fails), so from then on this process's output goes nowhere."""
    signum = getattr(stop, "signum", signal.SIGINT)
    if signum == signal.SIGHUP:
        _silence()
    return signum


def _silence() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1), os.dup2(devnull, 2)
    os.close(devnull)


def _raise_stopped(signum: int, frame: Any) -> None:
    raise Stopped(signum)


def interruptible(run: Callable[..., int]) -> Callable[..., int]:
    """`run` with SIGTERM and SIGHUP raising `Stopped` (in the main thread), and an interrupt that comes before
    any worker was started (nothing to stop, nothing to hand back) answered with a message and exit 128 + the
    signal."""

    @functools.wraps(run)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        if threading.current_thread() is not threading.main_thread():
            return run(*args, **kwargs)
        previous = {signum: signal.signal(signum, _raise_stopped) for signum in STOP_SIGNALS[1:]}
        try:
            return run(*args, **kwargs)
        except KeyboardInterrupt as stop:
            signum = signal_of(stop)
            print(f"\ninterrupted ({signal.Signals(signum).name}) before any worker started", flush=True)
            return 128 + signum
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    return wrapper


@contextlib.contextmanager
def _signals_deferred():
    """SIGINT, SIGTERM and SIGHUP held until the block ends: submitting the workers is not cut off half-way, so the
    launcher knows every job it must stop; one that came meanwhile is raised right after the block. (Recorded
    by a handler, not blocked: a blocked signal stays blocked in the processes started meanwhile.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: held.append(signum))
                for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if held:
        raise Stopped(held[0]) if held[0] != signal.SIGINT else KeyboardInterrupt


@contextlib.contextmanager
def _signals_ignored():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)




def make_executor(config: Mapping[str, Any], logs: Path, workers: int, profile: Mapping[str, Any] | None):
    import submitit

    name = config["study"]["name"]
    logs.mkdir(parents=True, exist_ok=True)
    logs.chmod(0o700)  # submitit's pickles hold each job's arguments, its logs whatever a run prints: owner only
    executor = submitit.AutoExecutor(folder=str(logs / JOB_FOLDER), cluster=config["executor"]["name"])
    if profile is not None:
        executor.update_parameters(**submitit_parameters(profile, workers, name))
    else:
        executor.update_parameters(timeout_min=int(config["executor"]["timeout_min"]), name=name)
    return executor


@interruptible
def launch(config: dict[str, Any], url: str, detach: bool = False) -> int:
    """Run the study's remaining budget; returns the process exit code (non-zero if a worker failed; 130 after
    Ctrl-C, 143 after SIGTERM, 129 after SIGHUP, once the workers are stopped and their trials handed back)."""
    from sweep.run.worker import Worker, run_context, shared_cores

    name = config["study"]["name"]
    profile = check_executor(config)
    preflight(config, profile)
    if detach and config["executor"]["name"] == "debug":
        raise ConfigError("--detach needs workers that outlive this process: use --executor local or slurm")
    check_budget(config)
    storage = open_storage(url)
    study = create_or_resume(config, storage, url, profile)
    waiting = top_up(study, config["study"]["n_trials"], _report_enqueued)
    home = study_dir(name)
    print(f"study {name!r} in {mask(url)}: budget {config['study']['n_trials']} trials, {waiting} to run", flush=True)
    if waiting == 0:
        status.summary(study, sys.stdout)
        return 0
    workers = 1 if config["executor"]["name"] == "debug" else min(config["executor"]["workers"], waiting)
    note = shared_cores(config, workers)
    if note:
        print(note, flush=True)
    local = config["executor"]["name"] == "local"
    launch_id = uuid.uuid4().hex[:12]
    fence = Fence.create(home / "logs", launch_id) if local and not detach else None
    reserves = Reserves([home, *_storage_folders(url)]) if not detach else None
    context = dict(run_context(workers), launch=launch_id, fence=fence and str(fence.path),
                   reserves=[str(p) for p in reserves.paths] if reserves else [])
    since = datetime.datetime.now()  # as Optuna stamps datetime_start: local, naive
    executor = make_executor(config, home / "logs", workers, profile)
    worker_config, worker_url = dict(config, storage=None), for_workers(url, home)  # no password in the pickles
    failed: list[str] = []
    lost: list[str] = []
    jobs: list = []
    try:
        with _signals_deferred(), _controller_output(home / "logs" / "controllers.log" if local else None, detach):
            jobs = executor.map_array(
                Worker(), [worker_config] * workers, [worker_url] * workers, [str(home)] * workers, range(workers),
                [context] * workers,
            )
        jobs_record(study, jobs, config["executor"]["name"])
        if detach:
            print(
                f"jobs {' '.join(str(j.job_id) for j in jobs)} run on their own; follow them with "
                f"`sweep status {name}`, stop them with `sweep cancel {name}`"
            )
            return 0
        print(f"started {workers} {config['executor']['name']} worker(s); logs in {home / 'logs'}", flush=True)
        watch(study, jobs, check=reserves and reserves.check)
        for index, (job, (kind, value)) in enumerate(zip(jobs, outcomes(jobs))):
            if kind == "lost":  # killed, node lost, preempted for good: its trial was retried
                lost.append(f"worker {index} (job {job.job_id}) ended without finishing; log: {job.paths.stderr}")
            elif kind == "failed":  # FailedJobError (or, in debug, the exception itself): the worker raised
                failed.append(f"worker {index} (job {job.job_id}) failed: {job_error(value)}")
                failed.append(f"  log: {job.paths.stderr}")
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM / SIGHUP (`Stopped`)
        print(f"\ninterrupted ({signal.Signals(signal_of(stop)).name}): stopping workers", flush=True)
        with _signals_ignored():  # a second Ctrl-C must not cut the hand-back short
            stop_workers(jobs, fence)
            _hand_back_running(study, context["launch"], since, config["executor"]["max_retries"])
        status.summary(study, sys.stdout)
        return 128 + signal_of(stop)
    except DiskFull as full:
        print(f"sweep: error: {full}: stopping the workers; free some space, then launch again to resume",
              file=sys.stderr, flush=True)
        with _signals_ignored():
            stop_workers(jobs, fence)
            _hand_back_running(study, context["launch"], since, config["executor"]["max_retries"])
        status.summary(study, sys.stdout)
        return 1
    except BaseException:  # the launcher itself failed (its output closed, its storage gone): local workers are
        if fence is not None:  # its children, and must not run on unattended; each hands its own trial back
            with _signals_ignored():
                stop_workers(jobs, fence)
        raise
    finally:
        if reserves is not None:
            reserves.release()
    wait_stopped(jobs, fence)  # every worker has ended; a straggler submitit never signalled is stopped
    _hand_back_running(study, context["launch"], since, config["executor"]["max_retries"])
    status.summary(study, sys.stdout)
    for line in lost + failed:
        print(line, file=sys.stderr)
    trials = study.get_trials(deepcopy=False)
    unfinished = [t for t in trials if counts(t) and not t.state.is_finished()]
    if unfinished:
        print(f"{len(unfinished)} trial(s) of the budget still to run: launch again to run them", file=sys.stderr)
    all_failed = every_trial_failed(trials, context["launch"])
    if all_failed:
        print(all_failed, file=sys.stderr)
    return 1 if failed or unfinished or all_failed else 0


def every_trial_failed(trials: list, launch_id: str) -> str:
    """A message when every trial this launch finished failed ("" otherwise, or when it finished none).

    A budget spent on failures is no success, however few trials it held: the exit code says so, and the
    trials' own fail_reason says why (each reason once, with the trials that gave it).
    """
    mine = [t for t in trials if t.user_attrs.get("launch") == launch_id and counts(t) and t.state.is_finished()]
    if not mine or any(t.state != TrialState.FAIL for t in mine):
        return ""
    reasons: dict[str, list[int]] = {}
    for t in mine:
        reasons.setdefault(str(t.user_attrs.get("fail_reason", "no reason recorded")), []).append(t.number)
    lines = [f"trial{'s' if len(n) > 1 else ''} {', '.join(map(str, n))}: {why}" for why, n in reasons.items()]
    return f"every trial of this launch failed ({len(mine)}):\n  " + "\n  ".join(lines)


def _storage_folders(url: str) -> list[Path]:
    """The folder of a SQLite or journal file (its disk fills up like the study's), none for a server."""
    for scheme in ("sqlite:///", "journal:///"):
        if url.startswith(scheme) and url[len(scheme):] not in ("", ":memory:"):
            return [Path(url[len(scheme):]).resolve().parent]
    return []


def _report_enqueued(enqueued: int, owed: int) -> None:
    print(f"enqueued {enqueued}/{owed} trials", flush=True)


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


@contextlib.contextmanager
def _controller_output(log: Path | None, detach: bool):
    """Local workers are started by submitit's controller processes, which inherit this process's stdout and
    stderr and print nothing but their own tracebacks (a Ctrl-C gave four `KeyboardInterrupt` ones after
    sweep's message): their output goes to `log` (the workers' own goes to their log files anyway). A detached
    launch's must not hold a caller's pipe open either: /dev/null. Nothing to do for the other executors."""
    if log is None and not detach:
        yield
        return
    saved = [os.dup(1), os.dup(2)]
    target = os.open(os.devnull if detach or log is None else log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    sys.stdout.flush(), sys.stderr.flush()
    try:
        os.dup2(target, 1), os.dup2(target, 2)
        yield
    finally:
        os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        for fd in (*saved, target):
            os.close(fd)


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
        from submitit import SlurmJob

        running = [job for job in self.jobs if not job.done()]
        if running and time.time() - self.forced >= self.force_every:
            self.forced = time.time()
            running[0].done(force_check=True)  # one sacct call refreshes every job of the launch
            running = [job for job in running if not job.done()]
        if running:
            return False
        # Ended for submitit (a result, or SLURM's accounting) is not yet gone: a cancelled worker trains on
        # until KillWait's SIGKILL, and may claim a trial after the launcher has handed the last one back.
        return not in_queue([str(job.job_id) for job in self.jobs if isinstance(job, SlurmJob)])


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
    from submitit import DebugJob

    ended = JobsEnded([job for job in jobs if not isinstance(job, DebugJob)])
    while not ended():
        time.sleep(poll)

    def has_result(job: Any) -> bool:
        if isinstance(job, DebugJob):
            return True
        with contextlib.suppress(OSError):  # a network file system refreshes a folder's listing on a chmod
            job.paths.folder.chmod(job.paths.folder.stat().st_mode)
        return job.paths.result_pickle.exists()

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
) -> None:
    """Print progress until every job has ended: on a terminal one line rewritten every `every` s; elsewhere a
    line whenever the study's state changes, and at least one every `quiet` s while it does not. `check` is
    called at every poll (`Reserves.check`: it raises when the disk is full)."""
    tty, started, ended = sys.stdout.isatty(), time.time(), JobsEnded(jobs)
    last, written = "", float("-inf")
    while True:
        done = ended()
        if check is not None:  # after `ended`: a worker frees a reserve before it exits, so this sees it
            check()
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
    from submitit import LocalJob

    for job in jobs:
        if not isinstance(job, LocalJob):
            job.cancel(check=False)
    if fence is None:
        _wait_gone(jobs)
    else:
        wait_stopped(jobs, fence, signal.SIGTERM)


def wait_stopped(jobs: list, fence: Fence | None, signum: int | None = None, poll: float = 0.2) -> None:
    """Wait until every local job has ended and the fence is closed (no worker of this launch runs, and none
    will claim a trial): `signum` is sent to the live controllers every second meanwhile (one that was still
    starting its workers when the first came may have started one since); after `STOP_GRACE` s the workers
    left are killed. Without a fence (debug, SLURM) there is nothing to wait for here."""
    from submitit import LocalJob

    if fence is None:
        return
    local = [job for job in jobs if isinstance(job, LocalJob)]
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


def _hand_back_running(study: optuna.Study, launch_id: str, since: datetime.datetime, max_retries: int) -> None:
    """Trials this launch's workers left RUNNING (every worker gone) are handed back: the next launch
    resumes them from their checkpoints. A trial popped after this launch began whose worker stopped
    before it recorded anything (no `launch` attribute yet) is this launch's too: no one else can finish it."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        orphan = "launch" not in t.user_attrs and t.datetime_start is not None and t.datetime_start >= since
        if t.user_attrs.get("launch") == launch_id or orphan:
            retry(study, t, "its worker stopped without finishing it", max_retries)
