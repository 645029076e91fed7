"""Training-data throughput: clips/s reaching the model, sweep's cached pipeline vs the naive per-item way.

    python benchmarks/throughput.py [--quick] [--clips N] [--workers W] [--device cpu|cuda]

Data: an ESC-50-layout set written here (5 s clips at 44.1 kHz, 16-bit), trained at 16 kHz on 5 s windows
with 64-bin log-mel and SpecAugment, batch 32.
sweep: epoch 2 of a trial, the cache already built by epoch 1 (decoded audio and its log-mel frames, kept on
disk and memory-mapped): each batch is a random window of frames gathered per clip, moved to the device,
SpecAugment applied there to the whole batch — `sweep.train`'s own `Inputs` and `Augment`.
baseline: the seeds' way, a map-style Dataset whose __getitem__ reads the file with soundfile, mixes to mono,
resamples, crops and computes the log-mel spectrogram of that one clip, in a DataLoader with W workers (the
job's cores), SpecAugment on the batch afterwards.
Both go through the same number of clips; neither runs a model.

The second case is EAT's recipe, for a waveform model: 22.05 kHz files (EAT resamples its data offline),
5.2 s windows (114688 samples), and its per-example augmentations at p = 0.5 each as one `augment.chain`:
gain, polarity, shift, mask, amp_segment, cyclic_shift, noise of EAT's eight colours, speed.
sweep: a later epoch, each batch's windows cropped from the cached audio and the chain run batched on the
device (`Inputs` with `Augment`). baseline: EAT's Dataset, whose __getitem__ reads the file, crops it and
applies the augmentations to that one clip in Python (sweep's own functions on a batch of one: the same
arithmetic, clip by clip, on CPU), in a DataLoader with W workers. Prints

    BENCH throughput_clips_per_s sweep=<clips/s> baseline=<clips/s> ratio=<r> goal=>=20 pass|fail
    BENCH throughput_eat_augment_clips_per_s sweep=<clips/s> baseline=<clips/s> ratio=<r> goal=>=20 pass|fail
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import soundfile
import torch
import torchaudio
from _bench import bench_line

from sweep.config.resolve import resolve
from sweep.data import load_split
from sweep.data.augment import Augment, Draw
from sweep.data.augment.pipeline import chain
from sweep.data.features import build_features
from sweep.data.inputs import Inputs
from sweep.data.layouts import write_esc50

SAMPLE_RATE, SECONDS, BATCH = 16000, 5.0, 32
EAT_RATE, EAT_SAMPLES = 22050, 114688  # EAT's ESC-50 recipe: 22.05 kHz, 5.2 s
EAT_CHAIN = [
    "gain", "polarity", "shift", "mask", "amp_segment", "cyclic_shift",
    {"noise": {"colors": ["white", "pink", "brown", "blue", "violet", "uniform", "sine", "phase"]}}, "speed",
]


def make_config(root: Path, cache: Path, device: str) -> dict:
    """Every clip is training data here (folds 6 and 7 do not exist and are never read)."""
    data = {"dataset": "esc50", "root": str(root), "sample_rate": SAMPLE_RATE, "clip_seconds": SECONDS,
            "cache_dir": str(cache), "folds": {"train": [1, 2, 3, 4, 5], "val": [6], "test": [7]}}
    return resolve({
        "data": data,
        "features": {"n_mels": 64, "n_fft": 1024, "hop_length": 320},
        "augment": {"strength": 0.5, "mixup": False},
        "train": {"batch_size": BATCH, "device": device},
    }, "bench")


def sweep_epoch(config: dict, device: torch.device) -> tuple[int, float]:
    """A later epoch, run by the trainer's own objects: `Inputs` (windows from the cache) and `Augment`."""
    clips = load_split(config, "train")  # maps the cache built by the first epoch
    augment = Augment(config)
    batches = Inputs(config, clips, build_features(config).to(device), device, augment)  # features: cached too
    shuffle = torch.Generator().manual_seed(2)
    order = torch.randperm(len(clips), generator=shuffle)
    started = time.perf_counter()
    for i in range(0, len(clips), BATCH):
        with torch.no_grad():
            augment.spec(batches(order[i : i + BATCH], shuffle))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(clips), time.perf_counter() - started


class NaiveClips(torch.utils.data.Dataset):
    """Load, resample and featurise one clip per item, as the projects sweep grew from did."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files
        self.mel = torchaudio.transforms.MelSpectrogram(SAMPLE_RATE, n_fft=1024, hop_length=320, n_mels=64)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        audio, rate = soundfile.read(self.files[i], dtype="float32", always_2d=True)
        wave = torchaudio.functional.resample(torch.from_numpy(audio.mean(1)), rate, SAMPLE_RATE)
        n = round(SECONDS * SAMPLE_RATE)
        wave = torch.nn.functional.pad(wave, (0, max(0, n - len(wave))))
        start = int(torch.randint(0, len(wave) - n + 1, ()))
        return torch.log(self.mel(wave[start : start + n]) + 1e-6).unsqueeze(0)


def baseline_epoch(config: dict, root: Path, workers: int, device: torch.device) -> tuple[int, float]:
    files = sorted((root / "audio").glob("*.wav"))
    loader = torch.utils.data.DataLoader(
        NaiveClips(files), batch_size=BATCH, shuffle=True, num_workers=workers, pin_memory=device.type == "cuda",
        persistent_workers=False, generator=torch.Generator().manual_seed(2),
    )
    augment = Augment(config)
    started = time.perf_counter()
    for x in loader:
        with torch.no_grad():
            augment.spec(x.to(device, non_blocking=True))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(files), time.perf_counter() - started


def eat_config(root: Path, cache: Path, device: str) -> dict:
    data = {"dataset": "esc50", "root": str(root), "sample_rate": EAT_RATE, "clip_seconds": EAT_SAMPLES / EAT_RATE,
            "cache_dir": str(cache), "folds": {"train": [1, 2, 3, 4, 5], "val": [6], "test": [7]}}
    return resolve({
        "data": data,
        "model": {"name": "eat_s"},
        "augment": {"waveform": False, "mixup": False, "chain": EAT_CHAIN},
        "train": {"batch_size": BATCH, "device": device},
    }, "bench")


def eat_sweep(config: dict, device: torch.device) -> Callable[[int], float]:
    """An epoch of the waveform path as the trainer runs it: windows cropped from the cache, the chain batched
    on the device; returns its seconds."""
    clips = load_split(config, "train")
    augment = Augment(config)
    batches = Inputs(config, clips, build_features(config).to(device), device, augment)
    shuffle = torch.Generator().manual_seed(2)

    def epoch(number: int) -> float:
        augment.reseed(number)
        order = torch.randperm(len(clips), generator=shuffle)
        started = time.perf_counter()
        for i in range(0, len(clips), BATCH):
            batches(order[i : i + BATCH], shuffle)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    return epoch


class EatClips(torch.utils.data.Dataset):
    """EAT's Dataset: read one file, crop a random window, augment that one clip, each augmentation with its p."""

    def __init__(self, files: list[Path], config: dict) -> None:
        self.files, self.steps = files, [(spec, params) for _, spec, params in chain(config)]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        audio, _ = soundfile.read(self.files[i], dtype="float32", always_2d=True)
        wave = torch.from_numpy(audio.mean(1))
        wave = torch.nn.functional.pad(wave, (0, max(0, EAT_SAMPLES - len(wave))))
        draw = Draw(i)
        start = int(draw.integers(1, 0, len(wave) - EAT_SAMPLES + 1, torch.device("cpu")))
        clip = wave[start : start + EAT_SAMPLES].unsqueeze(0)
        for spec, params in self.steps:
            if draw.chance() < params["p"]:
                clip = spec.apply(clip, draw, params, EAT_RATE)
        return clip[0]


def eat_baseline(config: dict, root: Path, workers: int, device: torch.device) -> Callable[[], float]:
    """An epoch of EAT's way: a fresh DataLoader pass (its workers start again each epoch, as in EAT)."""
    files = sorted((root / "audio").glob("*.wav"))
    loader = torch.utils.data.DataLoader(
        EatClips(files, config), batch_size=BATCH, shuffle=True, num_workers=workers,
        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(2),
    )

    def epoch() -> float:
        started = time.perf_counter()
        for x in loader:
            x.to(device, non_blocking=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    return epoch


def eat_case(tmp: Path, n: int, workers: int, device: torch.device, repeats: int) -> str:
    """EAT's recipe: both sides on the same 22.05 kHz files, the cache built first (as epoch 1 would), sweep's
    process warmed by one untimed epoch; then `repeats` epochs of each, alternating, the fastest of each kept
    (on a shared machine the least disturbed)."""
    root = write_esc50(tmp / "ESC-50-eat", n_classes=10, clips_per_class=max(1, n // 10), sample_rate=EAT_RATE,
                       clip_seconds=EAT_SAMPLES / EAT_RATE)
    config = eat_config(root, tmp / "cache-eat", str(device))
    ours, theirs = eat_sweep(config, device), eat_baseline(config, root, workers, device)
    n = len(list((root / "audio").glob("*.wav")))
    ours(0)
    times = [(ours(epoch), theirs()) for epoch in range(1, repeats + 1)]
    seconds, base_seconds = min(t[0] for t in times), min(t[1] for t in times)
    print(f"EAT recipe: {n} clips of {EAT_SAMPLES} samples at {EAT_RATE} Hz, chain of {len(EAT_CHAIN)} at p = 0.5, "
          f"best of {repeats} epochs each: sweep {seconds:.3f} s (all: {', '.join(f'{t[0]:.2f}' for t in times)}); "
          f"baseline, per item in {workers} workers, {base_seconds:.3f} s (all: "
          f"{', '.join(f'{t[1]:.2f}' for t in times)})")
    return bench_line("throughput_eat_augment_clips_per_s", n / seconds, n / base_seconds, base_seconds / seconds,
                      ">=20", ratio_digits=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 clips instead of 400")
    parser.add_argument("--smoke", action="store_true", help="a few clips: checks the script runs, nothing more")
    parser.add_argument("--clips", type=int, help="clips in the dataset (default 400; --quick 100)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="baseline DataLoader workers")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    n = args.clips or (10 if args.smoke else 100 if args.quick else 400)
    device = torch.device(args.device)
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        eat_line = eat_case(Path(tmp), n, args.workers, device, 1 if args.smoke else 3)
        root = write_esc50(Path(tmp) / "ESC-50", n_classes=10, clips_per_class=max(1, n // 10), sample_rate=44100,
                           clip_seconds=SECONDS)
        config = make_config(root, Path(tmp) / "cache", args.device)
        built = time.perf_counter()  # the first epoch's extra work: decode, resample, featurise, store
        Inputs(config, load_split(config, "train"), build_features(config).to(device), device)
        built = time.perf_counter() - built
        clips, seconds = sweep_epoch(config, device)
        base_clips, base_seconds = baseline_epoch(config, root, args.workers, device)
    ours, theirs = clips / seconds, base_clips / base_seconds
    print(f"{clips} clips of {SECONDS:g} s at {SAMPLE_RATE} Hz from 44.1 kHz files, on {device}, torch threads "
          f"{torch.get_num_threads()}, baseline DataLoader workers {args.workers}")
    print(f"cache build (first epoch, once per study): {built:.2f} s ({clips / built:.1f} clips/s)")
    print(f"sweep, a later epoch: {seconds:.3f} s; baseline, every epoch: {base_seconds:.3f} s")
    ratio = ours / theirs
    print(bench_line("throughput_clips_per_s", ours, theirs, ratio, ">=20", ratio_digits=1))
    print(eat_line)


if __name__ == "__main__":
    main()
