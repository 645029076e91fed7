"""Which GPU a worker trains on: set through CUDA_VISIBLE_DEVICES before torch first touches CUDA.

Two cases: the workers of one SLURM task (`trials_per_gpu`) share the task's GPUs, and local workers share the
launcher's. In both, worker k takes GPU k mod G alone, so that trials spread over the GPUs instead of all landing
on the first. Devices are named as CUDA_VISIBLE_DEVICES names them: indices, UUIDs or MIG slices.
"""

from __future__ import annotations

import os


def share_gpus(slot: int, slots: int) -> None:
    """Several workers of one job (`trials_per_gpu`) share its GPUs: with more than one GPU visible, slot k
    takes GPU k mod G alone, so the job's trials spread over its GPUs instead of all landing on the first. Set
    before torch first touches CUDA; MIG slices (UUIDs in the list) are picked the same way."""
    visible = _listed(os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    if slots > 1 and len(visible) > 1:
        _take(visible, slot)


def visible_gpus() -> list[str]:
    """The GPUs this process may use, named as CUDA_VISIBLE_DEVICES names them (indices, UUIDs, MIG slices):
    what the launcher hands its local workers (`pin_local_gpu`)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return _listed(listed)
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def pin_local_gpu(gpus: list[str], worker: int) -> None:
    """A local worker takes the launcher's GPU `worker` mod G alone, so `--workers 4` on a 4-GPU machine trains
    on all four. Needed, not only nicer: submitit's local executor sets CUDA_VISIBLE_DEVICES to the GPUs it was
    asked for, none unless told, which hid every GPU from local workers. Set before torch first touches CUDA."""
    _take(gpus, worker)


def _take(gpus: list[str], k: int) -> None:
    """GPU k mod G alone (none when the list is empty)."""
    os.environ["CUDA_VISIBLE_DEVICES"] = gpus[k % len(gpus)] if gpus else ""


def _listed(devices: str) -> list[str]:
    return [d.strip() for d in devices.split(",") if d.strip()]
