"""Executor registry: `executor.name` → how its workers are started, waited on and their outcomes read."""

from __future__ import annotations

from dataclasses import dataclass

from sweep.schema import Field, Registry


@dataclass(frozen=True)
class ExecutorSpec:
    params: dict[str, Field]
    doc: str = ""


EXECUTORS: Registry[ExecutorSpec] = Registry("executor")
EXECUTORS.add("debug", ExecutorSpec({}, "in the launcher's own process, one trial after another (pdb works)"))
EXECUTORS.add("local", ExecutorSpec({}, "worker processes on this machine"))
EXECUTORS.add("slurm", ExecutorSpec({}, "a SLURM array job, one task per worker"))
