"""The common trainer: one plain PyTorch loop for every model, readable top to bottom.

Each epoch: train, evaluate on the validation folds, write metrics.json / TensorBoard / an atomic
checkpoint, then `trial.report` the metric and stop if the pruner says so. A checkpoint in `out_dir`
is resumed from, so a trial restarted after its worker died continues where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
import torch.nn.functional as F

from sweep.data import Clips, load_split
from sweep.data.augment import Augment
from sweep.data.features import build_features
from sweep.models import build_model


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite: the trial failed, the worker moves on."""


@dataclass
class Result:
    best_value: float
    best_epoch: int
    history: list[dict[str, float]]


def train(config: Mapping[str, Any], out_dir: Path, trial: optuna.Trial | None = None) -> Result:
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
    torch.manual_seed(t["seed"])
    train_set, val_set = load_split(config, "train"), load_split(config, "val")
    n_classes = len(train_set.classes)
    features = build_features(config).to(device)
    shape = tuple(features(train_set.waves[:1].to(device)).shape[1:])
    model = build_model(config, n_classes, shape).to(device)
    steps = math.ceil(len(train_set) / t["batch_size"])
    optimizer = make_optimizer(model, t)
    scheduler = make_scheduler(optimizer, t, steps)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    augment = Augment(config)
    history: list[dict[str, float]] = []

    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "checkpoint.pt"
    if ckpt_path.exists():  # resume: same config, so the same shapes; epochs already run are re-reported
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        for name, obj in (("model", model), ("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
            if obj is not None:
                obj.load_state_dict(state[name])
        history = state["history"]
        for row in history:
            if trial is not None:
                trial.report(row[metric], int(row["epoch"]))
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out_dir / "tb"))
    try:
        for epoch in range(len(history) + 1, t["epochs"] + 1):
            started = time.perf_counter()
            model.train()
            torch.manual_seed(t["seed"] * 100_003 + epoch)  # dropout; reseeded per epoch so resume is exact
            augment.reseed(t["seed"] * 100_003 + epoch)
            order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(t["seed"] + epoch))
            total = torch.zeros((), device=device)
            for i in range(0, len(train_set), t["batch_size"]):
                idx = order[i : i + t["batch_size"]]
                x = train_set.waves[idx].to(device, non_blocking=True)
                y = train_set.labels[idx].to(device, non_blocking=True)
                with torch.no_grad():
                    x = augment.spec(features(x))
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
            train_loss = total.item() / len(train_set)
            if not math.isfinite(train_loss):
                raise NonFiniteLoss(f"training loss became {train_loss} in epoch {epoch} (lr={t['lr']:g})")
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                **evaluate(model, features, val_set, device, amp, t["eval_batch_size"], t["label_smoothing"]),
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - started,
            }
            history.append(row)
            for key, value in row.items():
                if key != "epoch":
                    writer.add_scalar(key, value, epoch)
            writer.flush()
            _save(out_dir, model, optimizer, scheduler, scaler, history, metric, better)
            if trial is not None:
                trial.report(row[metric], epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after epoch {epoch}: {metric}={row[metric]:.4f}")
    finally:
        writer.close()
        if trial is not None:  # one write per trial, whether it completes, is pruned or fails
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # handed back meanwhile
                trial.set_user_attr("epochs_run", len(history))
    best = better(history, key=lambda r: r[metric])
    return Result(best[metric], int(best["epoch"]), history)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    features: torch.nn.Module,
    clips: Clips,
    device: torch.device,
    amp: bool,
    batch_size: int,
    label_smoothing: float = 0.0,
) -> dict[str, float]:
    """Loss, accuracy and macro-F1 over a whole split (centre clips, no augmentation)."""
    model.eval()
    n_classes = len(clips.classes)
    loss = torch.zeros((), device=device)
    confusion = torch.zeros(n_classes, n_classes, dtype=torch.long, device=device)
    for i in range(0, len(clips), batch_size):
        x = features(clips.waves[i : i + batch_size].to(device))
        y = clips.labels[i : i + batch_size].to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = model(x).float()
        loss += F.cross_entropy(logits, y, label_smoothing=label_smoothing, reduction="sum")
        confusion += torch.bincount(y * n_classes + logits.argmax(1), minlength=n_classes**2).view(n_classes, -1)
    tp = confusion.diag().float()
    f1 = 2 * tp / (confusion.sum(0) + confusion.sum(1)).clamp(min=1)
    return {"val_loss": loss.item() / len(clips), "val_acc": (tp.sum() / len(clips)).item(), "val_f1": f1.mean().item()}


def make_optimizer(model: torch.nn.Module, t: Mapping[str, Any]) -> torch.optim.Optimizer:
    params, lr, wd = model.parameters(), t["lr"], t["weight_decay"]
    if t["optimizer"] == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if t["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if t["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=t["momentum"], weight_decay=wd, nesterov=t["momentum"] > 0)
    return torch.optim.RMSprop(params, lr=lr, momentum=t["momentum"], weight_decay=wd)


def make_scheduler(optimizer: torch.optim.Optimizer, t: Mapping[str, Any], steps_per_epoch: int):
    total = t["epochs"] * steps_per_epoch
    if t["scheduler"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if t["scheduler"] == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=t["lr"], total_steps=total)
    return None


def _save(out_dir: Path, model, optimizer, scheduler, scaler, history, metric: str, better) -> None:
    """metrics.json and checkpoint.pt, each replaced atomically so a kill never leaves half a file."""
    best = better(history, key=lambda r: r[metric])
    _atomic(
        out_dir / "metrics.json",
        lambda p: p.write_text(
            json.dumps(
                {"metric": metric, "best_epoch": best["epoch"], "best_value": best[metric], "epochs": history}, indent=1
            )
        ),
    )
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "history": history,
    }
    _atomic(out_dir / "checkpoint.pt", lambda p: torch.save(state, p))


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)
