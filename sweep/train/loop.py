"""The common trainer's epoch loop: one plain PyTorch loop for every model, readable top to bottom.

Each epoch: train, score (`score`), write TensorBoard scalars, then `end_epoch` — what the caller does with
the row: a search trial saves (`save`), reports to the pruner and may stop; a final run saves and logs. What a
run is made of (data, model, optimizer, resumed state) comes from `sweep.train.setup`; the loop itself knows
neither kind of run.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from sweep.checkpoint import CHECKPOINT
from sweep.config.typed import typed
from sweep.data.inputs import Inputs
from sweep.progress import Progress
from sweep.train.setup import Run, clip_gradients, make_scheduler, mix_loss


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite: the trial failed, the worker moves on."""


@dataclass
class Result:
    """A search trial's outcome: the metric's best epoch."""

    best_value: float
    best_epoch: int
    history: list[dict[str, float]]
    stopped: str | None = None  # "patience": early stopping ended it before train.epochs
    attrs: dict[str, Any] = field(default_factory=dict)  # more for the trial's attributes (cross-validation's)


def fit(
    run: Run,
    score: Callable[[Run], dict[str, float]],
    end_epoch: Callable[[Run, dict[str, float]], None],
) -> None:
    """Train `run` from its next epoch to `train.epochs`, or until `train.patience` stops it. Each epoch's row
    (epoch, train_loss, what `score` returns, lr, seconds) joins `run.history` and TensorBoard, then goes to
    `end_epoch`, which may raise to stop. The optimizer steps once every `train.accum_iter` batches."""
    t, loss_kind = typed(run.config).train, typed(run.config).augment.mix_loss
    model, optimizer, scaler, scheduler = run.model, run.optimizer, run.scaler, run.scheduler
    train_set, batches, augment, device = run.train_set, run.batches, run.augment, run.device
    n_classes = len(train_set.classes)
    from torch.utils.tensorboard import SummaryWriter  # ~1 s (TensorBoard): launchers import this module too

    writer = SummaryWriter(str(run.out_dir / "tb"))
    n_batches = math.ceil(len(train_set) / t.batch_size)
    epoch = len(run.history)
    try:  # train.epochs 0: no epoch limit, the run ends when train.patience says (`Run.stalled`)
        while (t.epochs == 0 or epoch < t.epochs) and not run.stalled():
            epoch += 1
            started = time.perf_counter()
            if epoch == t.freeze_epochs + 1 and epoch > 1:  # head-only epochs are over: a new schedule
                scheduler = run.scheduler = make_scheduler(optimizer, t, run.steps, epoch)
            run.freeze(epoch <= t.freeze_epochs)
            model.train()
            torch.manual_seed(t.seed * 100_003 + epoch)  # dropout; reseeded per epoch so resume is exact
            augment.reseed(t.seed * 100_003 + epoch)
            shuffle = torch.Generator().manual_seed(t.seed + epoch)
            order = torch.randperm(len(train_set), generator=shuffle)
            total = torch.zeros((), device=device)
            progress = Progress(f"epoch {epoch}/{t.epochs}" if t.epochs else f"epoch {epoch}", len(train_set))
            for b in range(n_batches):
                idx = order[b * t.batch_size : (b + 1) * t.batch_size]
                x = batches(idx, shuffle)  # windows of the clips, as the model's input, on the device
                y = train_set.labels[idx].to(device, non_blocking=True)
                with torch.no_grad():
                    x = augment.spec(x)
                x, target = augment.mix(x, y, n_classes, epoch)
                with torch.autocast(device.type, dtype=torch.float16, enabled=run.amp):
                    loss = mix_loss(model(x), target, loss_kind, t.label_smoothing)
                scaler.scale(loss / t.accum_iter).backward()  # gradients add up over train.accum_iter batches
                if (b + 1) % t.accum_iter == 0 or b + 1 == n_batches:  # a last partial group steps too
                    if t.grad_clip or t.grad_clip_value:
                        scaler.unscale_(optimizer)
                        clip_gradients(model, t)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    if scheduler is not None:
                        scheduler.step()
                    if run.ema is not None:
                        run.ema.update(model)
                total += loss.detach() * len(idx)
                progress.update(len(idx))
            progress.close()
            train_loss = total.item() / len(train_set)
            if not math.isfinite(train_loss):
                raise NonFiniteLoss(f"training loss became {train_loss} in epoch {epoch} (lr={t['lr']:g})")
            row = {"epoch": epoch, "train_loss": train_loss} | score(run)
            row |= {"lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - started}
            run.history.append(row)
            for key, value in row.items():
                if key != "epoch":
                    writer.add_scalar(key, value, epoch)
            writer.flush()
            end_epoch(run, row)
    finally:
        writer.close()


def validate(run: Run) -> dict[str, float]:
    """A search trial's `score`: loss, accuracy and macro-F1 on the scored (validation) clips."""
    t = typed(run.config).train
    return evaluate(run.eval_model, run.scored, run.amp, t.eval_batch_size, t.label_smoothing)


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


def save(run: Run, summary: dict[str, Any]) -> None:
    """The run's state as checkpoint.pt, then `summary` as metrics.json, each replaced atomically so a kill never
    leaves half a file; in that order, so metrics.json never shows an epoch the checkpoint does not hold (a kill
    between the two leaves the checkpoint one epoch ahead, and the resumed run writes metrics.json again). What
    metrics.json sums up is the caller's (a search names its best epoch)."""
    state = {  # "model": what is scored, exported and warm-started from (the EMA when on); resume needs both
        "model": run.eval_model.state_dict(),
        **({"trained_model": run.model.state_dict()} if run.ema is not None else {}),
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
        "history": run.history,
        "classes": run.train_set.classes,  # what the outputs mean, for `sweep predict`
        "model_name": typed(run.config).model.name,  # the family, for a warm start from this file alone
    }
    _atomic(run.out_dir / CHECKPOINT, lambda p: torch.save(state, p))
    _atomic(run.out_dir / "metrics.json", lambda p: p.write_text(json.dumps(summary, indent=1)))


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)
