"""`sweep launch`: create or resume the study, top up its budget, start workers through submitit, watch.

One code path for every executor: `debug` runs the worker in this process, `local` starts N worker
processes; each worker pulls trials from the study until the budget is met.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import os
import signal
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from sweep.config.typed import typed
from sweep.look import status
from sweep.run.diskspace import DiskFull, Reserves
from sweep.run.executors import EXECUTORS, make_executor
from sweep.run.fence import Fence
from sweep.run.gpus import visible_gpus
from sweep.run.jobs import ENDED
from sweep.run.jobs import record as jobs_record
from sweep.run.jobs import states as job_states
from sweep.run.place import default_threads, run_context, shared_cores
from sweep.run.preflight import check_connections, check_executor, preflight
from sweep.run.replace import Replacements
from sweep.run.signals import interruptible, signal_of, signals_deferred, signals_ignored
from sweep.run.waiting import job_error, outcomes, stop_workers, wait_stopped, watch
from sweep.run.worker import Worker
from sweep.schema import ConfigError
from sweep.search import warm_start as warm
from sweep.search.strategy import make_pruner, make_sampler
from sweep.search.study import CONFIG_ATTR, check_budget, counts, restore_retries, retry, top_up
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
    name = config["study"]["name"]
    threads_given = config["train"]["threads"] is not None
    if not threads_given:
        per_job = EXECUTORS[config["executor"]["name"]].per_job(config, profile)
        config["train"]["threads"] = default_threads(config, profile, per_job)
    stored = copy.deepcopy(config)
    stored["storage"] = None  # it may carry credentials
    try:
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            directions=config["study"]["directions"],
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



@interruptible
def launch(
    config: dict[str, Any], url: str, detach: bool = False, warm_start: Sequence[warm.Source] = ()
) -> int:
    """Run the study's remaining budget; returns the process exit code (non-zero if a worker failed; 130 after
    Ctrl-C, 143 after SIGTERM, 129 after SIGHUP, once the workers are stopped and their trials handed back).

    `warm_start`: studies whose complete trials seed this new one (`sweep.search.warm_start`), all read and
    converted before the study is created, so a bad source leaves nothing behind."""
    cfg = typed(config)
    name = cfg.study.name
    spec = EXECUTORS[cfg.executor.name]
    profile = check_executor(config)
    preflight(config, profile)
    if detach and spec.in_process:
        outliving = " or ".join(n for n, s in EXECUTORS.items() if not s.in_process)
        raise ConfigError(f"--detach needs workers that outlive this process: use --executor {outliving}")
    check_budget(config)
    seeds = warm.plan(config, warm_start) if warm_start else []
    storage = open_storage(url)
    check_connections(config, url, storage)
    if warm_start:
        warm.check_target(name, storage, url)
    study = create_or_resume(config, storage, url, profile)
    if seeds:
        warm.seed(study, seeds)
    _restore_retries(study)
    waiting = top_up(study, cfg.study.n_trials, _report_enqueued)
    home = study_dir(name)
    print(f"study {name!r} in {mask(url)}: budget {config['study']['n_trials']} trials, {waiting} to run", flush=True)
    if waiting == 0:
        status.summary(study, sys.stdout)
        return 0
    workers = 1 if spec.in_process else min(cfg.executor.workers, waiting)
    note = shared_cores(config, workers)
    if note:
        print(note, flush=True)
    local = spec.processes_here
    launch_id = uuid.uuid4().hex[:12]
    fence = Fence.create(home / "logs", launch_id) if local and not detach else None
    reserves = Reserves([home, *_storage_folders(url)]) if not detach else None
    context = dict(run_context(workers), launch=launch_id, fence=fence and str(fence.path),
                   reserves=[str(p) for p in reserves.paths] if reserves else [],
                   gpus=visible_gpus() if local else None)  # what local workers share (gpus.pin_local_gpu)
    since = datetime.datetime.now()  # as Optuna stamps datetime_start: local, naive
    per_job = spec.per_job(config, profile)
    entries = -(-workers // per_job)  # jobs of `per_job` workers each (the last one full too)
    executor = make_executor(config, home / "logs", workers, profile, per_job)
    worker_config, worker_url = dict(config, storage=None), for_workers(url, home)  # no password in the pickles
    failed: list[str] = []
    lost: list[str] = []
    jobs: list = []
    try:
        with signals_deferred(), _controller_output(home / "logs" / "controllers.log" if local else None, detach):
            array = executor.map_array(
                Worker(), [worker_config] * entries, [worker_url] * entries, [str(home)] * entries, range(entries),
                [context] * entries,
            )
        jobs = [worker for job in array for worker in spec.workers_of(job)]  # entry i runs workers i*K … i*K+K-1
        jobs_record(study, array, cfg.executor.name)
        if detach:
            print(
                f"jobs {' '.join(str(j.job_id) for j in array)} run on their own; follow them with "
                f"`sweep status {name}`, stop them with `sweep cancel {name}`"
            )
            return 0
        print(f"started {len(jobs)} {config['executor']['name']} worker(s)"
              + (f", {per_job} to each of {len(array)} jobs" if per_job > 1 else "")
              + f"; logs in {home / 'logs'}", flush=True)

        def start(first: int) -> list:  # one more job: its workers are numbered from `first`, a multiple of K
            with signals_deferred(), _controller_output(home / "logs" / "controllers.log" if local else None, detach):
                job = executor.submit(Worker(), worker_config, worker_url, str(home), first // per_job, context)
            jobs_record(study, [job], cfg.executor.name)
            return spec.workers_of(job)

        limit = workers if cfg.executor.max_replacements is None else cfg.executor.max_replacements
        replace = None if spec.in_process else Replacements(study, launch_id, start, workers, limit,
                                                            cfg.executor.max_retries)
        watch(study, jobs, check=reserves and reserves.check, replace=replace)
        for index, (job, (kind, value)) in enumerate(zip(jobs, outcomes(jobs))):
            if kind == "lost":  # killed, node lost, preempted for good: its trial was retried
                instead = replace.replaced.get(index) if replace else None
                lost.append(f"worker {index} (job {job.job_id}) ended without finishing"
                            + (f" (worker {instead} took its place)" if instead is not None else "")
                            + f"; log: {job.paths.stderr}")
            elif kind == "failed":  # FailedJobError (or, in debug, the exception itself): the worker raised
                failed.append(f"worker {index} (job {job.job_id}) failed: {job_error(value)}")
                failed.append(f"  log: {job.paths.stderr}")
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM / SIGHUP (`Stopped`)
        print(f"\ninterrupted ({signal.Signals(signal_of(stop)).name}): stopping workers", flush=True)
        with signals_ignored():  # a second Ctrl-C must not cut the hand-back short
            stop_workers(jobs, fence)
            _hand_back_running(study, context["launch"], since, cfg.executor.max_retries)
        status.summary(study, sys.stdout)
        return 128 + signal_of(stop)
    except DiskFull as full:
        print(f"sweep: error: {full}: stopping the workers; free some space, then launch again to resume",
              file=sys.stderr, flush=True)
        with signals_ignored():
            stop_workers(jobs, fence)
            _hand_back_running(study, context["launch"], since, cfg.executor.max_retries)
        status.summary(study, sys.stdout)
        return 1
    except BaseException:  # the launcher itself failed (its output closed, its storage gone): local workers are
        if fence is not None:  # its children, and must not run on unattended; each hands its own trial back
            with signals_ignored():
                stop_workers(jobs, fence)
        raise
    finally:
        if reserves is not None:
            reserves.release()
    wait_stopped(jobs, fence)  # every worker has ended; a straggler submitit never signalled is stopped
    _hand_back_running(study, context["launch"], since, cfg.executor.max_retries)
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



def _hand_back_running(study: optuna.Study, launch_id: str, since: datetime.datetime, max_retries: int) -> None:
    """Trials this launch's workers left RUNNING (every worker gone) are handed back: the next launch
    resumes them from their checkpoints. A trial popped after this launch began whose worker stopped
    before it recorded anything (no `launch` attribute yet) is this launch's too: no one else can finish it."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        orphan = "launch" not in t.user_attrs and t.datetime_start is not None and t.datetime_start >= since
        if t.user_attrs.get("launch") == launch_id or orphan:
            try:
                retry(study, t, "its worker stopped without finishing it", max_retries)
            except Exception as exc:  # noqa: BLE001  (a full disk refused it: the next ones may still fit)
                print(f"trial {t.number} could not be handed back ({type(exc).__name__}: {exc}); the next launch "
                      "retries it once its heartbeat is stale", file=sys.stderr, flush=True)


# A voided trial whose retry is missing is restored by the next launch once no job of the study is active and
# this long has passed (a launcher's hand-back writes the retry right after the void), or after `RESTORE_AFTER`
# whatever runs (a SLURM job the launcher cannot see may still be writing it).
SETTLE_S, RESTORE_AFTER_S = 5.0, 600.0


def _restore_retries(study: optuna.Study) -> None:
    active = [e for e in job_states(study) if e["state"].split()[0] not in ENDED]
    now = datetime.datetime.now()

    def settled(t: optuna.trial.FrozenTrial) -> bool:
        age = (now - t.datetime_complete).total_seconds() if t.datetime_complete else 0.0
        return age > RESTORE_AFTER_S or (not active and age > SETTLE_S)

    for number in restore_retries(study, settled):
        print(f"trial {number} was handed back but its retry was never stored (its worker stopped, or the disk "
              "was full): enqueued it now, to resume from its checkpoint", flush=True)
