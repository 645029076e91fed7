"""Epoch time of sweep's common trainer against a bare hand-written PyTorch loop: same model, data and batches.

    python benchmarks/trainer_overhead.py [--quick | --smoke | --real] [--epochs N] [--rounds R] [--threads T]
                                          [--device cpu|cuda] [--amp]

sweep: `sweep.run.trial.train_trial(config, out_dir, trial)` with a trial of an in-memory study (NopPruner), so every
epoch also writes metrics.json, TensorBoard scalars and an atomic checkpoint, and reports to the trial.
baseline: `bare_train` below, the loop a user would write by hand for the same config: the same clips
(`load_split`), their log-mel made once with torchaudio directly (as sweep's cache holds it), the same `Augment` calls
(SpecAugment + mixup at strength 0.5), the same audio_cnn, AdamW + cosine schedule stepped per batch, and a
validation pass (loss, accuracy) each epoch; seeded exactly as sweep seeds, so both sides compute the same
numbers (tests/test_benchmarks.py checks the first epoch's training loss). It has no bookkeeping.

Epoch time is the interval between the ends of two consecutive epochs (for sweep, between two `trial.report`
calls: it holds the epoch's bookkeeping and the previous epoch's `should_prune`). Epoch 1 (warm-up, setup)
is skipped; the figure of each side is the median of the later epochs of all its runs. The sides alternate
(sweep, bare, bare, sweep, ...) in one process with the torch thread count set explicitly. Where sweep's
extra time goes is timed in the same runs by thin wrappers (a few microseconds per epoch) around
`sweep.train.loop._atomic` (checkpoint.pt, metrics.json) and the TensorBoard writer's `add_scalar`/`flush`.
The process's CPU time per epoch is printed beside the wall time: on a shared machine it is less swayed by
other processes (but it does not see time spent waiting for the disk).

`--amp` trains both sides in mixed precision (float16 autocast and a gradient scaler, sweep's `train.amp`),
which sweep's trainer does on CUDA only: it needs `--device cuda`. On CUDA the BENCH line is named
`trainer_overhead_cuda` (`trainer_overhead_cuda_amp` with `--amp`), so a GPU figure never stands in a CPU row.

`--real` trains at ESC-50's size instead (REAL below: 1600 clips of 5 s at 22.05 kHz, 128 mels, audio_cnn.yaml's
model), for `--device cuda`: on an H200 the default size's epoch takes 84 ms, so a fixed few ms of bookkeeping
reads as a large ratio that says more about the model's size than about the trainer.

The data go through sweep's disk cache (if it has one) in a private temporary folder. The last line is
`BENCH trainer_overhead sweep=<s/epoch> baseline=<s/epoch> ratio=<r> goal=<=1.05 pass|fail`.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import torch
import torch.nn.functional as F
import torchaudio
from _bench import bench_line

import sweep.train.loop
from sweep.config.resolve import resolve
from sweep.data import crop, load_split
from sweep.data.augment import Augment
from sweep.models import build_model
from sweep.run.trial import train_trial

GOAL = 1.05

# 10 classes × 40 clips × 1 s at 16 kHz: 240 training clips (folds 1-3), 80 validation clips (fold 4).
CONFIG: dict[str, Any] = {
    "study": {"name": "bench-trainer"},
    "data": {"dataset": "synthetic", "n_classes": 10, "clips_per_class": 40, "sample_rate": 16000,
             "clip_seconds": 1.0},
    "features": {"name": "logmel", "n_mels": 64, "n_fft": 512, "hop_length": 256},
    "augment": {"strength": 0.5, "specaugment": True, "mixup": True, "waveform": False},
    "model": {"name": "audio_cnn", "width": 16, "depth": 3},
    "train": {"epochs": 5, "batch_size": 32, "eval_batch_size": 128, "lr": 1e-3, "weight_decay": 0.01,
              "optimizer": "adamw", "scheduler": "cosine", "freeze_epochs": 0, "label_smoothing": 0.0,
              "grad_clip": None, "amp": False, "device": "cpu", "seed": 0},
}
# Seconds, for tests: 4 classes × 10 clips × 0.5 s at 8 kHz and a 4-channel CNN.
SMOKE: dict[str, Any] = {
    "data": {"n_classes": 4, "clips_per_class": 10, "sample_rate": 8000, "clip_seconds": 0.5},
    "features": {"n_mels": 32, "n_fft": 256, "hop_length": 128},
    "model": {"width": 4, "depth": 1},
    "train": {"batch_size": 8},
}

# ESC-50's size (synthetic: 10 classes × 160 clips, 960 training and 320 validation clips of 5 s at 22.05 kHz) and
# audio_cnn.yaml's model on 128 mels: an epoch of seconds on a GPU, as a real trial's.
REAL: dict[str, Any] = {
    "data": {"n_classes": 10, "clips_per_class": 160, "sample_rate": 22050, "clip_seconds": 5.0},
    "features": {"n_mels": 128, "n_fft": 1024, "hop_length": 512},
    "model": {"width": 32, "depth": 4},
}


def make_config(
    epochs: int, smoke: bool = False, device: str = "cpu", seed: int = 0, amp: bool = False, real: bool = False
) -> dict[str, Any]:
    """The resolved config both sides train (sweep's defaults fill the rest)."""
    raw = copy.deepcopy(CONFIG)
    for section, values in (SMOKE if smoke else REAL if real else {}).items():
        raw[section].update(values)
    raw["train"].update(epochs=epochs, device=device, seed=seed, amp=amp)
    return resolve(raw, "benchmarks/trainer_overhead.py")


# ---- the baseline: a bare loop --------------------------------------------------------------------------


def bare_train(config: Mapping[str, Any], on_epoch: Callable[[int], None] | None = None) -> list[dict[str, float]]:
    """A plain PyTorch training loop for `config`: per epoch, train, then validate. Returns one row per epoch.

    The same work as sweep's trainer (same seeds and the same input tensors, so the same numbers) without its
    bookkeeping: no metrics.json, no TensorBoard, no checkpoint, no trial. Like sweep, it makes the log-mel of
    every clip once, before the first epoch (the clips are one window long here, so a batch's input is its rows
    of that tensor): the loop then times what sweep's trainer adds, not a data path that benchmarks/throughput.py
    compares. `on_epoch(epoch)` is called at each epoch's end.
    """
    t, d, f = config["train"], config["data"], config["features"]
    if config["augment"]["waveform"]:
        raise ValueError("bare_train makes the log-mel once: it cannot augment the waveform of each batch")
    device = torch.device(t["device"] if t["device"] != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    amp = t["amp"] and device.type == "cuda"  # as sweep's trainer decides
    torch.manual_seed(t["seed"])
    train_set, val_set = load_split(config, "train"), load_split(config, "val")
    samples = round(d["clip_seconds"] * d["sample_rate"])
    if max(train_set.lengths.max(), val_set.lengths.max()) > samples:
        raise ValueError(f"bare_train needs clips one window long ({samples} samples): it makes no random crops")
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=d["sample_rate"], n_fft=f["n_fft"], hop_length=f["hop_length"], n_mels=f["n_mels"],
        f_min=f["f_min"] or 0.0, f_max=f["f_max"],
    ).to(device)
    with torch.no_grad():  # [clips, 1, n_mels, frames], contiguous: the layout sweep's cache gives the model
        train_x, val_x = (torch.log(mel(crop(clips, torch.arange(len(clips)), samples, None).to(device)) + 1e-6)
                          .unsqueeze(1).contiguous() for clips in (train_set, val_set))
    n_classes = len(train_set.classes)
    model = build_model(config, n_classes, tuple(train_x.shape[1:])).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])
    bs, n_train = t["batch_size"], len(train_set)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t["epochs"] * math.ceil(n_train / bs))
    augment = Augment(config)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    rows: list[dict[str, float]] = []
    for epoch in range(1, t["epochs"] + 1):
        model.train()
        torch.manual_seed(t["seed"] * 100_003 + epoch)  # dropout, as sweep seeds it
        augment.reseed(t["seed"] * 100_003 + epoch)
        order = torch.randperm(n_train, generator=torch.Generator().manual_seed(t["seed"] + epoch))
        total = torch.zeros((), device=device)
        for i in range(0, n_train, bs):
            idx = order[i : i + bs]
            y = train_set.labels[idx].to(device)
            with torch.no_grad():
                x = augment.spec(train_x[idx])
            x, target = augment.mix(x, y, n_classes, epoch)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                loss = F.cross_entropy(model(x), target, label_smoothing=t["label_smoothing"])
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            total += loss.detach() * len(idx)
        model.eval()
        val_loss, correct = torch.zeros((), device=device), torch.zeros((), device=device)
        with torch.no_grad():
            for i in range(0, len(val_set), t["eval_batch_size"]):
                idx = torch.arange(i, min(i + t["eval_batch_size"], len(val_set)))
                with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                    logits = model(val_x[idx]).float()
                y = val_set.labels[idx].to(device)
                val_loss += F.cross_entropy(logits, y, reduction="sum")
                correct += (logits.argmax(1) == y).sum()
        rows.append({"epoch": epoch, "train_loss": total.item() / n_train, "val_loss": val_loss.item() / len(val_set),
                     "val_acc": correct.item() / len(val_set)})
        if on_epoch is not None:
            on_epoch(epoch)
    return rows


# ---- sweep's side: the trainer, timed at each trial.report -------------------------------------------------


class TimedTrial:
    """An Optuna trial that notes when each epoch ends (its report) and how long report + should_prune take."""

    def __init__(self, trial: optuna.Trial, spent: dict[str, float]) -> None:
        self._trial, self._spent, self.stamps = trial, spent, []

    def report(self, value: float, step: int) -> None:
        self.stamps.append(stamp())
        self._trial.report(value, step)
        self._spent["report + should_prune"] += time.perf_counter() - self.stamps[-1][0]

    def should_prune(self) -> bool:
        started = time.perf_counter()
        try:
            return self._trial.should_prune()
        finally:
            self._spent["report + should_prune"] += time.perf_counter() - started

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trial, name)


@contextmanager
def bookkeeping_timers(spent: dict[str, float]) -> Iterator[None]:
    """Time sweep's per-epoch writes from outside: `sweep.train.loop._atomic` by file, and the TensorBoard writer."""
    from torch.utils.tensorboard import SummaryWriter

    atomic = sweep.train.loop._atomic
    originals = {name: getattr(SummaryWriter, name) for name in ("add_scalar", "flush")}

    def timed_atomic(path: Path, write: Callable[[Path], Any]) -> None:
        started = time.perf_counter()
        try:
            atomic(path, write)
        finally:
            spent[path.name] += time.perf_counter() - started

    def timed(method: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                spent["TensorBoard"] += time.perf_counter() - started

        return wrapper

    sweep.train.loop._atomic = timed_atomic
    for name, method in originals.items():
        setattr(SummaryWriter, name, timed(method))
    try:
        yield
    finally:
        sweep.train.loop._atomic = atomic
        for name, method in originals.items():
            setattr(SummaryWriter, name, method)


def stamp() -> tuple[float, float]:
    """(wall clock, this process's CPU time) now."""
    return time.perf_counter(), time.process_time()


def intervals(stamps: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of each epoch after the first, from the stamps taken at the end of every epoch."""
    return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(stamps, stamps[1:])]


def sweep_epochs(config: Mapping[str, Any], spent: dict[str, float]) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of each epoch after the first, with sweep's trainer and its bookkeeping."""
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    trial = TimedTrial(study.ask(), spent)
    with tempfile.TemporaryDirectory() as tmp, bookkeeping_timers(spent):
        result = train_trial(config, Path(tmp) / "trial", trial)  # type: ignore[arg-type]
    study.tell(trial._trial, result.best_value)
    return intervals(trial.stamps)


def bare_epochs(config: Mapping[str, Any]) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of each epoch after the first, with the bare loop."""
    stamps: list[tuple[float, float]] = []
    bare_train(config, lambda epoch: stamps.append(stamp()))
    return intervals(stamps)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="fewer rounds and epochs (about a minute on 2 cores)")
    size.add_argument("--smoke", action="store_true", help="tiny data and model, 1 round: checks the output only")
    size.add_argument("--real", action="store_true", help="ESC-50's size and audio_cnn.yaml's model (for a GPU)")
    p.add_argument("--epochs", type=int, help="epochs per run (default 4; --quick 3; --smoke 3)")
    p.add_argument("--rounds", type=int, help="rounds of (sweep, bare) runs, order alternating (default 6; quick 3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a worker's share of 2 cores)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--amp", action="store_true", help="mixed precision on both sides (needs --device cuda)")
    args = p.parse_args(argv)
    if args.amp and args.device != "cuda":
        p.error("--amp needs --device cuda: sweep's trainer uses mixed precision (train.amp) on CUDA only")
    epochs = args.epochs or (3 if args.smoke or args.quick else 4)
    rounds = args.rounds or (1 if args.smoke else 3 if args.quick else 6)
    if epochs < 2:
        p.error("--epochs must be at least 2: epoch 1 is warm-up and not timed")
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = make_config(epochs, smoke=args.smoke, device=args.device, amp=args.amp, real=args.real)

    with tempfile.TemporaryDirectory() as cache:
        os.environ["SWEEP_CACHE_DIR"] = cache  # a private disk cache (a no-op where sweep has none)
        times: dict[str, list[tuple[float, float]]] = {"sweep": [], "bare": []}
        spent: dict[str, float] = defaultdict(float)
        sweep_runs = 0
        for r in range(rounds):
            for side in ("sweep", "bare") if r % 2 == 0 else ("bare", "sweep"):
                started = time.perf_counter()
                if side == "sweep":
                    got, sweep_runs = sweep_epochs(config, spent), sweep_runs + 1
                else:
                    got = bare_epochs(config)
                times[side] += got
                print(f"round {r + 1}/{rounds} {side:5s}: {epochs} epochs in {time.perf_counter() - started:6.2f} s, "
                      f"epochs 2-{epochs}: {' '.join(f'{w:.3f}' for w, _ in got)} s "
                      f"(CPU {' '.join(f'{c:.3f}' for _, c in got)} s)", flush=True)

    sweep_s, bare_s = (statistics.median(w for w, _ in times[side]) for side in ("sweep", "bare"))
    sweep_cpu, bare_cpu = (statistics.median(c for _, c in times[side]) for side in ("sweep", "bare"))
    ratio = sweep_s / bare_s
    per_epoch = {k: 1000 * v / (sweep_runs * epochs) for k, v in sorted(spent.items())}
    print(
        f"steady-state epoch ({len(times['sweep'])} epochs a side, {args.threads} torch thread(s), {args.device}"
        f"{', AMP' if args.amp else ''}): "
        f"sweep {sweep_s:.4f} s, bare loop {bare_s:.4f} s, difference {1000 * (sweep_s - bare_s):+.1f} ms",
        flush=True,
    )
    print(
        f"process CPU time per epoch (median; less swayed by other load than wall time, blind to I/O waits): "
        f"sweep {sweep_cpu:.4f} s, bare loop {bare_cpu:.4f} s, ratio {sweep_cpu / bare_cpu:.3f}",
        flush=True,
    )
    print(
        f"sweep's bookkeeping per epoch: {sum(per_epoch.values()):.1f} ms = "
        + ", ".join(f"{k} {v:.1f} ms" for k, v in per_epoch.items()),
        flush=True,
    )
    name = ("trainer_overhead" + ("_cuda" if args.device == "cuda" else "") + ("_amp" if args.amp else "")
            + ("_real" if args.real else ""))
    print(bench_line(name, sweep_s, bare_s, ratio, f"<={GOAL}", digits=4, ratio_digits=3), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
