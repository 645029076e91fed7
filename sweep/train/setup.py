"""Everything a training run needs before its first epoch, made once: data, features, model, optimizer,
scheduler, and the state of an earlier attempt resumed from `out_dir`'s checkpoint.

A search trial and a final run are set up alike; they differ only in the clips: a trial trains on the train
folds and is scored on the validation folds, a final run trains on both and is scored on the test folds.
The caller names the splits (`setup(config, out_dir, ("train",), "val")`), so nothing here knows which run
it is making.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from sweep.checkpoint import CHECKPOINT, load_checkpoint
from sweep.config.typed import Section, typed
from sweep.data import Clips, load_split
from sweep.data.augment import Augment
from sweep.data.features import build_features
from sweep.data.inputs import Inputs
from sweep.models import build_model, warmstart


@dataclass
class Run:
    """One training run, ready for its next epoch (`history` holds the epochs already run, resumed ones too)."""

    config: Mapping[str, Any]
    out_dir: Path
    device: torch.device
    amp: bool  # mixed precision: asked for, and on CUDA
    train_set: Clips
    batches: Inputs  # the training clips as the model reads them, augmented
    scored: Inputs  # the clips the run is scored on: validation (a search) or test (a final run)
    augment: Augment
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # torch's LR schedulers share no public base class; None for `scheduler: none`
    scaler: torch.amp.GradScaler
    freeze: Freeze
    steps: int  # optimizer steps per epoch (batches / train.accum_iter, a last partial group included)
    history: list[dict[str, float]]
    ema: EMA | None = None  # train.ema: the average of the weights that is scored, saved and exported

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights a run is scored with and exports: the EMA of the weights when `train.ema` is set."""
        return self.ema.model if self.ema is not None else self.model

    def stalled(self) -> bool:
        """Early stopping (`train.patience`): the study's metric has not improved (ties are no improvement) for
        `patience` epochs. Derived from `history` alone, so a resumed run stops where an uninterrupted one would."""
        cfg = typed(self.config)
        if cfg.train.patience is None or not self.history:
            return False
        pick = max if cfg.study.direction == "maximize" else min
        best = pick(self.history, key=lambda row: row[cfg.study.metric])
        return self.history[-1]["epoch"] - best["epoch"] >= cfg.train.patience


def setup(config: Mapping[str, Any], out_dir: Path, train_splits: Sequence[str], scored_split: str) -> Run:
    """The run of `config` in `out_dir`, trained on `train_splits` (joined) and scored on `scored_split`.

    Every split is read before anything trains, so a broken file stops the run at once. A checkpoint in
    `out_dir` is resumed from: same config, so the same shapes."""
    t = typed(config).train
    device = torch.device(
        "cuda"
        if t.device == "auto" and torch.cuda.is_available()
        else "cpu"
        if t.device == "auto"
        else t.device
    )
    amp = t.amp and device.type == "cuda"
    if t.threads is not None:  # part of the config: the same seed gives the same numbers beside any other run
        torch.set_num_threads(t.threads)
    torch.manual_seed(t.seed)
    train_set, scored_set = joined(config, train_splits), load_split(config, scored_split)
    augment = Augment(config)
    features = build_features(config).to(device)
    batches = Inputs(config, train_set, features, device, augment)
    scored = Inputs(config, scored_set, features, device)
    model = build_model(config, len(train_set.classes), tuple(batches(torch.arange(1)).shape[1:]))
    if typed(config).model.init_from is not None:  # a warm start; a resumed checkpoint below replaces it
        warmstart.load(model, typed(config).model.init_from, typed(config).model.name, train_set.classes)
    model = model.to(device)
    ema = EMA(model, t.ema) if t.ema is not None else None
    steps = math.ceil(math.ceil(len(train_set) / t.batch_size) / t.accum_iter)
    optimizer = make_optimizer(param_groups(model, t), t)
    freeze = Freeze(model)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)

    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / CHECKPOINT
    state = load_checkpoint(ckpt_path, map_location=device) if ckpt_path.exists() else None
    history = state["history"] if state is not None else []
    scheduler = make_scheduler(optimizer, t, steps, len(history) + 1)
    if state is not None:  # with an EMA, "model" holds the average and "trained_model" the weights trained
        model.load_state_dict(state.get("trained_model", state["model"]))
        if ema is not None:
            ema.model.load_state_dict(state["model"])
        for name, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
            if obj is not None:
                obj.load_state_dict(state[name])
    return Run(config, out_dir, device, amp, train_set, batches, scored, augment, model, optimizer, scheduler,
               scaler, freeze, steps, history, ema)


def joined(config: Mapping[str, Any], splits: Sequence[str]) -> Clips:
    """The clips of `splits`, one after the other; a split after the first with no folds (the validation
    folds in cross-validation) adds nothing."""
    first, *rest = splits
    parts = [load_split(config, first)] + [load_split(config, s) for s in rest if typed(config).data.folds[s]]
    if len(parts) == 1:
        return parts[0]
    width = max(c.waves.shape[1] for c in parts)  # each split is padded to its longest clip
    return Clips(
        waves=torch.cat([F.pad(c.waves, (0, width - c.waves.shape[1])) for c in parts]),
        lengths=torch.cat([c.lengths for c in parts]),
        labels=torch.cat([c.labels for c in parts]),
        classes=parts[0].classes,
        sample_rate=parts[0].sample_rate,
        keys=[k for c in parts for k in c.keys],
        skipped=sum(c.skipped for c in parts),
    )


class EMA:
    """An exponential moving average of a model's parameters (EAT's, decay 0.995), updated after every optimizer
    step: avg ← decay·avg + (1 − decay)·weights, starting from the initial weights. Buffers (BatchNorm's running
    statistics) are copied, not averaged. Its own copy of the model, in eval mode, is what the run scores."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for avg, weight in zip(self.model.parameters(), model.parameters()):
            avg.lerp_(weight, 1 - self.decay)
        for avg, buffer in zip(self.model.buffers(), model.buffers()):
            avg.copy_(buffer)


def mix_loss(logits: torch.Tensor, target: torch.Tensor, kind: str, label_smoothing: float) -> torch.Tensor:
    """The training loss on the (possibly mixed) soft targets [B, classes] (`augment.mix_loss`): `ce`, cross
    entropy; `bce`, EAT's: BCE with logits against the classes holding at least 10 % of the mix, summed over the
    classes and averaged over the batch."""
    if kind == "bce":
        present = (target >= 0.1).float()
        return F.binary_cross_entropy_with_logits(logits, present, reduction="sum") / len(logits)
    return F.cross_entropy(logits, target, label_smoothing=label_smoothing)


def clip_gradients(model: torch.nn.Module, t: Section) -> None:
    """`train.grad_clip_value` (each gradient element into ±value), then `train.grad_clip` (the total norm)."""
    if t.grad_clip_value:
        torch.nn.utils.clip_grad_value_(model.parameters(), t.grad_clip_value)
    if t.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)


def param_groups(model: torch.nn.Module, t: Section) -> list[dict[str, Any]]:
    """The head at `train.lr`, the body (pretrained layers, usually) at `lr × body_lr_mult`."""
    head = {id(p) for p in model.head.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if id(p) in head], "lr": t.lr}]
    body = [p for p in trainable if id(p) not in head]
    if body:
        groups.append({"params": body, "lr": t.lr * t.body_lr_mult})
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


def make_optimizer(groups: list[dict[str, Any]], t: Section) -> torch.optim.Optimizer:
    wd = t.weight_decay
    if t.optimizer == "adam":
        return torch.optim.Adam(groups, weight_decay=wd)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, weight_decay=wd)
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=t.momentum, weight_decay=wd, nesterov=t.momentum > 0)
    return torch.optim.RMSprop(groups, momentum=t.momentum, weight_decay=wd)


def make_scheduler(optimizer: torch.optim.Optimizer, t: Section, steps_per_epoch: int, epoch: int):
    """The schedule of the phase `epoch` falls in: the head-only epochs, then the rest (each one cycle)."""
    frozen = t.freeze_epochs
    total = (frozen if epoch <= frozen else t.epochs - frozen) * steps_per_epoch
    if t.scheduler == "cosine":
        for group in optimizer.param_groups:  # a new phase anneals from the group's own peak again
            group["lr"] = group.setdefault("initial_lr", group["lr"])
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if t.scheduler == "onecycle":
        peaks = [group.get("max_lr", group["lr"]) for group in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=total)
    return None
