"""Sweeps on the real single-node SLURM of cluster/: a job array of workers sharing one study in
PostgreSQL, MariaDB or a journal file, finishing exactly its budget."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from conftest import ROOT, cluster_of, sweep_cli
from optuna.trial import TrialState

from sweep.storage import open_storage

ON_CLUSTER = ["--executor", "slurm", "--cluster", str(ROOT / "cluster" / "local.yaml")]
URLS = {
    "postgresql": "postgresql+psycopg2://postgres@127.0.0.1:5432/test",
    "mariadb": "mysql+pymysql://root@127.0.0.1:3306/test",
    "journal": "journal:///{home}/journal/study.log",
}


def _sacct(array_id: str, timeout: float = 30) -> dict[str, str]:
    """The array's task states once every task has ended (slurmdbd records an end a moment after it)."""
    deadline = time.time() + timeout
    while True:
        out = subprocess.run(
            ["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", array_id], capture_output=True, text=True
        ).stdout
        states = dict(line.split("|") for line in out.splitlines() if "|" in line)
        active = {"PENDING", "RUNNING", "REQUEUED", "COMPLETING", "RESIZING", "SUSPENDED"}
        if states and not any(s.split()[0] in active for s in states.values()) or time.time() > deadline:
            return states
        time.sleep(0.5)


def _squeue(array_id: str) -> dict[str, str]:
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", array_id], capture_output=True, text=True).stdout
    return dict(line.split() for line in out.splitlines() if len(line.split()) == 2)


@pytest.mark.parametrize("backend", sorted(URLS))
def test_two_slurm_workers_finish_the_exact_budget(
    slurm_cluster: str, home: Path, tiny_file: Path, backend: str
) -> None:
    name = f"slurm-{backend}-{uuid.uuid4().hex[:8]}"
    url = URLS[backend].format(home=home)
    run = sweep_cli(
        "launch",
        str(tiny_file),
        *ON_CLUSTER,
        "--workers",
        "2",
        "--trials",
        "8",
        "--study",
        name,
        "--storage",
        url,
        cwd=home,
    )
    storage = open_storage(url)
    try:
        assert run.returncode == 0, run.stdout + run.stderr
        study = optuna.load_study(study_name=name, storage=storage)
        trials = study.get_trials()
        assert len(trials) == 8 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        assert sorted(t.number for t in trials) == list(range(8))
        (job,) = study.user_attrs["sweep_jobs"][:1]
        array_id = job["id"].split("_")[0]
        assert {t.user_attrs["slurm_job_id"] for t in trials} <= {f"{array_id}_0", f"{array_id}_1"}
        nodes = set(subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True).stdout.split())
        assert nodes and {t.user_attrs["slurm_node"] for t in trials} <= nodes  # SLURM's name of the node it ran on
        run_json = json.loads((Path(trials[0].user_attrs["trial_dir"]) / "run.json").read_text())
        assert run_json["slurm_node"] == trials[0].user_attrs["slurm_node"]
        states = _sacct(array_id)
        assert states == {f"{array_id}_0": "COMPLETED", f"{array_id}_1": "COMPLETED"}, states
        assert list((home / "studies" / name / "logs").glob(f"{array_id}_*/*_log.out"))
        status = sweep_cli("status", name, "--storage", url, cwd=home)
        assert status.returncode == 0, status.stderr
        assert f"study {name}: " in status.stdout and "running" not in status.stdout
    finally:
        optuna.delete_study(study_name=name, storage=storage)


def test_bad_profiles_fail_before_anything_is_submitted(home: Path, tiny_file: Path) -> None:
    profile = home / "bad.yaml"
    cases = {
        "partition: debug\ngpus: 1\n": "`gpus`: unknown profile key; accepted: partition,",
        "partition: debug\nsbatch: {mail_usr: me}\n": "`sbatch.mail_usr`: 'mail_usr' is not an sbatch option "
        "(did you mean 'mail-user'?)",
        "cpus_per_task: 0\n": "`cpus_per_task`: expected an integer >= 1, got 0",
    }
    for text, message in cases.items():
        profile.write_text(text)
        run = sweep_cli("launch", str(tiny_file), "--executor", "slurm", "--cluster", str(profile), cwd=home)
        assert run.returncode == 2 and message in run.stderr, run.stderr
    missing = sweep_cli("launch", str(tiny_file), "--executor", "slurm", "--cluster", "cluster/nope.yaml", cwd=ROOT)
    assert missing.returncode == 2 and "no such SLURM profile" in missing.stderr and "a100.yaml" in missing.stderr
    assert not (home / "studies").exists()


FAST = [
    "--set",
    "executor.heartbeat_seconds=0.5",
    "--set",
    "executor.stale_after_seconds=30",
    "--set",
    "train.epochs=30",
    "--set",
    "pruner.n_warmup_steps=100",
]


def _launch_in_background(home: Path, tiny_file: Path, *args: str) -> subprocess.Popen:
    import sys

    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sweep",
            "launch",
            str(tiny_file),
            *ON_CLUSTER,
            *FAST,
            *args,  # after FAST: a later --set wins
        ],
        cwd=home,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _running_trial(home: Path, launcher: subprocess.Popen, epoch: int = 2) -> optuna.trial.FrozenTrial:
    deadline = time.time() + 120
    while time.time() < deadline and launcher.poll() is None:
        try:
            trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{home}/studies/tiny/study.db").trials
        except Exception:  # the study is still being created
            trials = []
        for t in trials:
            if t.state == TrialState.RUNNING and len(t.intermediate_values) >= epoch and "slurm_job_id" in t.user_attrs:
                return t
        time.sleep(0.1)
    raise AssertionError(launcher.communicate()[0] if launcher.poll() is not None else "no trial reached its epoch")


def test_slurm_preemption_signal_requeues_the_job_and_resumes_the_trial(
    slurm_cluster: str, home: Path, tiny_file: Path
) -> None:
    launcher = _launch_in_background(home, tiny_file, "--workers", "1", "--trials", "2")
    victim = _running_trial(home, launcher)
    job = victim.user_attrs["slurm_job_id"]
    assert subprocess.run(["scancel", "--signal=USR2", job], capture_output=True).returncode == 0
    out, _ = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, out
    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{home}/studies/tiny/study.db").trials
    lost = next(t for t in trials if t.number == victim.number)
    assert lost.state == TrialState.FAIL and "preempted or timed out" in lost.user_attrs["sweep_void"]
    (again,) = [t for t in trials if t.user_attrs.get("sweep_retry_of") == victim.number]
    assert again.state == TrialState.COMPLETE and again.params == victim.params
    for step, value in victim.intermediate_values.items():  # resumed from the checkpoint, not retrained
        assert again.intermediate_values[step] == value
    restarts = subprocess.run(
        ["sacct", "-n", "-P", "-X", "-D", "-o", "JobID,State", "-j", job.split("_")[0]], capture_output=True, text=True
    ).stdout
    assert "REQUEUED" in restarts or "PREEMPTED" in restarts, restarts  # SLURM saw the job go back to the queue
    counted = [t for t in trials if "sweep_void" not in t.user_attrs]
    assert len(counted) == 2 and all(t.state == TrialState.COMPLETE for t in counted)


def test_cancel_stops_the_studys_jobs(slurm_cluster: str, home: Path, tiny_file: Path) -> None:
    launcher = _launch_in_background(home, tiny_file, "--workers", "2", "--trials", "20", "--set", "train.epochs=300")
    victim = _running_trial(home, launcher, epoch=1)
    cancel = sweep_cli("cancel", "tiny", cwd=home)
    assert cancel.returncode == 0, cancel.stderr
    array_id = victim.user_attrs["slurm_job_id"].split("_")[0]
    assert f"cancelled 1 job(s) of study tiny: {array_id}" in cancel.stdout
    out, _ = launcher.communicate(timeout=120)
    assert launcher.returncode == 1 and "still to run" in out
    assert "started worker" not in out and "not replaced: it was cancelled" in out, out  # a cancel is not a death
    states = _sacct(array_id, timeout=60)
    assert states and all(s.startswith("CANCELLED") for s in states.values()), states
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{home}/studies/tiny/study.db")
    assert not study.get_trials(states=(TrialState.RUNNING,))  # handed back to the queue, to resume later


def test_outcomes_tell_a_result_an_error_and_a_cancelled_job_apart_without_waiting_for_files(
    slurm_cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancelled job leaves no result file. submitit waited 15 s for each such file in turn, and only learned of
    the cancel at its next accounting refresh (up to 10 minutes into a long launch)."""
    import submitit

    from sweep.run import waiting

    # A grace this long would stall the test if a job SLURM says was cancelled were still waited for.
    monkeypatch.setattr(waiting, "RESULT_GRACE", 300.0)
    executor = submitit.AutoExecutor(folder=str(tmp_path / "%j"), cluster="slurm")
    executor.update_parameters(slurm_partition=slurm_cluster, timeout_min=5, cpus_per_task=1)
    jobs = executor.map_array(eval, ["6 * 7", "1 / 0", "__import__('time').sleep(600)"])
    array_id, deadline = jobs[0].job_id.split("_")[0], time.time() + 120

    def settled() -> bool:  # the first two have returned, the third is sleeping
        return jobs[0].done() and jobs[1].done() and _squeue(array_id).get(jobs[2].job_id) == "RUNNING"

    while time.time() < deadline and not settled():
        time.sleep(0.5)
    assert settled(), "the jobs did not start"
    assert subprocess.run(["scancel", jobs[2].job_id], capture_output=True).returncode == 0
    started = time.time()
    got = waiting.outcomes(jobs, poll=0.2)
    assert time.time() - started < waiting.RESULT_GRACE
    assert jobs[2].state.startswith("CANCELLED"), jobs[2].state
    assert not _squeue(array_id)  # ended means gone: no worker process left
    assert [o.kind for o in got] == ["ok", "failed", "lost"]
    assert got[0].value == 42 and "ZeroDivisionError" in waiting.job_error(got[1].value)


def counting_shims(folder: Path, log: Path, tools: tuple[str, ...] = ("squeue", "sacct", "scancel")) -> str:
    """A PATH whose `squeue`, `sacct` and `scancel` log their name to `log`, then run the real one."""
    folder.mkdir(parents=True, exist_ok=True)
    for tool in tools:
        real = shutil.which(tool)
        assert real, f"{tool} is not on PATH"
        (folder / tool).write_text(f'#!/bin/sh\necho {tool} >> "{log}"\nexec "{real}" "$@"\n')
        (folder / tool).chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


def test_watching_a_40_task_array_asks_slurm_per_interval_never_per_job(
    slurm_cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The launcher's watch loop (`JobsEnded`), `sweep status` (`Slurm.states`), the stop (`stop_workers`) and
    the replacement check (`Replacements`, when every task has died at once) over a 40-task array ask SLURM a
    number of times that does not grow with the tasks: a forced `done()` per job would run one sacct per task
    (submitit issue 1759's flood), submitit's `job.cancel` one scancel per task, a `held` per dead job one squeue
    each. The tasks are held (`--hold`): pending, never running, so the test takes seconds."""
    import submitit

    from sweep.run import waiting
    from sweep.run.executors import EXECUTORS
    from sweep.run.replace import Replacements

    log = tmp_path / "calls.log"
    monkeypatch.setenv("PATH", counting_shims(tmp_path / "bin", log))

    def calls() -> dict[str, int]:
        names = log.read_text().split() if log.exists() else []
        log.unlink(missing_ok=True)
        return {tool: names.count(tool) for tool in ("squeue", "sacct", "scancel")}

    executor = submitit.AutoExecutor(folder=str(tmp_path / "%j"), cluster="slurm")
    executor.update_parameters(slurm_partition=slurm_cluster, timeout_min=5, cpus_per_task=1,
                               slurm_additional_parameters={"hold": True})
    jobs = executor.map_array(abs, range(40))
    try:
        ended, polls = waiting.JobsEnded(jobs, force_every=0.0), 5  # every poll forces an accounting refresh
        assert not any(ended() for _ in range(polls))
        seen = calls()
        assert seen["squeue"] == 0 and 1 <= seen["sacct"] <= 2 * polls, seen  # per job: 40 a poll

        states = EXECUTORS["slurm"].states([{"id": str(job.job_id)} for job in jobs])  # what `sweep status` asks
        assert states == ["PENDING"] * len(jobs), states
        assert calls() == {"squeue": 1, "sacct": 1, "scancel": 0}

        waiting.stop_workers(jobs, None)  # Ctrl-C in `sweep launch`: cancel, then wait until none is held
        seen = calls()
        assert seen["scancel"] == 1 and seen["squeue"] + seen["sacct"] <= 10, seen

        study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}")  # owes nothing: none replaced
        replace = Replacements(study, "launch", lambda first: pytest.fail("nothing is owed"), len(jobs), 0, 0)
        assert not replace(jobs)
        assert replace.settled == set(range(len(jobs)))  # every task seen dead, SLURM asked once for all
        seen = calls()
        assert seen["squeue"] == 1 and seen["sacct"] <= 1 and seen["scancel"] == 0, seen
        assert not EXECUTORS["slurm"].held(jobs)
    finally:
        subprocess.run(["scancel", jobs[0].job_id.split("_")[0]], capture_output=True)


# ---- several nodes --------------------------------------------------------------------------------------


@pytest.fixture
def three_nodes(slurm_cluster: str) -> str:
    """cluster/start.sh --nodes 3: node1..node3, each its own slurmd; the single-node cluster comes back after."""
    with cluster_of(3):
        yield slurm_cluster


def test_a_study_on_three_nodes_records_the_node_of_each_trial(three_nodes: str, home: Path, tiny_file: Path) -> None:
    nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True).stdout.split("\n")
    assert sorted({line.split()[0] for line in nodes if line}) == ["node1", "node2", "node3"], nodes  # per partition
    profile = home / "whole-node.yaml"  # a task takes a node's two CPUs, so three running tasks need three nodes
    profile.write_text((ROOT / "cluster" / "local.yaml").read_text().replace("cpus_per_task: 1", "cpus_per_task: 2"))
    name, url = f"nodes-{uuid.uuid4().hex[:8]}", URLS["postgresql"]
    run = sweep_cli("launch", str(tiny_file), "--executor", "slurm", "--cluster", str(profile), "--workers", "3",
                    "--trials", "6", "--study", name, "--storage", url, cwd=home)
    assert run.returncode == 0, run.stdout + run.stderr
    trials = optuna.load_study(study_name=name, storage=open_storage(url)).get_trials()
    assert len(trials) == 6 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    ran_on = {t.user_attrs["slurm_node"] for t in trials}
    assert ran_on <= {"node1", "node2", "node3"} and len(ran_on) >= 2, ran_on  # the array spread over the nodes
    (job,) = optuna.load_study(study_name=name, storage=open_storage(url)).user_attrs["sweep_jobs"][:1]
    array_id = job["id"].split("_")[0]
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,NodeList", "-j", array_id],
                         capture_output=True, text=True).stdout
    assert len({line.split("|")[1] for line in out.splitlines() if "|" in line}) >= 2, out


def _kill_node(node: str) -> list[int]:
    """SIGKILL, at once, a node's slurmd, its job steps' slurmstepd and every process its jobs started: the node
    is gone as if it lost power, and SLURM learns it only when the node stops answering (SlurmdTimeout)."""
    run_dir = Path(os.environ.get("SWEEP_SLURM_DIR", "/var/lib/sweep-slurm")) / "run"
    pids = {int((run_dir / f"slurmd-{node}.pid").read_text())}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if f"SLURMD_NODENAME={node}".encode() in environ or (b"slurmstepd" in cmdline and _stepd_on(proc, node)):
            pids.add(int(proc.name))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return sorted(pids)


def _stepd_on(proc: Path, node: str) -> bool:
    """Whether a slurmstepd serves a job on `node` (its job id is the node's in squeue)."""
    jobs = subprocess.run(["squeue", "-h", "-w", node, "-o", "%A"], capture_output=True, text=True).stdout.split()
    title = (proc / "cmdline").read_bytes().decode(errors="replace")
    return any(f"[{job}." in title for job in jobs)


def _running_at_epoch_2(
    launcher: subprocess.Popen, name: str, url: str, node: str | None = None, timeout: float = 240
) -> optuna.trial.FrozenTrial:
    """A RUNNING trial of the study past its second epoch (on `node`, if given), while the launcher runs."""
    deadline = time.time() + timeout
    while time.time() < deadline and launcher.poll() is None:
        time.sleep(0.5)
        with contextlib.suppress(KeyError):  # the study exists once the launcher has created it
            for t in optuna.load_study(study_name=name, storage=open_storage(url)).get_trials():
                if t.state == TrialState.RUNNING and len(t.intermediate_values) >= 2 and "pid" in t.user_attrs \
                        and (node is None or t.user_attrs.get("slurm_node") == node):
                    return t
    raise AssertionError(f"no trial reached epoch 2{f' on {node}' if node else ''}")


def test_a_node_lost_mid_trial_loses_no_trial(three_nodes: str, home: Path, tiny_file: Path) -> None:
    """node2 dies with a trial half trained: SLURM requeues its task on a live node, the trial is retried from its
    last checkpoint, and the budget comes out exact."""
    profile = home / "whole-node.yaml"
    profile.write_text((ROOT / "cluster" / "local.yaml").read_text().replace("cpus_per_task: 1", "cpus_per_task: 2"))
    name, url = f"lost-{uuid.uuid4().hex[:8]}", URLS["postgresql"]
    slow = ["data.clips_per_class=80", "train.epochs=30", "pruner.n_warmup_steps=100",  # seconds a trial, no pruning
            "executor.heartbeat_seconds=2", "executor.stale_after_seconds=15"]
    launcher = subprocess.Popen(
        [sys.executable, "-m", "sweep", "launch", str(tiny_file), "--executor", "slurm", "--cluster", str(profile),
         "--workers", "3", "--trials", "3", "--study", name, "--storage", url, *[f"--set={s}" for s in slow]],
        cwd=home, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        victim = _running_at_epoch_2(launcher, name, url, node="node2")
        _kill_node("node2")
        out, _ = launcher.communicate(timeout=420)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 0, out
    trials = optuna.load_study(study_name=name, storage=open_storage(url)).get_trials()
    counted = [t for t in trials if "sweep_void" not in t.user_attrs]
    assert len(counted) == 3 and all(t.state == TrialState.COMPLETE for t in counted), out
    lost = next(t for t in trials if t.number == victim.number)
    assert lost.state == TrialState.FAIL and "sweep_void" in lost.user_attrs  # handed on, not counted
    (retry,) = [t for t in trials if t.user_attrs.get("sweep_retry_of") == victim.number]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["slurm_node"] != "node2"
    assert sorted(retry.intermediate_values) == list(range(1, 31))  # the whole curve, the resumed epochs included
    reported, resumed = max(lost.intermediate_values), retry.user_attrs["sweep_resumed_at_epoch"]
    print(f"node2 lost at epoch {reported} (+ the one in progress); the retry resumed after epoch {resumed}: "
          f"{reported - resumed} finished epoch(s) trained twice")
    assert resumed == reported  # every epoch reported had been checkpointed first: none is trained again


def _chain(trials: list, last: optuna.trial.FrozenTrial) -> list:
    """`last` and the trials it resumed, oldest first (each retry names the trial it continues)."""
    by_number, chain = {t.number: t for t in trials}, [last]
    while "sweep_retry_of" in chain[0].user_attrs:
        chain.insert(0, by_number[chain[0].user_attrs["sweep_retry_of"]])
    return chain


def _trained_twice(chain: list) -> int:
    """Finished epochs a chain of hand-backs trained again: what each trial reported beyond where its retry
    resumed (a checkpoint saved just before the stop may put the resume one epoch ahead of the reports)."""
    return sum(max(0, max(t.intermediate_values, default=0) - nxt.user_attrs.get("sweep_resumed_at_epoch", 0))
               for t, nxt in itertools.pairwise(chain))


def test_a_preempted_worker_hands_its_trial_back_and_it_resumes(three_nodes: str, home: Path, tiny_file: Path) -> None:
    """A job of the higher-priority partition needs node2, where a worker is mid-trial: SLURM preempts the worker's
    array task (PreemptMode=REQUEUE; preempt_send_user_signal sends submitit's USR2 at once), the worker checkpoints,
    hands its trial back and exits, the task is requeued, and the trial resumes from its checkpoint. Budget exact."""
    profile = home / "whole-node.yaml"  # a task takes a node's two CPUs: the urgent job must preempt to get node2
    profile.write_text((ROOT / "cluster" / "local.yaml").read_text().replace("cpus_per_task: 1", "cpus_per_task: 2"))
    name, url = f"preempt-{uuid.uuid4().hex[:8]}", URLS["postgresql"]
    slow = ["data.clips_per_class=80", "train.epochs=30", "pruner.n_warmup_steps=100",
            "executor.heartbeat_seconds=2", "executor.stale_after_seconds=300"]  # no heartbeat recovery in time
    launcher = subprocess.Popen(
        [sys.executable, "-m", "sweep", "launch", str(tiny_file), "--executor", "slurm", "--cluster", str(profile),
         "--workers", "3", "--trials", "3", "--study", name, "--storage", url, *[f"--set={s}" for s in slow]],
        cwd=home, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    urgent = None
    try:
        victim = _running_at_epoch_2(launcher, name, url, node="node2")
        submit = subprocess.run(["sbatch", "--parsable", "--partition=urgent", "--nodelist=node2", "--cpus-per-task=2",
                                 "--time=1", f"--output={home}/urgent.out", "--wrap", "echo $SLURMD_NODENAME; sleep 5"],
                                capture_output=True, text=True)
        assert submit.returncode == 0, submit.stderr
        urgent = submit.stdout.strip()
        out, _ = launcher.communicate(timeout=420)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        if urgent:
            subprocess.run(["scancel", urgent], capture_output=True)
    assert launcher.returncode == 0, out
    assert _sacct(urgent) == {urgent: "COMPLETED"} and (home / "urgent.out").read_text().split() == ["node2"]
    task = victim.user_attrs["slurm_job_id"]
    history = subprocess.run(["sacct", "-n", "-P", "-X", "-D", "-o", "JobID,State", "-j", task],
                             capture_output=True, text=True).stdout
    assert "PREEMPTED" in history or "REQUEUED" in history, history  # SLURM put the task back in the queue
    trials = optuna.load_study(study_name=name, storage=open_storage(url)).get_trials()
    counted = [t for t in trials if "sweep_void" not in t.user_attrs]
    assert len(counted) == 3 and all(t.state == TrialState.COMPLETE for t in counted), out
    lost = next(t for t in trials if t.number == victim.number)
    assert lost.state == TrialState.FAIL and "preempted or timed out" in lost.user_attrs["sweep_void"]  # the signal's
    (retry,) = [t for t in trials if t.user_attrs.get("sweep_retry_of") == victim.number]
    assert retry.state == TrialState.COMPLETE and retry.params == lost.params
    assert sorted(retry.intermediate_values) == list(range(1, 31))  # the whole curve, the resumed epochs included
    assert retry.user_attrs.get("sweep_retries", 0) == 0  # it had progressed: a preemption uses up no retry
    twice = _trained_twice([lost, retry])
    print(f"preempted at epoch {max(lost.intermediate_values)} (+ the one in progress); the retry resumed after epoch "
          f"{retry.user_attrs['sweep_resumed_at_epoch']}: {twice} finished epoch(s) trained twice")
    assert twice == 0  # every epoch reported had been checkpointed first


def test_a_worker_at_its_time_limit_requeues_itself_and_resumes_its_trial(
    slurm_cluster: str, home: Path, tiny_file: Path
) -> None:
    """`time_min: 1`: SLURM signals the task (USR2) 30 s before its limit, the worker checkpoints, hands its trial
    back and requeues its task, which resumes the trial after its last finished epoch; as often as it takes (a
    trial that progressed uses up no retry). Budget exact. Over a minute by nature: SLURM's shortest limit.

    The trial has to outlast one allocation, and how many epochs that takes depends on the machine: 200 epochs took
    over a minute here and 24 s on a faster one. A trial that finished inside one allocation shows how fast this
    machine is (and must have been shorter than the limit, or its signal was missed); the next try is sized from it."""
    profile = home / "one-minute.yaml"
    profile.write_text((ROOT / "cluster" / "local.yaml").read_text().replace("time_min: 60", "time_min: 1"))
    assert "time_min: 1\n" in profile.read_text()
    url, epochs = URLS["postgresql"], 200
    for _ in range(3):
        name = f"limit-{uuid.uuid4().hex[:8]}"
        slow = ["data.clips_per_class=80", f"train.epochs={epochs}", "pruner.n_warmup_steps=100000",
                "executor.heartbeat_seconds=2", "executor.stale_after_seconds=300"]
        run = sweep_cli("launch", str(tiny_file), "--executor", "slurm", "--cluster", str(profile), "--workers", "1",
                        "--trials", "1", "--study", name, "--storage", url, *[f"--set={s}" for s in slow], cwd=home,
                        timeout=900)
        assert run.returncode == 0, run.stdout + run.stderr
        study = optuna.load_study(study_name=name, storage=open_storage(url))
        trials = study.get_trials()
        (done,) = [t for t in trials if "sweep_void" not in t.user_attrs]
        assert done.state == TrialState.COMPLETE and sorted(done.intermediate_values) == list(range(1, epochs + 1))
        if len(trials) > 1:
            break
        wall = done.user_attrs["wall_seconds"]
        assert wall < 60, f"{wall} s in one allocation of a minute: the time-limit signal never came"
        epochs = int(epochs * 100 / wall)  # about 100 s of training on this machine: two allocations or more
    else:
        pytest.fail(f"no trial met its time limit, the last one of {epochs} epochs")
    chain = _chain(trials, done)
    assert chain == sorted(trials, key=lambda t: t.number) and len(chain) >= 2, "the trial never met its time limit"
    for handed_back in chain[:-1]:
        assert handed_back.state == TrialState.FAIL and "preempted or timed out" in handed_back.user_attrs["sweep_void"]
    assert done.user_attrs.get("sweep_retries", 0) == 0  # each stop had progressed: no retry used up
    (job,) = study.user_attrs["sweep_jobs"][:1]
    history = subprocess.run(["sacct", "-n", "-P", "-X", "-D", "-o", "JobID,State", "-j", job["id"]],
                             capture_output=True, text=True).stdout
    assert history.count("REQUEUED") >= len(chain) - 1, history  # the task requeued itself each time
    twice = _trained_twice(chain)
    print(f"{len(chain) - 1} time limit(s) met; the trial resumed after epochs "
          f"{[t.user_attrs['sweep_resumed_at_epoch'] for t in chain[1:]]}: {twice} finished epoch(s) trained twice")
    assert twice == 0


def test_a_lone_slurm_worker_killed_is_replaced(slurm_cluster: str, home: Path, tiny_file: Path) -> None:
    """The one worker's process is killed (as the OOM killer would): its job ends FAILED, SLURM does not requeue
    it, and the attached launcher hands its trial back and submits a new worker, which resumes the trial from
    its checkpoint; the launch ends with the budget met instead of "launch again"."""
    name, url = f"replace-{uuid.uuid4().hex[:8]}", URLS["postgresql"]
    slow = ["train.epochs=30", "pruner.n_warmup_steps=100", "executor.heartbeat_seconds=2"]
    launcher = subprocess.Popen(
        [sys.executable, "-m", "sweep", "launch", str(tiny_file), *ON_CLUSTER, "--workers", "1", "--trials", "2",
         "--study", name, "--storage", url, *[f"--set={s}" for s in slow]],
        cwd=home, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        victim = _running_at_epoch_2(launcher, name, url)
        os.kill(victim.user_attrs["pid"], signal.SIGKILL)
        out, _ = launcher.communicate(timeout=300)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 0, out
    assert "started worker 1 (job" in out and "(worker 1 took its place)" in out, out
    trials = optuna.load_study(study_name=name, storage=open_storage(url)).get_trials()
    counted = [t for t in trials if "sweep_void" not in t.user_attrs]
    assert len(counted) == 2 and all(t.state == TrialState.COMPLETE for t in counted), out
    (retry,) = [t for t in trials if t.user_attrs.get("sweep_retry_of") == victim.number]
    assert retry.user_attrs["slurm_job_id"] != victim.user_attrs["slurm_job_id"] and retry.user_attrs["worker"] == 1
    assert retry.user_attrs["sweep_resumed_at_epoch"] >= 2


def test_several_trials_share_one_array_task(slurm_cluster: str, home: Path, tiny_file: Path) -> None:
    """`executor.trials_per_gpu: 2`: each array task runs 2 workers (srun tasks) sharing its GPU, its 2 CPUs
    divided between them; every trial records its job and slot, and the budget is exact."""
    profile = home / "two-cpus.yaml"
    profile.write_text((ROOT / "cluster" / "local.yaml").read_text().replace("cpus_per_task: 1", "cpus_per_task: 2"))
    name, url = f"packed-{uuid.uuid4().hex[:8]}", URLS["postgresql"]
    run = sweep_cli(
        "launch", str(tiny_file), "--executor", "slurm", "--cluster", str(profile), "--workers", "2", "--trials", "6",
        "--study", name, "--storage", url, "--set", "executor.trials_per_gpu=2", "--set", "train.epochs=3", cwd=home,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "started 2 slurm worker(s), 2 to each of 1 jobs" in run.stdout, run.stdout
    trials = optuna.load_study(study_name=name, storage=open_storage(url)).get_trials()
    counted = [t for t in trials if "sweep_void" not in t.user_attrs]
    assert len(counted) == 6 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in counted)
    assert {t.user_attrs["slurm_job_id"] for t in counted} == {counted[0].user_attrs["slurm_job_id"]}  # one task
    by_slot = {t.user_attrs["slurm_slot"]: t.user_attrs["worker"] for t in counted}
    assert by_slot == {0: 0, 1: 1}, by_slot  # both slots ran trials, worker = entry × 2 + slot
    assert all(t.user_attrs["config"]["train"]["threads"] == 1 for t in counted)  # 2 CPUs shared by 2 workers


def test_more_trials_per_gpu_than_cpus_is_refused(home: Path, tiny_file: Path) -> None:
    run = sweep_cli("launch", str(tiny_file), *ON_CLUSTER, "--set", "executor.trials_per_gpu=2", cwd=home)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "executor.trials_per_gpu" in run.stderr and "cpus_per_task: 1" in run.stderr, run.stderr
    assert not (home / "studies" / "tiny" / "study.db").exists()
    local = sweep_cli("launch", str(tiny_file), "--set", "executor.trials_per_gpu=2", cwd=home)
    assert local.returncode == 2 and "trials_per_gpu" in local.stderr, local.stderr  # a SLURM key only


def _job_logs(logs: Path, job: str) -> str:
    """The tail of each log submitit kept of `job` (both tasks' output): what a failed assertion shows."""
    folders = f"{job.split('_')[0]}_*"  # the array's task folders
    return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
                     for path in sorted(logs.glob(f"{folders}/*.out")) + sorted(logs.glob(f"{folders}/*.err")))


def test_the_time_limit_signal_hands_back_every_slots_trial(slurm_cluster: str, home: Path, tiny_file: Path) -> None:
    """SLURM's time-limit signal reaches both workers of a packed array task: submitit checkpoints the first and
    requeues the task, sweep's own handler hands the second's trial back; both resume from their checkpoints."""
    profile = home / "two-cpus.yaml"
    profile.write_text((ROOT / "cluster" / "local.yaml").read_text().replace("cpus_per_task: 1", "cpus_per_task: 2"))
    launcher = _launch_in_background(home, tiny_file, "--cluster", str(profile), "--workers", "2", "--trials", "3",
                                     "--set", "executor.trials_per_gpu=2")
    deadline, victims = time.time() + 180, []
    while len(victims) < 2 and time.time() < deadline and launcher.poll() is None:
        time.sleep(0.2)
        with contextlib.suppress(Exception):  # the study is still being created
            trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{home}/studies/tiny/study.db").trials
            victims = [t for t in trials if t.state == TrialState.RUNNING and len(t.intermediate_values) >= 2]
    assert len(victims) == 2, launcher.communicate()[0] if launcher.poll() is not None else "not both slots running"
    job = victims[0].user_attrs["slurm_job_id"]
    assert {v.user_attrs["slurm_slot"] for v in victims} == {0, 1}
    assert subprocess.run(["scancel", "--signal=USR2", job], capture_output=True).returncode == 0
    out, _ = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, out
    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{home}/studies/tiny/study.db").trials
    for victim in victims:
        lost = next(t for t in trials if t.number == victim.number)
        assert lost.state == TrialState.FAIL and "preempted or timed out" in lost.user_attrs["sweep_void"], \
            (lost, _job_logs(home / "studies" / "tiny" / "logs", job))
        (again,) = [t for t in trials if t.user_attrs.get("sweep_retry_of") == victim.number]
        assert again.state == TrialState.COMPLETE and again.user_attrs["sweep_resumed_at_epoch"] >= 2
    counted = [t for t in trials if "sweep_void" not in t.user_attrs]
    assert len(counted) == 3 and all(t.state == TrialState.COMPLETE for t in counted)
