"""What a launch or a final run would fail on, checked before anything is stored or submitted: the executor's
own checks (the SLURM profile tried on the cluster), the dataset's files, the pretrained weights, a CUDA device,
and the database server's free connections for the workers."""

from __future__ import annotations

import re
import shlex
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from sweep import data, models
from sweep.config.resolve import resolve
from sweep.config.typed import typed
from sweep.data import split_items
from sweep.run.executors import EXECUTORS
from sweep.schema import ConfigError
from sweep.search import space
from sweep.storage import mask
from sweep.storage.limits import server_connections
from sweep.storage.remote import DEFAULT_PORT


def check_executor(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The executor's own checks, before anything is stored or submitted; returns the SLURM profile they
    validated and tried on the cluster (`sbatch --test-only`), None for other executors."""
    cfg = typed(config)
    return EXECUTORS[cfg.executor.name].check(config)


# Connections one worker holds: its pool keeps 1 for the whole study (engine_options: pool_size 1), and opens up to
# 2 more only while its heartbeat thread writes during another call, closing them after. Counting 3 would refuse
# 32 workers on PostgreSQL's default 100, which hold ~33 (tests/test_storage.py measures the peak); and an extra
# connection the server refuses at a peak is retried ("too many clients" is transient), while a worker that cannot
# hold its one connection cannot run at all. So 1 each, and the launcher's own, which the server counts in use.
CONNECTIONS_PER_WORKER = 1


def check_connections(config: Mapping[str, Any], url: str, storage: Any) -> None:
    """Refuse, before the study is created or changed, a launch whose workers would need more connections than the
    PostgreSQL or MySQL/MariaDB server has free, with the arithmetic and the proxy command that serves any number
    of workers through a handful. Nothing to check on SQLite, the journal or a grpc:// proxy."""
    cfg = typed(config)
    found = server_connections(storage)
    if found is None:
        return
    spec = EXECUTORS[cfg.executor.name]
    workers = 1 if spec.in_process else min(cfg.executor.workers, cfg.study.n_trials)
    needed = workers * CONNECTIONS_PER_WORKER
    if needed <= found.free:
        return
    proxy = f"sweep storage-proxy {shlex.quote(mask(url))} --host 0.0.0.0 --port {DEFAULT_PORT}"
    raise ConfigError(
        f"{workers} workers need {needed} connections to the database (one each, held for the whole study), but "
        f"{found.arithmetic()}. Serve the database through the storage proxy, which holds a handful of connections "
        f"for any number of workers: on a machine the workers reach, run `{proxy}`, then launch with "
        f"--storage grpc://{socket.gethostname()}:{DEFAULT_PORT}. Or lower executor.workers to {max(found.free, 0)}, "
        f"or raise the server's max_connections",
        key="executor.workers",
    )


def preflight(config: Mapping[str, Any], profile: Mapping[str, Any] | None = None) -> None:
    """Check what a trial would fail on at once, before anything is stored or submitted: the dataset's metadata,
    the headers of every file the search decodes (the test fold's files only for presence and size), the
    pretrained weights, and a CUDA device asked for where the workers run on this machine."""
    cfg = typed(config)

    problems, warnings, everywhere = [], [], []
    try:
        index = data.DATASETS[cfg.data.dataset].index(config)
    except data.DataError as exc:
        problems.append(str(exc))
    else:
        problems += empty_splits(index, config, ("train", "val"))
        bad, warnings = data.check_files(config, *search_files(index, config))
        problems += bad
    names = {cfg.model.name}
    for param in space.parse(config["search_space"], config):
        if param.path == "model.name":
            names.update(param.distribution.choices)
    missing = []
    for name in sorted(names):
        try:
            models.check_weights(resolve(space.apply(config, {"model.name": name}), "preflight")["model"])
        except models.WeightsMissing as exc:
            missing.append(str(exc))
    if profile is not None and own_caches(profile):
        problems += missing
    else:
        everywhere += missing
    if runs_here(config):
        everywhere += cuda_missing(config)
    settle(config, problems, warnings, everywhere)


def search_files(index: Any, config: Mapping[str, Any]) -> tuple[dict[str, list], dict[str, list]]:
    """The items a search decodes (train, val) and those it must never open (test), by split."""
    cfg = typed(config)

    folds, seed = cfg.data.folds, cfg.data.split_seed
    decoded = {f"split {split}": split_items(index.items, folds, split, seed) for split in ("train", "val")}
    return decoded, {"split test": split_items(index.items, folds, "test", seed)}


# Variables that move the weight caches (models.hf_cache, models.torch_cache): a profile whose `setup` sets one
# gives its jobs other caches than this machine's, so what is missing here may be there.
CACHE_VARIABLES = re.compile(r"\b(HF_HOME|HF_HUB_CACHE|TORCH_HOME|XDG_CACHE_HOME)=")


def own_caches(profile: Mapping[str, Any]) -> bool:
    """Whether the profile's jobs set their own weight caches (else they read this machine's, exported)."""
    return any(CACHE_VARIABLES.search(line) for line in profile["setup"])


def cuda_missing(config: Mapping[str, Any]) -> list[str]:
    """A problem line if `train.device` (or a value the search picks for it) is cuda and this machine, where
    debug and local workers run, has no CUDA device."""
    cfg = typed(config)

    devices = {cfg.train.device}
    for param in space.parse(config["search_space"], config):
        if param.path == "train.device":
            devices.update(param.distribution.choices)
    if "cuda" not in devices:
        return []

    if torch.cuda.is_available():
        return []
    return [
        f"train.device is cuda, but this machine has no CUDA device (torch {torch.__version__}, "
        f"CUDA build {torch.version.cuda or 'none'}) and {config['executor']['name']} workers run here: "
        "set train.device: auto (CUDA where there is one) or cpu, or run on a GPU machine or --executor slurm"
    ]


def runs_here(config: Mapping[str, Any]) -> bool:
    """Whether the config's workers run on this machine, so what is checked here is what they will find."""
    cfg = typed(config)
    return EXECUTORS[cfg.executor.name].runs_here


def empty_splits(index: Any, config: Mapping[str, Any], splits: tuple[str, ...], run: str = "") -> list[str]:
    """A problem line for each split of the config that holds no clip of the dataset's index."""
    cfg = typed(config)

    folds, present = cfg.data.folds, sorted({it.fold for it in index.items})
    return [
        f"{run}{': ' if run else ''}data.folds.{split} {folds[split]} holds no clips (the dataset's folds: {present})"
        for split in splits
        if not split_items(index.items, folds, split, cfg.data.split_seed)
    ]


def settle(
    config: Mapping[str, Any], problems: Sequence[str], warnings: Sequence[str] = (), everywhere: Sequence[str] = ()
) -> None:
    """Stop the command on what was found before submitting; `warnings` only warn.

    `problems` (data on this machine's paths) are warnings on SLURM: the jobs may see other paths there than
    the login node (node-local scratch, a root from their own environment). `everywhere` stops on every
    executor: a CUDA device asked for where the workers run here, and weights missing from the caches the
    SLURM jobs read too (they inherit this environment unless the profile's `setup` moves the caches).
    """
    for warning in warnings:
        print(f"sweep: warning: {warning}", file=sys.stderr, flush=True)
    stop = list(everywhere)
    if not runs_here(config):
        for problem in problems:
            print(f"sweep: warning: {problem} (checked on this machine; the SLURM jobs may see otherwise)",
                  file=sys.stderr, flush=True)
    else:
        stop = [*problems, *stop]
    if stop:
        raise ConfigError("; ".join(stop))
