"""Text views of a study: the live progress line, the end-of-launch table, and `sweep status`."""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from collections.abc import Sequence
from typing import IO, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweep.run.jobs import ENDED
from sweep.search import pareto
from sweep.search.objectives import curve, is_multi, maximizes_primary, primary, static
from sweep.search.study import CONFIG_ATTR, SEEDED, counts


def _metric(study: optuna.Study) -> str:
    return study.user_attrs.get(CONFIG_ATTR, {}).get("study", {}).get("metric", "value")


def best_epoch(t: FrozenTrial, maximize: bool) -> tuple[int, float] | None:
    """(epoch, metric) of the trial's best epoch so far, the first of equals, as the trainer picks it for
    metrics.json; None before its first epoch."""
    values = curve(t)
    if not values:
        return None
    pick = max if maximize else min
    return pick(sorted(values.items()), key=lambda item: item[1])


def trial_value(t: FrozenTrial, maximize: bool) -> float | None:
    """A trial's value, the one definition every view uses: the metric of its best epoch. That is Optuna's value
    of a complete trial; a pruned trial has none in Optuna, so the best of the epochs it ran (what its
    metrics.json and TensorBoard's best/METRIC say); a running or failed one, the best so far."""
    if t.state == TrialState.COMPLETE and primary(t) is not None:
        return primary(t)
    top = best_epoch(t, maximize)
    return None if top is None else top[1]


def maximizes(study: optuna.Study) -> bool:
    """Whether the (primary) metric is maximised."""
    return maximizes_primary(study)


def best(study: optuna.Study, rule: str | None = None) -> FrozenTrial | None:
    """The best complete trial of the budget (a trial seeded by a warm start was trained by another study); with
    several objectives the one `rule` picks from the Pareto front (default: the best primary metric on it,
    `sweep.search.pareto.DEFAULT`)."""
    own = [t for t in study.get_trials(deepcopy=False) if counts(t)]
    if is_multi(study) or rule is not None:
        return pareto.pick(own, study.user_attrs[CONFIG_ATTR], rule)
    done = [t for t in own if t.state == TrialState.COMPLETE]
    if not done:
        return None
    pick = max if maximizes(study) else min
    return pick(done, key=lambda t: (t.value, -t.number))


def tally(trials: Sequence[FrozenTrial]) -> Counter:
    return Counter(t.state.name.lower() for t in trials if counts(t))


def progress_state(study: optuna.Study) -> str:
    """Where the study stands (trials by state, the best), without the clock: `launch` writes a line to a log
    file only when this changes, since the elapsed time alone changes on every poll."""
    n = tally(study.get_trials(deepcopy=False))
    finished = n["complete"] + n["pruned"] + n["fail"]
    line = (
        f"{finished}/{sum(n.values())} finished ({n['complete']} complete, {n['pruned']} pruned, "
        f"{n['fail']} failed), {n['running']} running"
    )
    top = best(study)
    if top is not None:
        line += f"  best {_metric(study)}={primary(top):.4f} (trial {top.number})"
    return line


def summary(study: optuna.Study, out: IO[str]) -> None:
    """One row per trial of the budget, then the best trial."""
    trials = [t for t in study.get_trials(deepcopy=False) if counts(t) and t.state != TrialState.WAITING]
    rows = [
        [
            str(t.number),
            t.state.name.lower(),
            value_text(t, maximizes(study)),
            str(len(curve(t))),
            _duration(t),
            _params(t.params),
        ]
        for t in trials
    ]
    _table(["trial", "state", _metric(study), "epochs", "time", "params"], rows, out)
    top = best(study)
    if top is None:
        print("no trial has completed yet", file=out)
    else:
        print(f"best: trial {top.number}, {_metric(study)}={primary(top):.4f}, {_params(top.params)}", file=out)


def show(study: optuna.Study, out: IO[str], jobs: list[dict[str, Any]] | None = None) -> None:
    """`sweep status`: trials by state, the best, and what is running now."""
    trials = study.get_trials(deepcopy=False)
    n = tally(trials)
    seeded = sum(1 for t in trials if SEEDED in t.user_attrs)
    void = sum(1 for t in trials if not counts(t)) - seeded
    print(
        f"study {study.study_name}: "
        + ", ".join(f"{v} {k}" for k, v in sorted(n.items()))
        + (f"; {void} voided (interrupted or lowered budget, not counted)" if void else "")
        + (f"; {seeded} seeded by a warm start (not counted)" if seeded else ""),
        file=out,
    )
    top = best(study)
    if top is None:
        print("best: none completed yet", file=out)
    else:
        print(f"best: trial {top.number}, {_metric(study)}={primary(top):.4f}{_static_text(top)}{folds_text(top)}",
              file=out)
        for key, value in top.params.items():
            print(f"  {key}: {value}", file=out)
    running = [t for t in trials if t.state == TrialState.RUNNING]
    if running:
        print("running:", file=out)
        rows = [
            [
                str(t.number),
                str(len(curve(t))),
                _duration(t),
                str(t.user_attrs.get("host", "?")),
                str(t.user_attrs.get("worker", "?")),
                str(t.user_attrs.get("slurm_job_id", "-")),
                _params(t.params),
            ]
            for t in running
        ]
        _table(["trial", "epochs", "time", "host", "worker", "slurm job", "params"], rows, out)
    active = [j for j in jobs or [] if j["state"].split()[0] not in ENDED]
    if active:
        print("jobs:", file=out)
        _table(
            ["job", "executor", "state", "host"], [[j["id"], j["executor"], j["state"], j["host"]] for j in active], out
        )
    if jobs is not None and not active and not _beating(running, study):
        _no_worker_left(n["waiting"], len(running), out)
    failed = [t for t in trials if t.state == TrialState.FAIL and counts(t)]
    for t in failed:
        print(f"trial {t.number} failed: {t.user_attrs.get('fail_reason', 'no reason recorded')}", file=out)


def _beating(running: Sequence[FrozenTrial], study: optuna.Study) -> bool:
    """Whether a running trial's worker has stamped its heartbeat lately: a worker no recorded job accounts
    for (the debug executor's, one on another host) is still at work."""
    stale_after = study.user_attrs.get(CONFIG_ATTR, {}).get("executor", {}).get("stale_after_seconds", 180.0)
    now = time.time()
    return any(now - t.user_attrs.get("heartbeat", 0.0) < stale_after for t in running)


def _no_worker_left(waiting: int, running: int, out: IO[str]) -> None:
    """Trials owed with no job left to run them: a detached launch's workers all ended (killed, cancelled, out of
    time) without SLURM requeueing them. Nothing runs them until someone launches again."""
    if waiting + running:
        print(f"no worker is left to run the {waiting + running} trial(s) owed ({waiting} waiting, {running} running "
              "with no live worker): launch again with the study's file to run them, the interrupted ones resumed "
              "from their checkpoints", file=out)


def value_text(t: FrozenTrial, maximize: bool) -> str:
    """`trial_value` for a table: in parentheses where Optuna holds no value (pruned, running, failed)."""
    value = trial_value(t, maximize)
    if value is None:
        return "-"
    return f"{value:.4f}" if t.state == TrialState.COMPLETE else f"({value:.4f})"


def folds_text(t: FrozenTrial) -> str:
    """A cross-validated trial's per-fold values (each fold's best epoch) and their std; "" for any other."""
    values = t.user_attrs.get("cv_values")
    if not values:
        return ""
    folds = t.user_attrs.get("cv_folds") or []
    shown = " ".join(f"{'+'.join(map(str, folds[i])) if i < len(folds) else i + 1}:{v:.3f}"
                     for i, v in enumerate(values))
    std = t.user_attrs.get("cv_std")
    return f" [folds {shown}" + (f"; std {std:.3f}]" if std is not None else "]")


def _static_text(t: FrozenTrial) -> str:
    return "".join(f", {k}={v:.4g}" for k, v in static(t).items())


def _params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _duration(t: FrozenTrial) -> str:
    if t.datetime_start is None:
        return "-"
    end = t.datetime_complete or dt.datetime.now()
    return clock((end - t.datetime_start).total_seconds())


def clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _table(header: list[str], rows: list[list[str]], out: IO[str]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip(), file=out)
