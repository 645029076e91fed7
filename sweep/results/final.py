"""`sweep final`: retrain the chosen configuration on train + validation and score it once on the test folds.

A search picks its hyperparameters by their validation score, so that score is optimistic; the test folds,
which no search ever reads, give the number to report. Every run trains with the common trainer
(`sweep.train`) through the same submitit executors as a search, one job per run: one per seed (the
spread over seeds says how much of a difference is noise), or with `--cv` one per fold of the dataset's
cross-validation protocol (test = fold k, train = every other fold). Each run leaves its own folder
(metrics.json, checkpoint.pt, config.yaml, confusion.html, confusion.png) and the command ends with
summary.json: per-run accuracy and macro-F1 and their mean ± standard deviation.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from sweep import models
from sweep.config.resolve import resolve
from sweep.config.typed import typed
from sweep.config.yamlfile import dump_yaml
from sweep.data import DATASETS, DataError, check_files, split_items
from sweep.run.executors import make_executor, of_job
from sweep.run.jobs import remove_template_folder
from sweep.run.place import default_threads, shared_cores
from sweep.run.preflight import check_executor, cuda_missing, empty_splits, own_caches, runs_here, settle
from sweep.run.waiting import JobsEnded, job_error, outcomes
from sweep.schema import ConfigError
from sweep.storage import study_dir
from sweep.train.loop import confusion, fit, save
from sweep.train.setup import Run, setup


def plan(config: Mapping[str, Any], seeds: int = 1, cv: bool = False) -> dict[str, dict[str, Any]]:
    """Run name → the config that run trains: `seed-S` for seeds train.seed + 0..seeds-1, or `cv-fold-K`.

    A cross-validation run has no validation fold (the final trainer trains on train + val alike), so its
    folds are set after `resolve`, which insists on one because every search needs it.
    """
    cfg = typed(config)
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    if cv:
        if seeds != 1:
            raise ConfigError("--cv trains one model per fold with the config's seed; leave out --seeds")
        folds = sorted({it.fold for it in _index(config).items})
        if len(folds) < 2:
            raise ConfigError(f"cross-validation needs at least two folds; the dataset has {folds}", key="data.folds")
        runs = {}
        for k in folds:
            run = copy.deepcopy(dict(config))
            run["data"]["folds"] = {"train": [f for f in folds if f != k], "val": [], "test": [k]}
            runs[f"cv-fold-{k}"] = run
        return runs
    first = cfg.train.seed
    return {f"seed-{s}": resolve(config, f"seed {s}", [("train.seed", s)]) for s in range(first, first + seeds)}


def final(
    config: Mapping[str, Any],
    name: str,
    *,
    seeds: int = 1,
    cv: bool = False,
    origin: Mapping[str, Any] | None = None,
) -> int:
    """Run every planned run through the config's executor, wait, write summary.json; returns the exit code.

    `name` is the study the runs belong to (their folder: studies/NAME/final/); `origin` says where the config
    came from (`source`: the study or file; `trial` and `params`: the best trial's), copied into every result.
    """
    cfg = typed(config)
    if cfg.train.patience is not None:  # `sweep final` sets the best trial's epochs and patience off
        raise ConfigError(
            f"a final run is scored on the test folds, so it never stops early on them: train.patience must be "
            f"null, got {cfg.train.patience} (train a fixed train.epochs: the best trial's best epoch)",
            key="train.patience",
        )
    profile = check_executor(config)
    if cfg.train.threads is None:  # once for every run: not from how many of them share a machine
        config = dict(config, train=dict(cfg.train, threads=default_threads(config, profile)))
    runs = plan(config, seeds, cv)
    _preflight(config, runs, profile)
    note = shared_cores(config, len(runs))
    if note:
        print(note, flush=True)
    home = study_dir(name) / "final"
    for run in runs:  # a run folder holds one run: nothing of an earlier one may be mistaken for it
        shutil.rmtree(home / run, ignore_errors=True)
    (home / "summary.json").unlink(missing_ok=True)
    executor_name = cfg.executor.name
    executor = make_executor(config, home / "logs", len(runs), profile)
    record = {"study": name, "source": "", "trial": None, "params": None, **(origin or {})}
    jobs = executor.map_array(
        run_one,
        [dict(run, storage=None) for run in runs.values()],  # a run needs no storage; the URL may hold a password
        [str(home / run) for run in runs],
        [dict(record, run=run) for run in runs],
    )
    epochs = cfg.train.epochs
    print(f"final runs of {name} ({record['source']}): {', '.join(runs)}, {epochs} epochs each, on {executor_name}")
    print(f"logs in {home / 'logs'}", flush=True)
    results: dict[str, dict[str, Any]] = {}
    failed: list[str] = []
    try:
        follow({run: home / run for run in runs}, jobs, epochs)
        for run, job, (kind, value) in zip(runs, jobs, outcomes(jobs)):
            if kind == "ok":
                results[run] = value
                print(f"{run}: test accuracy {results[run]['accuracy']:.4f}", flush=True)
            elif kind == "failed":
                failed.append(f"{run} (job {job.job_id}) failed: {job_error(value)}\n  log: {job.paths.stderr}")
            else:  # killed, timed out, its node lost: no error of its own
                failed.append(f"{run} (job {job.job_id}) ended without finishing; log: {job.paths.stderr}")
    except KeyboardInterrupt:
        print("\ninterrupted: cancelling the final runs", flush=True)
        for job in jobs:
            job.cancel(check=False)
        return 130
    for line in failed:
        print(line, file=sys.stderr)
    if failed:
        return 1
    summary = summarize(results)
    _write(home / "summary.json", json.dumps(summary, indent=1))
    print(table(summary))
    print(f"wrote {home / 'summary.json'}")
    return 0


def run_one(config: dict[str, Any], out_dir: str, record: dict[str, Any]) -> dict[str, Any]:
    """The submitit job of one run: train on train + val, score the test folds, write the run's folder."""
    cfg = typed(config)

    remove_template_folder(Path(out_dir).parent / "logs")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_yaml(config))
    started = time.time()
    epochs = cfg.train.epochs

    def end_epoch(run: Run, row: dict[str, float]) -> None:  # no validation folds: nothing to prune on
        save(run, {"epochs": run.history})
        print(epoch_line(record["run"], row, epochs), flush=True)  # the job's log (the debug executor's terminal)

    run = setup(config, out, ("train", "val"), "test")  # every split is read before training starts
    fit(run, lambda run: {}, end_epoch)
    matrix = confusion(run.eval_model, run.scored, run.amp, cfg.train.eval_batch_size)[1].cpu()
    classes = _classes(config)
    metrics = {
        **record,
        "seed": cfg.train.seed,
        "epochs": epochs,
        "folds": trained_folds(config),
        **scores(matrix, classes),
        "config": str(out / "config.yaml"),
        "checkpoint": str(out / "checkpoint.pt"),
        "seconds": round(time.time() - started, 3),
        "history": run.history,
    }
    _write(out / "metrics.json", json.dumps(metrics, indent=1))  # replaces the trainer's per-epoch file
    title = f"{record['study']} {record['run']}: test accuracy {metrics['accuracy']:.4f}"
    write_confusion_html(out / "confusion.html", matrix, classes, title)
    write_confusion_png(out / "confusion.png", matrix, classes, title)
    return metrics


def trained_folds(config: Mapping[str, Any]) -> dict[str, Any]:
    """The folds a final run trained and was tested on: its training set is the train and validation folds
    together. A fold in both `val` and `test` is divided between them by recording source (`data.split_seed`):
    it is listed under both, and under `divided`."""
    cfg = typed(config)
    folds = cfg.data.folds
    record: dict[str, Any] = {"train": sorted({*folds["train"], *folds["val"]}), "test": list(folds["test"])}
    divided = sorted(set(folds["val"]) & set(folds["test"]))
    if divided:
        record["divided"] = divided
    return record


def epoch_line(run: str, row: Mapping[str, float], epochs: int) -> str:
    """One line per epoch of a final run, as its log and the terminal running `sweep final` show it."""
    return f"{run}: epoch {int(row['epoch'])}/{epochs}  train_loss {row['train_loss']:.4f}  {row['seconds']:.1f} s"


def follow(folders: Mapping[str, Path], jobs: list, epochs: int, every: float = 1.0) -> None:
    """Print each run's epochs as they end (read from the metrics.json its trainer replaces after every epoch),
    one line each, until every job has ended. The debug executor's runs train later, in this process, and
    print their own lines."""
    if all(of_job(job).in_process for job in jobs):
        return
    shown = dict.fromkeys(folders, 0)
    ended = JobsEnded(jobs)
    while True:
        done = ended()
        for run, folder in folders.items():
            rows = _epochs_so_far(folder)
            for row in rows[shown[run]:]:
                print(epoch_line(run, row, epochs), flush=True)
            shown[run] = max(shown[run], len(rows))
        if done:
            return
        time.sleep(every)


def _epochs_so_far(folder: Path) -> list[dict[str, float]]:
    """The epoch rows of a run's metrics.json: the trainer's (`epochs`) while it trains, run_one's (`history`)
    once it is done; none before the first epoch."""
    try:
        record = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return []
    return record.get("history", record.get("epochs", []))


def scores(matrix: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 (as the trainer's val_f1) and per-class precision/recall/F1 of a confusion matrix.

    Rows are the true class, columns the predicted one; a class never predicted (or never present) scores 0.
    """
    m = matrix.to(torch.float64)
    tp, predicted, true = m.diag(), m.sum(0), m.sum(1)
    precision, recall = tp / predicted.clamp(min=1), tp / true.clamp(min=1)
    f1 = 2 * tp / (predicted + true).clamp(min=1)
    return {
        "test_clips": int(m.sum()),
        "accuracy": (tp.sum() / m.sum()).item(),
        "macro_f1": f1.mean().item(),
        "per_class": {
            c: {
                "precision": precision[i].item(),
                "recall": recall[i].item(),
                "f1": f1[i].item(),
                "support": int(true[i]),
            }
            for i, c in enumerate(classes)
        },
        "classes": list(classes),
        "confusion": matrix.tolist(),
    }


def summarize(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Per-run accuracy and macro-F1, and their mean ± sample standard deviation over `n` runs (one run has no
    spread: its std is null, not a 0 that would read as a measured one)."""
    keys = ("accuracy", "macro_f1", "seed", "test_clips")
    runs = {run: {**{k: r[k] for k in keys}, "test_folds": r["folds"]["test"]} for run, r in results.items()}
    summary: dict[str, Any] = {"runs": runs, "n": len(runs)}
    for key in ("accuracy", "macro_f1"):
        values = [r[key] for r in runs.values()]
        summary[key] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None}
    first = next(iter(results.values()))
    summary.update({key: first[key] for key in ("study", "source", "trial", "params", "epochs")})
    return summary


def table(summary: Mapping[str, Any]) -> str:
    rows = [(run, f"{r['accuracy']:.4f}", f"{r['macro_f1']:.4f}") for run, r in summary["runs"].items()]
    n = summary["n"]
    if n > 1:
        rows.append(
            (
                f"mean ± std (n = {n})",
                f"{summary['accuracy']['mean']:.4f} ± {summary['accuracy']['std']:.4f}",
                f"{summary['macro_f1']['mean']:.4f} ± {summary['macro_f1']['std']:.4f}",
            )
        )
    header = ("run", "test accuracy", "test macro-F1")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    if n == 1:
        lines.append("n = 1: one run, no spread (--seeds K trains K)")
    return "\n".join(lines)


def write_confusion_html(path: Path, matrix: torch.Tensor, classes: list[str], title: str) -> None:
    """A self-contained page (plotly.js inlined, as `sweep report`): it opens offline and can be archived."""
    import plotly.graph_objects as go  # ~0.2 s: imported by the run that draws, not by the launcher

    fig = go.Figure(
        go.Heatmap(
            z=matrix.tolist(),
            x=classes,
            y=classes,
            colorscale="Blues",
            text=matrix.tolist(),
            texttemplate="%{text}",
            hovertemplate="true %{y}<br>predicted %{x}<br>%{z} clips<extra></extra>",
        )
    )
    fig.update_layout(
        title=title,
        xaxis={"title": "predicted class", "side": "bottom"},
        yaxis={"title": "true class", "autorange": "reversed"},
        template="plotly_white",
        width=max(520, 60 * len(classes) + 220),
        height=max(480, 60 * len(classes) + 180),
    )
    _write(path, fig.to_html(full_html=True, include_plotlyjs=True, config={"displaylogo": False}))


def write_confusion_png(path: Path, matrix: torch.Tensor, classes: list[str], title: str) -> None:
    """The same matrix as an image, for a paper or a slide (matplotlib, which fastai already needs)."""
    import matplotlib  # ~0.5 s: imported by the run that draws, not by the launcher

    matplotlib.use("Agg")  # no display on a compute node: chosen before pyplot is imported
    import matplotlib.pyplot as plt

    n = len(classes)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * n + 2.5), max(3.5, 0.45 * n + 2.0)), dpi=120)
    image = ax.imshow(matrix.numpy(), cmap="Blues")
    fig.colorbar(image, ax=ax)
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted class", ylabel="true class")
    ax.set_title(title, fontsize=9)
    ax.set_xticklabels(classes, rotation=90, fontsize=8)
    ax.set_yticklabels(classes, fontsize=8)
    if n <= 20:  # counts stay readable up to ESC-10 / UrbanSound8K sizes; ESC-50 shows colour only
        top = int(matrix.max()) or 1
        for (i, j), count in zip(((i, j) for i in range(n) for j in range(n)), matrix.flatten().tolist()):
            ax.text(j, i, count, ha="center", va="center", fontsize=7, color="white" if count > top / 2 else "black")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def _preflight(
    config: Mapping[str, Any], runs: Mapping[str, Mapping[str, Any]], profile: Mapping[str, Any] | None = None
) -> None:
    """Every split a run reads holds clips whose headers are sound, pretrained weights are cached and a CUDA
    device asked for is here, before anything is submitted (a final run decodes its test fold: it may)."""
    cfg = typed(config)

    problems, everywhere, read = [], [], {}
    try:
        index = _index(config)
        for run, c in runs.items():
            splits = ("train", "val", "test") if c["data"]["folds"]["val"] else ("train", "test")
            problems += empty_splits(index, c, splits, run)
            for split in splits:  # runs differ in seed or folds: each file once
                items = split_items(index.items, c["data"]["folds"], split, c["data"]["split_seed"])
                read.update((it.key, it) for it in items)
    except ConfigError as exc:
        problems.append(str(exc))
    bad, warnings = check_files(config, {"the final runs' folds": list(read.values())}, {})
    problems += bad
    try:
        models.check_weights(cfg.model)
    except models.WeightsMissing as exc:
        (problems if profile is not None and own_caches(profile) else everywhere).append(str(exc))
    if runs_here(config):
        everywhere += cuda_missing(config)
    settle(config, problems, warnings, everywhere)


def _index(config: Mapping[str, Any]):

    cfg = typed(config)
    try:
        return DATASETS[cfg.data.dataset].index(config)
    except DataError as exc:
        raise ConfigError(str(exc)) from None


def _classes(config: Mapping[str, Any]) -> list[str]:
    return _index(config).classes


def _write(path: Path, text: str) -> None:
    """Replace a file atomically, so a reader never sees half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
