"""SLURM profiles (cluster/*.yaml): where and how workers run on a cluster, checked before any sbatch.

A profile names SLURM resources in sbatch's own words; `sbatch:` passes any further sbatch option, and a
misspelt one is an error here rather than a job that fails in the queue.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sweep.config import ConfigError, Field, read_yaml

PROFILE: dict[str, Field] = {
    "partition": Field(str, None, nullable=True),
    "account": Field(str, None, nullable=True),
    "qos": Field(str, None, nullable=True),
    "constraint": Field(str, None, nullable=True),
    "exclude": Field(str, None, nullable=True),
    "gpus_per_node": Field(int, 0, low=0),
    "gres": Field(str, None, nullable=True),  # e.g. gpu:1g.10gb:1 for an A100 MIG slice
    "cpus_per_task": Field(int, 8, low=1),
    "mem_gb": Field(float, None, low=0.1, nullable=True),
    "time_min": Field(int, 240, low=1),
    "array_parallelism": Field(int, None, low=1, nullable=True),  # null: executor.workers
    "signal_delay_s": Field(int, 120, low=10),
    "setup": Field(list, [], item=str),
    "sbatch": Field(dict, {}),
}

# sbatch's long options (SLURM 22–24) that a profile may pass through `sbatch:`.
SBATCH_OPTIONS = frozenset(
    """
account acctg-freq array batch bb bbf begin chdir cluster-constraint clusters comment constraint container
contiguous core-spec cores-per-socket cpu-freq cpus-per-gpu cpus-per-task deadline delay-boot dependency
distribution error exclude exclusive export export-file extra-node-info get-user-env gid gpu-bind gpu-freq
gpus gpus-per-node gpus-per-socket gpus-per-task gres gres-flags hint hold ignore-pbs input job-name kill-on-invalid-dep
licenses mail-type mail-user mcs-label mem mem-bind mem-per-cpu mem-per-gpu mincpus network nice no-kill no-requeue
nodefile nodelist nodes ntasks ntasks-per-core ntasks-per-gpu ntasks-per-node ntasks-per-socket open-mode output
overcommit oversubscribe partition power prefer priority profile propagate qos reboot requeue reservation
signal sockets-per-node spread-job switches thread-spec threads-per-core time time-min tmp uid use-min-nodes
wait-all-nodes wckey wrap
""".split()
)


def load_profile(path: str | Path) -> dict[str, Any]:
    """Read and validate a profile; every error names the file, the key and what is accepted."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        profiles = sorted(p.name for p in path.parent.glob("*.yaml")) if path.parent.is_dir() else []
        known = f" (profiles in {path.parent}: {', '.join(profiles)})" if profiles else ""
        raise ConfigError(f"no such SLURM profile{known}", source=source, key="executor.cluster")
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError("a profile is a mapping of SLURM settings", source=source)
    profile = {}
    for key in raw:
        if key not in PROFILE:
            raise ConfigError(f"unknown profile key; accepted: {', '.join(PROFILE)}", source=source, key=str(key))
    for key, field in PROFILE.items():
        try:
            profile[key] = field.check(raw[key]) if key in raw else field.default
        except ValueError as exc:
            raise ConfigError(str(exc), source=source, key=key) from None
    for option in profile["sbatch"]:
        flag = str(option).replace("_", "-")
        if flag not in SBATCH_OPTIONS:
            import difflib

            close = difflib.get_close_matches(flag, SBATCH_OPTIONS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{option!r} is not an sbatch option{hint}", source=source, key=f"sbatch.{option}")
        if flag in ("array", "output", "error", "signal", "wrap"):
            raise ConfigError(f"sweep sets --{flag} itself; remove it", source=source, key=f"sbatch.{option}")
    return profile


def submitit_parameters(profile: Mapping[str, Any], workers: int, name: str) -> dict[str, Any]:
    """The profile as AutoExecutor parameters: one array job, `workers` tasks, `%` = array_parallelism."""
    params: dict[str, Any] = {
        "name": name,
        "timeout_min": profile["time_min"],
        "cpus_per_task": profile["cpus_per_task"],
        "gpus_per_node": profile["gpus_per_node"],
        "slurm_array_parallelism": profile["array_parallelism"] or workers,
        "slurm_signal_delay_s": profile["signal_delay_s"],
        "slurm_setup": list(profile["setup"]),
        "slurm_additional_parameters": {str(k).replace("_", "-"): v for k, v in profile["sbatch"].items()},
    }
    for key in ("partition", "account", "qos", "constraint", "exclude", "gres"):
        if profile[key]:
            params[f"slurm_{key}"] = profile[key]
    if profile["mem_gb"]:
        params["mem_gb"] = profile["mem_gb"]
    return params
