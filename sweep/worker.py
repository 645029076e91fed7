"""A worker: the function submitit runs (in-process, as a local process, or as a SLURM task).

It pulls trials from the shared study one at a time until the budget is used up, so a fast worker takes
more trials than a slow one and no GPU waits for a batch to finish. Every trial's resolved config, seed,
package versions and git commit are written to studies/STUDY/trials/N/ and to the trial's attributes.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import optuna

from sweep import space
from sweep.config import dump_yaml, resolve
from sweep.storage import open_storage
from sweep.study import VOID, open_study, pop_trial

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


def threads_per_worker(config: Mapping[str, Any]) -> int:
    """SLURM's allocation when there is one, else the config's, else an equal share of this machine."""
    if os.environ.get("SLURM_CPUS_PER_TASK"):
        return int(os.environ["SLURM_CPUS_PER_TASK"])
    if config["executor"]["cpus_per_worker"]:
        return config["executor"]["cpus_per_worker"]
    return max(1, (os.cpu_count() or 1) // config["executor"]["workers"])


def run_worker(
    config: dict[str, Any], storage_url: str, study_dir: str, index: int, context: dict[str, Any]
) -> WorkerReport:
    import torch

    torch.set_num_threads(threads_per_worker(config))
    started, host = time.time(), socket.gethostname()
    study = open_study(config, open_storage(storage_url), worker_index=index)
    params = space.parse(config["search_space"], config)
    done: dict[int, str] = {}
    errors, trial = 0, None
    deadline = started + config["study"]["timeout"] if config["study"]["timeout"] else None
    try:
        while deadline is None or time.time() < deadline:
            trial = pop_trial(study)
            if trial is None:
                break
            outcome = run_trial(study, trial, config, params, Path(study_dir), index, host, context)
            done[trial.number], trial = outcome, None
            errors = errors + 1 if outcome == "error" else 0
            if errors >= MAX_CONSECUTIVE_ERRORS:
                raise RuntimeError(
                    f"worker {index}: {errors} trials in a row failed with an error; see their fail_reason "
                    f"(sweep status {config['study']['name']}) and this worker's log"
                )
    except (KeyboardInterrupt, SystemExit):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C and submitit's cancel both arrive: finish this
        if trial is not None:
            _void(study, trial, "interrupted; a later launch runs a new trial in its place")
        raise
    return WorkerReport(index, host, done, time.time() - started)


def run_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    base: dict[str, Any],
    params: list[space.Param],
    study_dir: Path,
    worker: int,
    host: str,
    context: Mapping[str, Any],
) -> str:
    """Run one trial to its end and tell the study; returns complete, pruned, nan or error."""
    from sweep.train import NonFiniteLoss, train

    State = optuna.trial.TrialState
    out_dir = study_dir / "trials" / str(trial.number)
    log = f"[worker {worker}] trial {trial.number}"
    try:
        drawn = space.suggest(trial, params, base)
        config = resolve(space.apply(base, drawn), f"trial {trial.number}")
        _record(trial, config, drawn, out_dir, worker, host, context)
        print(f"{log} starts: {json.dumps(drawn)}", flush=True)
        result = train(config, out_dir, trial)
    except optuna.TrialPruned as exc:
        print(f"{log} {exc}", flush=True)
        study.tell(trial, state=State.PRUNED)
        return "pruned"
    except NonFiniteLoss as exc:
        print(f"{log} failed: {exc}", flush=True)
        trial.set_user_attr("fail_reason", str(exc))
        study.tell(trial, state=State.FAIL)
        return "nan"
    except Exception as exc:
        print(f"{log} failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}"[:2000])
        study.tell(trial, state=State.FAIL)
        return "error"
    trial.set_user_attr("best_epoch", result.best_epoch)
    study.tell(trial, result.best_value)
    print(f"{log} complete: {base['study']['metric']}={result.best_value:.4f}", flush=True)
    return "complete"


def _void(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    """Fail a trial without counting it toward the budget (unless it already finished)."""
    try:
        trial.set_user_attr(VOID, reason)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass


def _record(
    trial: optuna.Trial,
    config: Mapping[str, Any],
    drawn: Mapping[str, Any],
    out_dir: Path,
    worker: int,
    host: str,
    context: Mapping[str, Any],
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(dump_yaml(config))
    run = {
        "trial": trial.number,
        "params": dict(drawn),
        "seed": config["train"]["seed"],
        "host": host,
        "worker": worker,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        **context,
    }
    (out_dir / "run.json").write_text(json.dumps(run, indent=1))
    for key in ("seed", "host", "worker", "launch", "slurm_job_id", "git_commit", "versions"):
        if run.get(key) is not None:
            trial.set_user_attr(key, run[key])
    trial.set_user_attr("trial_dir", str(out_dir))
    trial.set_user_attr("config", json.loads(json.dumps(config)))
