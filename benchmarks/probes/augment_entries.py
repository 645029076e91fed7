"""Milliseconds per augmentation entry on one batch, each entry hitting every clip: where the chain's time goes.

    python benchmarks/probes/augment_entries.py [--device cpu|cuda] [--batch 32] [--samples 114688] [--repeats 10]

Each entry of `sweep.data.augment.AUGMENTATIONS` (its default params, p = 1) runs on a batch of `--batch` clips
of `--samples` samples (waveform entries) or their [batch, 1, 64, frames] log-mel (spectrogram entries) on the
device; then EAT's whole chain (throughput.py's, p = 0.5 each) through `Augment.wave`, and each label mix.
Median of `--repeats` runs after 3 untimed ones, the device synchronised around each. `reverb` is skipped unless
`--slow` (documented as slow: ~0.6 s for 16 clips on a CPU). No baseline: this is a profile, not a goal; the
goal is throughput.py's. On CUDA it ends by running EAT's chain and each mix once under
`torch.cuda.set_sync_debug_mode("error")`: any call that makes the host wait for the GPU is named there.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # throughput.py: the chain it measures

from throughput import EAT_CHAIN  # noqa: E402

from sweep.config.resolve import resolve  # noqa: E402
from sweep.data.augment import AUGMENTATIONS, MIXES, Augment  # noqa: E402

RATE = 22050


def timed(run: Callable[[], object], device: torch.device, repeats: int) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = []
    for i in range(3 + repeats):
        sync()
        start = time.perf_counter()
        run()
        sync()
        if i >= 3:
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--samples", type=int, default=114688)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--slow", action="store_true", help="time the entries marked slow (reverb) too")
    args = p.parse_args()
    device = torch.device(args.device)
    wave = torch.randn(args.batch, args.samples, device=device) * 0.1
    spec = torch.randn(args.batch, 1, 64, args.samples // 320 + 1, device=device)
    print(f"device {device}, batch [{args.batch}, {args.samples}], spectrogram {list(spec.shape)}, "
          f"median of {args.repeats} (ms)")
    for name, entry in AUGMENTATIONS.items():
        if entry.slow and not args.slow:
            print(f"  {name:14s} skipped (slow; --slow times it)")
            continue
        augment = Augment(config_of(args, [{name: {"p": 1.0}}], entry.domain))
        run = augment.wave if entry.domain == "wave" else augment.spec
        x = wave if entry.domain == "wave" else spec
        print(f"  {name:14s} {entry.domain:4s} {timed(lambda run=run, x=x: run(x), device, args.repeats):9.2f}")

    augment = Augment(config_of(args, EAT_CHAIN, "wave"))
    print(f"  {'EAT chain':14s} wave {timed(lambda: augment.wave(wave), device, args.repeats):9.2f}")
    labels = torch.randint(0, 10, (args.batch,), device=device)
    for name in MIXES:
        augment = Augment(config_of(args, [], "wave", {"mix": [name], "mix_ratio": 1.0, "epoch_mix": 0}))
        ms = timed(lambda a=augment: a.mix(wave, labels, 10, 1), device, args.repeats)
        print(f"  mix {name:10s} wave {ms:9.2f}")
    if device.type == "cuda":
        print(f"host waits for the GPU in EAT's chain and the mixes: {host_waits(args, wave, labels)}")


def host_waits(args: argparse.Namespace, wave: torch.Tensor, labels: torch.Tensor) -> str:
    """'none', or the first call that synchronised the stream (what `set_sync_debug_mode` raises)."""
    chain = Augment(config_of(args, EAT_CHAIN, "wave"))
    mixes = [Augment(config_of(args, [], "wave", {"mix": [name], "mix_ratio": 1.0, "epoch_mix": 0})) for name in MIXES]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        chain.wave(wave)
        for augment in mixes:
            augment.mix(wave, labels, 10, 1)
    except RuntimeError as exc:
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return "none"


def config_of(args: argparse.Namespace, chain: list, domain: str, more: dict | None = None) -> dict:
    """A config whose `augment` runs `chain` (and `more`) on a waveform model or on log-mel input."""
    inputs = {"model": {"name": "eat_s"}, "features": {"name": "waveform"}} if domain == "wave" else {}
    return resolve({"data": {"sample_rate": RATE, "clip_seconds": args.samples / RATE}, **inputs,
                    "augment": {"waveform": False, "mixup": False, "specaugment": False, "chain": chain,
                                **(more or {})},
                    "train": {"device": args.device}}, "bench")

if __name__ == "__main__":
    main()
