"""SLURM profiles (cluster/*.yaml): where and how workers run on a cluster, checked before any sbatch.

A profile names SLURM resources in sbatch's own words; `sbatch:` passes any further sbatch option, and a
misspelt one is an error here rather than a job that fails in the queue.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from sweep.config.yamlfile import read_yaml
from sweep.schema import ConfigError, Field, check_fields, did_you_mean

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
    profile = check_fields(PROFILE, raw, source, "profile")
    for option in profile["sbatch"]:
        flag = str(option).replace("_", "-")
        if flag not in SBATCH_OPTIONS:
            hint = did_you_mean(flag, SBATCH_OPTIONS)
            raise ConfigError(f"{option!r} is not an sbatch option{hint}", source=source, key=f"sbatch.{option}")
        if flag in ("array", "output", "error", "signal", "wrap"):
            raise ConfigError(f"sweep sets --{flag} itself; remove it", source=source, key=f"sbatch.{option}")
    return profile


def array_size(workers: int, per_job: int) -> int:
    """Array tasks for `workers` workers, `per_job` to a task (the last one full too: workers round up)."""
    return -(-workers // per_job)


def submitit_parameters(profile: Mapping[str, Any], workers: int, name: str, per_job: int = 1) -> dict[str, Any]:
    """The profile as AutoExecutor parameters: one array job of `workers` workers, `per_job` tasks (srun) to an
    array task sharing its GPUs and dividing its CPUs, `%` = array_parallelism."""
    params: dict[str, Any] = {
        "name": name,
        "timeout_min": profile["time_min"],
        "cpus_per_task": max(1, profile["cpus_per_task"] // per_job),
        "gpus_per_node": profile["gpus_per_node"],
        "slurm_array_parallelism": profile["array_parallelism"] or array_size(workers, per_job),
        "slurm_signal_delay_s": profile["signal_delay_s"],
        "slurm_setup": list(profile["setup"]),
        "slurm_additional_parameters": {str(k).replace("_", "-"): v for k, v in profile["sbatch"].items()},
    }
    if per_job > 1:
        params.update(nodes=1, tasks_per_node=per_job)
    for key in ("partition", "account", "qos", "constraint", "exclude", "gres"):
        if profile[key]:
            params[f"slurm_{key}"] = profile[key]
    if profile["mem_gb"]:
        params["mem_gb"] = profile["mem_gb"]
    return params


TEST_TIMEOUT = 60.0  # seconds for sbatch --test-only or sinfo to answer; a controller that is up takes well under 1


def check_with_cluster(
    profile: Mapping[str, Any], source: str, workers: int, name: str, cluster: str, per_job: int = 1
) -> None:
    """Ask SLURM whether it takes the profile's array job, before any study is created or topped up.

    `sbatch --test-only` reads the very script submitit would submit (same flags, same array) and answers
    without queueing anything; a refusal (no such partition, an unknown GRES, more CPUs or memory than any
    node has) is a ConfigError naming the profile file, the key at fault where sbatch's reason names one,
    and sbatch's own words, instead of a FailedJobError traceback after the study holds its waiting trials.
    An unknown QOS is refused only where the site enforces QOS (AccountingStorageEnforce=qos), as sbatch does.
    `cluster`: submitit's name for SLURM, whose AutoExecutor writes the script.
    """
    import submitit  # ~120 ms, as in executors._submitit: only a SLURM launch checks its profile
    from submitit.slurm.slurm import _make_sbatch_string

    with tempfile.TemporaryDirectory(prefix="sweep-test-only-") as tmp:
        executor = submitit.AutoExecutor(folder=str(Path(tmp) / "%j"), cluster=cluster)
        executor.update_parameters(**submitit_parameters(profile, workers, name, per_job))
        params = dict(executor._executor.parameters, map_count=array_size(workers, per_job))
        script = Path(tmp) / "job.sh"
        script.write_text(_make_sbatch_string(command="true", folder=executor.folder, **params))
        try:
            run = subprocess.run(
                ["sbatch", "--test-only", str(script)], capture_output=True, text=True, timeout=TEST_TIMEOUT
            )
        except subprocess.TimeoutExpired:
            raise ConfigError(
                f"sbatch --test-only did not answer in {TEST_TIMEOUT:g} s: is the SLURM controller up (`sinfo`)?",
                source=source,
            ) from None
    if run.returncode == 0:
        return
    reason = sbatch_reason(run.stderr + run.stdout) or f"exit status {run.returncode}"
    nodes = sinfo()
    key = blame(reason, profile, nodes)
    raise ConfigError(f"sbatch refused: {reason}{_hint(key, nodes)}", source=source, key=key)


def sbatch_reason(output: str) -> str:
    """sbatch's own reason, without its prefixes: its `error:` lines first, else the allocation failure."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line.removeprefix("sbatch: error: ") for line in lines if line.startswith("sbatch: error: ")]
    errors = [line.removeprefix("Batch job submission failed: ") for line in errors]
    failures = [line.removeprefix("allocation failure: ") for line in lines if line.startswith("allocation failure")]
    return "; ".join(dict.fromkeys(errors or failures or lines[-1:]))


class Node(NamedTuple):
    """One line of `sinfo`: a partition ("*" marks the default) and its nodes' GRES, CPUs and memory (MB)."""

    partition: str
    gres: str
    cpus: int
    mem_mb: int


def sinfo() -> list[Node]:
    """The cluster's partitions and node sizes, or [] when sinfo does not answer in a form understood."""
    try:
        out = subprocess.run(
            ["sinfo", "--noheader", "--format=%P|%G|%c|%m"], capture_output=True, text=True, timeout=TEST_TIMEOUT
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    nodes = []
    for line in out.splitlines():
        parts = line.strip().split("|")
        with contextlib.suppress(ValueError):
            nodes.append(Node(parts[0], parts[1], int(parts[2].rstrip("+")), int(parts[3].rstrip("+"))))
    return nodes


def sacctmgr_qos() -> list[str]:
    """The QOS names the accounting database holds, or [] when sacctmgr does not answer."""
    try:
        out = subprocess.run(["sacctmgr", "--noheader", "--parsable2", "show", "qos", "format=name"],
                             capture_output=True, text=True, timeout=TEST_TIMEOUT).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


# sbatch's reason → the profile key that set what it refuses (first match wins)
BLAME = (
    ("partition", "partition"),
    ("generic resource", "gres"),
    ("gres", "gres"),
    ("account", "account"),
    ("qos", "qos"),
    ("feature", "constraint"),
    ("node name", "exclude"),
    ("time limit", "time_min"),
    ("memory", "mem_gb"),
)


def blame(reason: str, profile: Mapping[str, Any], nodes: list[Node]) -> str | None:
    """The profile key sbatch's reason points at, or None when it names none. "Requested node configuration
    is not available" names none: it is the key asking for more than the largest node of the partition holds."""
    text = reason.lower()
    for words, key in BLAME:
        if words in text:
            if key == "gres" and not profile["gres"]:
                return "gpus_per_node" if profile["gpus_per_node"] else None
            return key
    if "node configuration" in text:
        wanted = profile["partition"]
        mine = [n for n in nodes if n.partition.rstrip("*") == wanted or (wanted is None and n.partition[-1:] == "*")]
        if mine and profile["cpus_per_task"] > max(n.cpus for n in mine):
            return "cpus_per_task"
        if mine and profile["mem_gb"] and profile["mem_gb"] * 1024 > max(n.mem_mb for n in mine):
            return "mem_gb"
        most = max((gres_count(n.gres, "gpu") for n in mine), default=0)
        if mine and profile["gpus_per_node"] > most:
            return "gpus_per_node"
        if mine and profile["gres"]:
            name, _, rest = profile["gres"].partition(":")
            if gres_count(profile["gres"], name) > max(gres_count(n.gres, name, rest.rpartition(":")[0]) for n in mine):
                return "gres"
    return None


def gres_count(gres: str, name: str, kind: str = "") -> int:
    """How many of GRES `name` (of type `kind`, when given) a GRES list holds: sinfo's `gpu:a100:4(S:0-1),tmp:1`
    or a request's `gpu:1g.10gb:2`; a bare name counts one."""
    total = 0
    for item in gres.split(","):
        fields = item.split("(")[0].strip().split(":")
        if fields[0] != name or (kind and kind not in fields[1:-1]):
            continue
        total += int(fields[-1]) if len(fields) > 1 and fields[-1].isdigit() else 1
    return total


def _hint(key: str | None, nodes: list[Node]) -> str:
    """What the cluster offers for the key at fault, as sinfo lists it."""
    if not nodes:
        return ""
    if key == "partition":
        return f" (sinfo lists the partitions: {', '.join(dict.fromkeys(n.partition for n in nodes))})"
    if key in ("gres", "gpus_per_node"):
        offered = sorted({n.gres for n in nodes if n.gres not in ("(null)", "")})
        return f" (the nodes' GRES, by sinfo: {', '.join(offered) or 'none'})"
    if key == "qos":
        qos = sacctmgr_qos()
        return f" (sacctmgr lists the QOS: {', '.join(qos)})" if qos else ""
    if key in ("cpus_per_task", "mem_gb"):
        return f" (the largest node: {max(n.cpus for n in nodes)} CPUs, {max(n.mem_mb for n in nodes)} MB)"
    return ""
