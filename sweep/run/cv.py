"""Cross-validated trials (`study.cv: k`): a trial trains k train/validation splits of the search folds in turn.

The search folds (data.folds.train + data.folds.val, pooled) are cut into k groups of whole folds, in order;
split i validates on group i and trains on the rest. The test folds are never part of any split (asserted
here, and `load_split` reads only a split's own folds), so a cross-validated search decodes no test clip.

Each split trains in its own folder (trial_dir/fold-i) with its own checkpoint, so a trial stopped in split i
at epoch e resumes there, and the splits it finished are re-read, not retrained. The trial's value is the
mean over splits of each split's best epoch; `cv_values`, `cv_std` and `cv_folds` record the rest.

What the pruner is told depends on the pruner (`reports_folds`): Optuna's WilcoxonPruner pairs one value per
problem instance across trials, so it gets each split's best value at step = split number after the split;
every other pruner gets each epoch's value at a global step, (split - 1) × train.epochs + epoch, so the median
(or percentile, or halving) pruner compares trials at the same split and epoch.
"""

from __future__ import annotations

import copy
import shutil
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna

from sweep.checkpoint import CHECKPOINT, CheckpointError, load_checkpoint
from sweep.config.typed import typed
from sweep.run.signals import stop_if_asked
from sweep.train.loop import Result, fit, save, validate
from sweep.train.setup import Run, setup

FOLD_DIR = "fold-{}"


class FoldsPruned(optuna.TrialPruned):
    """A cross-validated trial stopped by its pruner: its value is the mean of the splits it finished."""

    def __init__(self, message: str, value: float | None, attrs: dict[str, Any]) -> None:
        super().__init__(message)
        self.value, self.attrs = value, attrs


def search_folds(config: Mapping[str, Any]) -> list[int]:
    folds = config["data"]["folds"]
    return sorted(set(folds["train"]) | set(folds["val"]))


def groups(config: Mapping[str, Any]) -> list[list[int]]:
    """The k validation groups: the search folds in order, cut into k runs of whole folds (sizes differ ≤ 1)."""
    folds, k = search_folds(config), config["study"]["cv"]
    size, extra = divmod(len(folds), k)
    out, start = [], 0
    for i in range(k):
        end = start + size + (i < extra)
        out.append(folds[start:end])
        start = end
    return out


def fold_config(config: Mapping[str, Any], group: Sequence[int]) -> dict[str, Any]:
    """The config of one split: validated on `group`, trained on the other search folds; test folds unchanged."""
    out = copy.deepcopy(dict(config))
    test = set(config["data"]["folds"]["test"])
    assert not test & set(group), f"a validation group {list(group)} holds test folds {sorted(test)}"
    train = [f for f in search_folds(config) if f not in group]
    assert not test & set(train)
    out["data"] = {**out["data"], "folds": {"train": train, "val": list(group), "test": sorted(test)}}
    return out


def reports_folds(config: Mapping[str, Any]) -> bool:
    """Whether the pruner is told one value per split (Wilcoxon) rather than one per epoch."""
    return config["pruner"]["name"] == "wilcoxon"


def train_cv(config: Mapping[str, Any], out_dir: Path, trial: optuna.Trial | None = None) -> Result:
    """Train the k splits of a cross-validated trial in turn; a split whose checkpoint is complete trains nothing."""
    cfg = typed(config)
    metric, epochs = cfg.study.metric, cfg.train.epochs
    better = max if cfg.study.direction == "maximize" else min
    by_fold = reports_folds(config)
    cv_folds = groups(config)
    values: list[float] = []
    best_epochs: list[int] = []
    resumed, epochs_run = 0, 0

    def attrs(in_fold: int = 0) -> dict[str, Any]:  # in_fold: the epochs of the fold being trained
        return {"cv_values": list(values), "cv_folds": cv_folds,
                "cv_std": statistics.pstdev(values) if values else None, "cv_best_epochs": list(best_epochs),
                "cv_epochs": epochs_run + in_fold}  # every fold's epochs, resumed ones too

    for i, group in enumerate(cv_folds, start=1):
        run = setup(fold_config(config, group), out_dir / FOLD_DIR.format(i), ("train",), "val")
        resumed += len(run.history)
        if trial is not None and run.history:  # what a retry picked up (`worker.progressed`)
            trial.set_user_attr("sweep_resumed_at_epoch", resumed)
        if trial is not None and not by_fold:
            for row in run.history:
                trial.report(row[metric], (i - 1) * epochs + int(row["epoch"]))

        def end_epoch(run: Run, row: dict[str, float], i: int = i, before: int = epochs_run) -> None:
            best = better(run.history, key=lambda r: r[metric])
            save(run, {"metric": metric, "best_epoch": best["epoch"], "best_value": best[metric], "fold": i,
                       "folds": run.config["data"]["folds"], "epochs": run.history})
            if trial is None:
                return
            last = i == len(cv_folds) and row["epoch"] == epochs
            if by_fold:  # no report per epoch: this is what shows the trial progressed (`worker.progressed`)
                trial.set_user_attr("cv_epochs", before + len(run.history))
            else:
                trial.report(row[metric], (i - 1) * epochs + row["epoch"])
                if not last and trial.should_prune():
                    raise FoldsPruned(f"pruned in fold {i} after epoch {row['epoch']}: {metric}={row[metric]:.4f}",
                                      statistics.fmean(values) if values else None, attrs(len(run.history)))
            if not last:  # as `trial.train_trial` does: a stop whose unwinding was lost is taken here
                stop_if_asked()

        fit(run, validate, end_epoch)
        best = better(run.history, key=lambda r: r[metric])
        values.append(best[metric])
        epochs_run += len(run.history)
        best_epochs.append(int(best["epoch"]))
        if trial is not None:
            trial.set_user_attr("cv_values", list(values))
            if by_fold:
                trial.report(best[metric], i)
                if i < len(cv_folds) and trial.should_prune():
                    raise FoldsPruned(f"pruned after fold {i}: mean {metric} over {i} folds "
                                      f"{statistics.fmean(values):.4f}", statistics.fmean(values), attrs())
    mean = statistics.fmean(values)
    # the final run trains the mean of the splits' best epochs (`sweep final` reads best_epoch)
    return Result(mean, round(statistics.fmean(best_epochs)), [], None, attrs())


def take_over_folds(previous: str | None, trials_dir: Path, out_dir: Path) -> str | None:
    """A retried cross-validated trial starts from the split folders its predecessor left (each checkpoint
    loaded as weights only first); returns why not, when refused. Same rule as `checkpoint.resume_source`: only a
    folder directly inside this study's trials folder."""
    if not previous or not Path(previous).is_dir():
        return None
    folder = Path(previous).resolve()
    if folder.parent != trials_dir.resolve():
        return f"resume source {previous} is not a trial folder of this study ({trials_dir.resolve()}/N)"
    if folder == out_dir.resolve():
        return None
    for fold in sorted(folder.glob("fold-*")):
        if fold.is_symlink() or not (fold / CHECKPOINT).is_file() or (fold / CHECKPOINT).is_symlink():
            continue
        try:
            load_checkpoint(fold / CHECKPOINT, mmap=True)
        except CheckpointError as exc:
            return str(exc)
        shutil.copytree(fold, out_dir / fold.name, symlinks=True, dirs_exist_ok=True)
    return None
