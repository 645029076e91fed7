"""The static metrics of a trial's model, measured once before its first epoch on the trial's own device.

params_mb: the parameters' storage in MiB (each parameter's own dtype: 4 bytes for float32). latency_ms: the
median of `LATENCY_RUNS` single-clip forward passes in eval mode without gradients, after `LATENCY_WARMUP` passes
that are not timed (allocator, cuDNN autotuning, lazy init). macs: multiply-accumulates of one clip's forward
pass, torch's FlopCounterMode's flops / 2 (convolutions and matrix products; elementwise ops are not counted).

None of them draws random numbers or changes the model (eval mode, no grad, the train/eval mode restored), so
a trial that measures trains exactly as one that does not.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from sweep.config.typed import typed
from sweep.data.features import input_shape
from sweep.models import MODELS
from sweep.schema import ConfigError

LATENCY_WARMUP, LATENCY_RUNS = 3, 20


def params_mb(model: torch.nn.Module, clip: torch.Tensor) -> float:
    return sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20


def latency_ms(model: torch.nn.Module, clip: torch.Tensor) -> float:
    def sync() -> None:
        if clip.device.type == "cuda":
            torch.cuda.synchronize(clip.device)

    times = []
    for i in range(LATENCY_WARMUP + LATENCY_RUNS):
        sync()
        start = time.perf_counter()
        model(clip)
        sync()
        if i >= LATENCY_WARMUP:
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def macs(model: torch.nn.Module, clip: torch.Tensor) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        model(clip)
    return counter.get_total_flops() / 2


MEASURES: dict[str, Callable[[torch.nn.Module, torch.Tensor], float]] = {
    "params_mb": params_mb, "latency_ms": latency_ms, "macs": macs,
}


def measure(model: torch.nn.Module, clip: torch.Tensor, names: Sequence[str]) -> dict[str, float]:
    """{name: value} for one clip (a batch of one, on the model's device)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return {name: float(MEASURES[name](model, clip)) for name in names}
    finally:
        model.train(was_training)


def one_clip(config: Mapping[str, Any], device: torch.device) -> torch.Tensor:
    """What the model reads of one clip, as a batch of one: the features of silence (the values do not matter)."""
    return torch.zeros(1, *input_shape(config), device=device)


def check_macs(resolved: Mapping[str, Any]) -> None:
    """Refuse `macs` for a model whose forward pass has no operation the counter counts."""
    cfg = typed(resolved)
    model = MODELS[cfg.model.name].build(cfg.model, 2, input_shape(resolved))
    if measure(model, one_clip(resolved, torch.device("cpu")), ["macs"])["macs"] <= 0:
        raise ConfigError(
            f"model {cfg.model.name}: its multiply-accumulates cannot be counted (torch's FlopCounterMode sees no "
            "convolution or matrix product); use params_mb or latency_ms", key="study.metrics",
        )
