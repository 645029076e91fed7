"""The executor registry: every executor answers for itself, and adding one is one entry (and this test)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from unittest import mock

import optuna
import pytest
import submitit
from conftest import TINY

from sweep.config import sections
from sweep.config.resolve import resolve
from sweep.run import executors, jobs, preflight
from sweep.run.executors import EXECUTORS, Executor, of_job
from sweep.schema import ConfigError, Field

PARTS = ("check", "threads", "make", "owns", "has_result", "held", "stop", "states", "cancel")


@pytest.mark.parametrize("name", EXECUTORS.names())
def test_every_executor_has_every_part(name: str) -> None:
    spec = EXECUTORS[name]
    assert isinstance(spec, Executor) and isinstance(spec.params, dict) and spec.doc and spec.cluster
    assert all(callable(getattr(spec, part)) for part in PARTS)
    assert all(isinstance(getattr(spec, flag), bool) for flag in ("runs_here", "in_process", "processes_here"))
    job_class = getattr(submitit, spec.job_name)
    assert issubclass(job_class, submitit.Job)
    assert of_job(mock.Mock(spec=job_class)) is spec  # a job is read by the executor that made it


@pytest.mark.parametrize("name", [n for n, s in EXECUTORS.items() if type(s).check is Executor.check])  # no profile
def test_an_executor_without_a_profile_makes_its_submitit_executor(name: str, tmp_path: Path) -> None:
    config = resolve(copy.deepcopy(TINY), "test", [("executor.name", name)])
    made = executors.make_executor(config, tmp_path / "logs", 2, None)
    assert isinstance(made, submitit.AutoExecutor) and made.cluster == EXECUTORS[name].cluster
    assert (tmp_path / "logs").stat().st_mode & 0o777 == 0o700


class _RemoteJob:
    """What the fake executor's jobs are: no submitit job, so no registered executor claims them."""


class _Remote(Executor):
    params = {"queue": Field(str, "batch")}
    doc = "a fake executor, to show that adding one is one entry"
    cluster = "remote"
    runs_here = False

    def owns(self, job: object) -> bool:
        return isinstance(job, _RemoteJob)


@pytest.fixture
def remote(monkeypatch: pytest.MonkeyPatch) -> _Remote:
    spec = _Remote()
    monkeypatch.setitem(EXECUTORS._entries, "remote", spec)
    monkeypatch.setattr(sections, "SCHEMA", {})  # rebuilt from the registries on its next use
    return spec


def test_an_added_executor_is_accepted_everywhere_it_is_named(remote: _Remote, tmp_path: Path) -> None:
    config = resolve(copy.deepcopy(TINY), "test", [("executor.name", "remote"), ("executor.queue", "gpu")])
    assert config["executor"]["name"] == "remote" and config["executor"]["queue"] == "gpu"
    with pytest.raises(ConfigError, match="queue"):  # its key belongs to it alone
        resolve(copy.deepcopy(TINY), "test", [("executor.queue", "gpu")])
    assert not preflight.runs_here(config) and preflight.check_executor(config) is None
    assert of_job(_RemoteJob()) is remote

    from sweep.cli import parser

    assert parser().parse_args(["launch", "x.yaml", "--executor", "remote"]).executor == "remote"
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    jobs.record(study, [type("J", (), {"job_id": 7})()], "remote")
    assert [e["state"] for e in jobs.states(study)] == ["ENDED"] and jobs.cancel(study) == []


def test_no_module_but_the_registry_names_an_executor() -> None:
    """Every other module asks the registry: a name compared anywhere else is an executor added in two places."""
    root = Path(__file__).resolve().parents[1] / "sweep"
    names = "|".join(map(re.escape, EXECUTORS.names()))
    named = re.compile(rf'"(?:{names})"')  # a Python string, not report.py's `'local'` for MathJax
    found = [
        f"{path.relative_to(root)}:{number}"
        for path in root.rglob("*.py")
        if path.name != "executors.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if named.search(line)
    ]
    assert not found, found


@pytest.mark.parametrize(("per_gpu", "gpus", "workers", "tasks", "entries", "cpus"),
                         [(1, 2, 5, None, 5, 8), (2, 0, 5, 2, 3, 4), (2, 2, 8, 2, 4, 4), (4, 1, 4, 4, 1, 2)])
def test_trials_per_gpu_packs_workers_into_array_tasks(
    per_gpu: int, gpus: int, workers: int, tasks: int | None, entries: int, cpus: int
) -> None:
    """K workers per array task, whatever its GPUs (they share them), its CPUs divided; the array holds
    ⌈workers / K⌉ tasks, the last one full too."""
    from sweep.run.place import default_threads
    from sweep.run.profile import PROFILE, array_size, submitit_parameters
    from sweep.schema import check_fields

    config = resolve(copy.deepcopy(TINY), "test", [("executor.name", "slurm"), ("executor.trials_per_gpu", per_gpu)])
    profile = check_fields(PROFILE, {"gpus_per_node": gpus, "cpus_per_task": 8}, "p.yaml", "profile")
    per_job = EXECUTORS["slurm"].per_job(config, profile)
    params = submitit_parameters(profile, workers, "s", per_job)
    assert params.get("tasks_per_node") == tasks and params["cpus_per_task"] == cpus
    assert array_size(workers, per_job) == entries == params["slurm_array_parallelism"]
    assert default_threads(config, profile, per_job) == cpus and default_threads(config, profile) == 8  # final's
