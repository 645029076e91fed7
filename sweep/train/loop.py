"""The common trainer: one plain PyTorch loop for every model, readable top to bottom.

Each epoch: train, evaluate on the validation folds, write metrics.json / TensorBoard / an atomic
checkpoint, then `trial.report` the metric and stop if the pruner says so (never after the last epoch: a
fully trained trial completes). A checkpoint in `out_dir`
is resumed from, so a trial restarted after its worker died continues where it stopped.

The final run (`final=True`, `sweep final`) is the same loop on the train and validation folds together,
with nothing to validate on and nothing to prune; the test folds are evaluated once, after the last epoch.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
import torch.nn.functional as F

from sweep.data import Clips, load_split
from sweep.data.augment import Augment
from sweep.data.features import build_features
from sweep.data.inputs import Inputs
from sweep.models import build_model
from sweep.progress import Progress
from sweep.train.checkpoint import load_checkpoint


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite: the trial failed, the worker moves on."""


@dataclass
class Result:
    """A search run: the metric's best epoch. A final run: its last epoch, test accuracy and confusion matrix."""

    best_value: float
    best_epoch: int
    history: list[dict[str, float]]
    confusion: torch.Tensor | None = None  # final run: test counts, rows the true class, columns the predicted


def train(
    config: Mapping[str, Any],
    out_dir: Path,
    trial: optuna.Trial | None = None,
    *,
    final: bool = False,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> Result:
    """Train one config into `out_dir`; with `final`, on train + val, then evaluate the test folds once.

    `on_epoch` gets each epoch's row once it is saved (`sweep final` logs it: one line per epoch)."""
    if final and trial is not None:
        raise ValueError("a final run has no trial: it is neither reported nor pruned")
    t, metric = config["train"], config["study"]["metric"]
    better = max if config["study"]["direction"] == "maximize" else min
    device = torch.device(
        "cuda"
        if t["device"] == "auto" and torch.cuda.is_available()
        else "cpu"
        if t["device"] == "auto"
        else t["device"]
    )
    amp = t["amp"] and device.type == "cuda"
    if t["threads"] is not None:  # part of the config: the same seed gives the same numbers beside any other run
        torch.set_num_threads(t["threads"])
    torch.manual_seed(t["seed"])
    if final:  # the test folds are read before training, so a broken file stops the run at once
        train_set, test_set = train_and_val(config), load_split(config, "test")
    else:
        train_set, val_set = load_split(config, "train"), load_split(config, "val")
    n_classes = len(train_set.classes)
    augment = Augment(config)
    features = build_features(config).to(device)
    batches = Inputs(config, train_set, features, device, augment)
    evaluated = Inputs(config, test_set if final else val_set, features, device)
    model = build_model(config, n_classes, tuple(batches(torch.arange(1)).shape[1:])).to(device)
    steps = math.ceil(len(train_set) / t["batch_size"])
    optimizer = make_optimizer(param_groups(model, t), t)
    freeze = Freeze(model)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    history: list[dict[str, float]] = []

    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "checkpoint.pt"
    state = load_checkpoint(ckpt_path, map_location=device) if ckpt_path.exists() else None
    if state is not None:  # resume: same config, so the same shapes; epochs already run are re-reported
        history = state["history"]
        for row in history:
            if trial is not None:
                trial.report(row[metric], int(row["epoch"]))
    scheduler = make_scheduler(optimizer, t, steps, len(history) + 1)
    if state is not None:
        for name, obj in (("model", model), ("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
            if obj is not None:
                obj.load_state_dict(state[name])
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out_dir / "tb"))
    try:
        for epoch in range(len(history) + 1, t["epochs"] + 1):
            started = time.perf_counter()
            if epoch == t["freeze_epochs"] + 1 and epoch > 1:  # head-only epochs are over: a new schedule
                scheduler = make_scheduler(optimizer, t, steps, epoch)
            freeze(epoch <= t["freeze_epochs"])
            model.train()
            torch.manual_seed(t["seed"] * 100_003 + epoch)  # dropout; reseeded per epoch so resume is exact
            augment.reseed(t["seed"] * 100_003 + epoch)
            shuffle = torch.Generator().manual_seed(t["seed"] + epoch)
            order = torch.randperm(len(train_set), generator=shuffle)
            total = torch.zeros((), device=device)
            progress = Progress(f"epoch {epoch}/{t['epochs']}", len(train_set))
            for i in range(0, len(train_set), t["batch_size"]):
                idx = order[i : i + t["batch_size"]]
                x = batches(idx, shuffle)  # windows of the clips, as the model's input, on the device
                y = train_set.labels[idx].to(device, non_blocking=True)
                with torch.no_grad():
                    x = augment.spec(x)
                x, target = augment.mixup(x, y, n_classes)
                with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                    loss = F.cross_entropy(model(x), target, label_smoothing=t["label_smoothing"])
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if t["grad_clip"]:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), t["grad_clip"])
                scaler.step(optimizer)
                scaler.update()
                if scheduler is not None:
                    scheduler.step()
                total += loss.detach() * len(idx)
                progress.update(len(idx))
            progress.close()
            train_loss = total.item() / len(train_set)
            if not math.isfinite(train_loss):
                raise NonFiniteLoss(f"training loss became {train_loss} in epoch {epoch} (lr={t['lr']:g})")
            row = {"epoch": epoch, "train_loss": train_loss}
            if not final:  # a final run has no validation folds: nothing to score, report or prune on
                row |= evaluate(model, evaluated, amp, t["eval_batch_size"], t["label_smoothing"])
            row |= {"lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - started}
            history.append(row)
            for key, value in row.items():
                if key != "epoch":
                    writer.add_scalar(key, value, epoch)
            writer.flush()
            _save(out_dir, model, optimizer, scheduler, scaler, history, train_set.classes, metric, better, final)
            if on_epoch is not None:
                on_epoch(row)
            if trial is not None:
                trial.report(row[metric], epoch)
                if epoch < t["epochs"] and trial.should_prune():  # after the last epoch, nothing is left to save
                    raise optuna.TrialPruned(f"pruned after epoch {epoch}: {metric}={row[metric]:.4f}")
    finally:
        writer.close()
    if final:
        matrix = confusion(model, evaluated, amp, t["eval_batch_size"])[1].cpu()
        return Result((matrix.diag().sum() / matrix.sum()).item(), len(history), history, matrix)
    best = better(history, key=lambda r: r[metric])
    return Result(best[metric], int(best["epoch"]), history)


def train_and_val(config: Mapping[str, Any]) -> Clips:
    """The final run's training clips: the train folds, then the validation folds (none in cross-validation)."""
    train_set = load_split(config, "train")
    if not config["data"]["folds"]["val"]:
        return train_set
    val_set = load_split(config, "val")
    width = max(train_set.waves.shape[1], val_set.waves.shape[1])  # each split is padded to its longest clip
    pad = [F.pad(c.waves, (0, width - c.waves.shape[1])) for c in (train_set, val_set)]
    return Clips(
        waves=torch.cat(pad),
        lengths=torch.cat([train_set.lengths, val_set.lengths]),
        labels=torch.cat([train_set.labels, val_set.labels]),
        classes=train_set.classes,
        sample_rate=train_set.sample_rate,
        keys=train_set.keys + val_set.keys,
        skipped=train_set.skipped + val_set.skipped,
    )


def evaluate(
    model: torch.nn.Module, inputs: Inputs, amp: bool, batch_size: int, label_smoothing: float = 0.0
) -> dict[str, float]:
    """Loss, accuracy and macro-F1 over a whole split (centre windows, no augmentation)."""
    loss, matrix = confusion(model, inputs, amp, batch_size, label_smoothing)
    tp = matrix.diag().float()
    f1 = 2 * tp / (matrix.sum(0) + matrix.sum(1)).clamp(min=1)
    n = len(inputs.clips)
    return {"val_loss": loss / n, "val_acc": (tp.sum() / n).item(), "val_f1": f1.mean().item()}


@torch.no_grad()
def confusion(
    model: torch.nn.Module, inputs: Inputs, amp: bool, batch_size: int, label_smoothing: float = 0.0
) -> tuple[float, torch.Tensor]:
    """(summed loss, confusion matrix [true class, predicted class]) over a whole split: the one evaluation
    loop (centre windows, no augmentation, eval mode)."""
    model.eval()
    clips, device = inputs.clips, inputs.device
    n_classes = len(clips.classes)
    loss = torch.zeros((), device=device)
    matrix = torch.zeros(n_classes, n_classes, dtype=torch.long, device=device)
    for i in range(0, len(clips), batch_size):
        idx = torch.arange(i, min(i + batch_size, len(clips)))
        x, y = inputs(idx), clips.labels[idx].to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = model(x).float()
        loss += F.cross_entropy(logits, y, label_smoothing=label_smoothing, reduction="sum")
        matrix += _counts(logits, y, n_classes)
    return loss.item(), matrix


def _counts(logits: torch.Tensor, y: torch.Tensor, n_classes: int) -> torch.Tensor:
    return torch.bincount(y * n_classes + logits.argmax(1), minlength=n_classes**2).view(n_classes, -1)


def param_groups(model: torch.nn.Module, t: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The head at `train.lr`, the body (pretrained layers, usually) at `lr × body_lr_mult`."""
    head = {id(p) for p in model.head.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if id(p) in head], "lr": t["lr"]}]
    body = [p for p in trainable if id(p) not in head]
    if body:
        groups.append({"params": body, "lr": t["lr"] * t["body_lr_mult"]})
    return groups


class Freeze:
    """Switches the body off and on for `train.freeze_epochs` (fastai's fine_tune: BatchNorm keeps training).

    Only parameters trainable at build are switched: layers a family froze for good stay frozen.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        head = {id(p) for p in model.head.parameters()}
        norms = {
            id(p)
            for m in model.modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            for p in m.parameters(recurse=False)
        }
        self.params = [p for p in model.parameters() if p.requires_grad and id(p) not in head | norms]

    def __call__(self, frozen: bool) -> None:
        for p in self.params:
            p.requires_grad_(not frozen)


def make_optimizer(groups: list[dict[str, Any]], t: Mapping[str, Any]) -> torch.optim.Optimizer:
    wd = t["weight_decay"]
    if t["optimizer"] == "adam":
        return torch.optim.Adam(groups, weight_decay=wd)
    if t["optimizer"] == "adamw":
        return torch.optim.AdamW(groups, weight_decay=wd)
    if t["optimizer"] == "sgd":
        return torch.optim.SGD(groups, momentum=t["momentum"], weight_decay=wd, nesterov=t["momentum"] > 0)
    return torch.optim.RMSprop(groups, momentum=t["momentum"], weight_decay=wd)


def make_scheduler(optimizer: torch.optim.Optimizer, t: Mapping[str, Any], steps_per_epoch: int, epoch: int):
    """The schedule of the phase `epoch` falls in: the head-only epochs, then the rest (each one cycle)."""
    frozen = t["freeze_epochs"]
    total = (frozen if epoch <= frozen else t["epochs"] - frozen) * steps_per_epoch
    if t["scheduler"] == "cosine":
        for group in optimizer.param_groups:  # a new phase anneals from the group's own peak again
            group["lr"] = group.setdefault("initial_lr", group["lr"])
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if t["scheduler"] == "onecycle":
        peaks = [group.get("max_lr", group["lr"]) for group in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=total)
    return None


def _save(out_dir: Path, model, optimizer, scheduler, scaler, history, classes, metric, better, final: bool) -> None:
    """metrics.json and checkpoint.pt, each replaced atomically so a kill never leaves half a file.

    A final run has no validation, so no best epoch: only the per-epoch rows."""
    if final:
        summary: dict[str, Any] = {"epochs": history}
    else:
        best = better(history, key=lambda r: r[metric])
        summary = {"metric": metric, "best_epoch": best["epoch"], "best_value": best[metric], "epochs": history}
    _atomic(out_dir / "metrics.json", lambda p: p.write_text(json.dumps(summary, indent=1)))
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "history": history,
        "classes": classes,  # what the outputs mean, for `sweep predict`
    }
    _atomic(out_dir / "checkpoint.pt", lambda p: torch.save(state, p))


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)
