"""One trial, from its draw to its tell: the config resolved and recorded in its folder, a predecessor's
checkpoint taken over, the training with its pruner asked each epoch, and the outcome written in one transaction.

`train_trial` is the trainer a worker runs for each trial (and what the benchmarks time); `run_trial` wraps it
with everything the study must know, whatever way the trial ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna

from sweep.checkpoint import CHECKPOINT, CheckpointError, resume_source
from sweep.config.resolve import resolve
from sweep.config.typed import typed
from sweep.config.yamlfile import dump_yaml
from sweep.look.hparams import write_summary
from sweep.look.status import best_epoch, maximizes
from sweep.run.cv import FoldsPruned, take_over_folds, train_cv
from sweep.run.measure import measure, one_clip
from sweep.run.place import slurm_place
from sweep.run.signals import stop_if_asked
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
from sweep.storage import flush_trial, is_disk_full, tell_with
from sweep.storage.optuna_private import cached_frozen_trial
from sweep.train.loop import NonFiniteLoss, Result, fit, save, validate
from sweep.train.setup import Run, setup


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
            if not last:  # checkpointed and reported: a stop the worker was told of is taken here at the latest
                stop_if_asked()

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

