"""How hard the launcher polls SLURM with a 500-task array: squeue/sacct calls per interval and seconds per poll.

    python benchmarks/slurm_polling.py [--quick] [--tasks 500] [--seconds 60]

A real `sweep launch` of a study with --workers 500 (a 500-task array; trials of one epoch on seconds of synthetic
audio, cluster/local.yaml's profile) runs with squeue, sacct and scancel behind counting shims on its PATH. The
cluster runs as many tasks as it has CPUs and holds the rest pending, as a busy cluster would. For --seconds (60;
--quick 30) after its sbatch returned the launcher watches; halfway, `sweep status` runs once (its calls and
seconds counted apart); then the launcher gets Ctrl-C (SIGINT) and stops the array, and its calls to scancel are
counted. Meanwhile this process times one poll of the launcher's loop (`sweep.run.waiting.JobsEnded`, an
accounting refresh forced, over submitit jobs for every task) against the poll of one who asks per job
(`squeue -j ID` per task, 50 timed and scaled to every task).

Lines: `BENCH slurm_poll_queries_<tasks> sweep=<most squeue + sacct calls in one 10 s interval>
baseline=<tasks: one call per task and interval> ratio goal=<=0.01` and `BENCH slurm_poll_seconds_<tasks>
sweep=<s per poll> baseline=<s per per-job poll> ratio goal=<=0.1`. Needs a running cluster (cluster/start.sh);
without one it says why and exits 0 with no BENCH line. On a shared cluster run it under its lock; it cancels
what it submitted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from _bench import bench_line
from _slurm import PROFILE, Launcher, study_file, unavailable

TOOLS = ("squeue", "sacct", "scancel")
INTERVAL = 10.0  # sweep.run.waiting.FORCE_CHECK_EVERY: the launcher's accounting refresh
PER_JOB_SAMPLE = 50


def shims(folder: Path, log: Path) -> str:
    """A PATH whose squeue, sacct and scancel log `tool time parent-pid` to `log`, then run the real one."""
    folder.mkdir(parents=True, exist_ok=True)
    for tool in TOOLS:
        real = shutil.which(tool)
        if real is None:
            raise RuntimeError(f"{tool} is not on PATH")
        (folder / tool).write_text(f'#!/bin/sh\necho "{tool} $(date +%s.%N) $PPID" >> "{log}"\nexec "{real}" "$@"\n')
        (folder / tool).chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


def calls(log: Path, pid: int | None = None) -> list[tuple[str, float]]:
    """(tool, time) of each call logged, only those made by process `pid` when given."""
    out = []
    for line in log.read_text().splitlines() if log.exists() else []:
        tool, at, parent = line.split()
        if pid is None or int(parent) == pid:
            out.append((tool, float(at)))
    return out


def most_per_interval(times: list[float], start: float, end: float, width: float) -> int:
    bins = [0] * max(1, int((end - start) // width))
    for at in times:
        i = int((at - start) // width)
        if 0 <= i < len(bins):
            bins[i] += 1
    return max(bins)


def time_polls(array: str, tasks: int, folder: Path) -> tuple[float, float]:
    """Seconds of one launcher poll over every task (median of 3) and of asking squeue once per task."""
    import submitit

    from sweep.run.waiting import JobsEnded

    jobs = [submitit.SlurmJob(folder=folder / "%j", job_id=f"{array}_{i}") for i in range(tasks)]
    polls = []
    for _ in range(3):
        ended = JobsEnded(jobs, force_every=0.0)  # this poll forces the accounting refresh, as one in 5 does
        started = time.perf_counter()
        ended()
        polls.append(time.perf_counter() - started)
    started = time.perf_counter()
    for i in range(PER_JOB_SAMPLE):
        subprocess.run(["squeue", "-h", "-j", f"{array}_{i}"], capture_output=True)
    per_job = (time.perf_counter() - started) / PER_JOB_SAMPLE * tasks
    return statistics.median(polls), per_job


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="watch for 30 s")
    p.add_argument("--tasks", type=int, default=500, help="array tasks (workers), default 500")
    p.add_argument("--seconds", type=float, default=None, help="how long the launcher watches (60; --quick 30)")
    args = p.parse_args(argv)
    why = unavailable()
    if why:
        print(f"slurm_polling.py: skipped: {why}")
        return 0
    import optuna

    window = args.seconds or (30.0 if args.quick else 60.0)
    name = f"polling-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        folder = Path(tmp)
        url = f"sqlite:///{folder / 'study.db'}"
        log, status_log = folder / "calls.log", folder / "status-calls.log"
        launcher = Launcher(folder, str(study_file(folder)), "--executor", "slurm", "--cluster", str(PROFILE),
                            "--workers", str(args.tasks), "--trials", str(args.tasks), "--study", name,
                            "--storage", url, env={"PATH": shims(folder / "bin", log)})
        array = None
        try:
            submitted = launcher.when("slurm worker(s)", timeout=300)
            print(f"launch → {args.tasks} tasks submitted: {submitted - launcher.started:.1f} s", flush=True)
            study = optuna.load_study(study_name=name, storage=url)
            array = study.user_attrs["sweep_jobs"][0]["id"].split("_")[0]
            time.sleep(window / 2)
            started = time.time()
            status = subprocess.run([sys.executable, "-m", "sweep", "status", name, "--storage", url], cwd=folder,
                                    capture_output=True, text=True, timeout=120,
                                    env={**os.environ, "PATH": shims(folder / "status-bin", status_log)})
            status_s = time.time() - started
            if status.returncode != 0:
                raise RuntimeError(f"sweep status failed: {status.stderr}")
            poll_s, per_job_s = time_polls(array, args.tasks, folder / "studies" / name / "logs")
            queued = subprocess.run(["squeue", "-h", "-r", "-o", "%T", "-j", array], capture_output=True,
                                    text=True).stdout.split()
            time.sleep(max(0.0, submitted + window - time.time()))
            stopping = time.time()
            launcher.proc.send_signal(signal.SIGINT)
            code = launcher.wait(timeout=180)
            stop_s = time.time() - stopping
        finally:
            if launcher.proc.poll() is None:
                launcher.proc.kill()
            if array is not None:
                subprocess.run(["scancel", array], capture_output=True)
        if code != 130:
            raise RuntimeError(f"`sweep launch` exited {code} after Ctrl-C, not 130:\n{launcher.output()}")
        mine = calls(log, launcher.proc.pid)
        watching = [at for tool, at in mine if tool in ("squeue", "sacct") and submitted <= at < stopping]
        per_interval = most_per_interval(watching, submitted, stopping, INTERVAL)
        per_poll = most_per_interval(watching, submitted, stopping, 2.0)
        stop_calls = {tool: sum(1 for t, at in mine if t == tool and at >= stopping) for tool in TOOLS}
        by_status = {tool: sum(1 for t, _ in calls(status_log) if t == tool) for tool in TOOLS}
        optuna.delete_study(study_name=name, storage=url)
    print(f"{args.tasks} tasks ({queued.count('RUNNING')} running, {queued.count('PENDING')} pending halfway), "
          f"watched {stopping - submitted:.0f} s: {len(watching)} squeue/sacct calls by the launcher, at most "
          f"{per_interval} in a {INTERVAL:.0f} s interval and {per_poll} in a 2 s poll", flush=True)
    print(f"one poll of the launcher's loop over {args.tasks} tasks: {poll_s:.3f} s; asking squeue per task: "
          f"{per_job_s:.1f} s (from {PER_JOB_SAMPLE})", flush=True)
    print(f"sweep status: {status_s:.2f} s, calls {by_status}; Ctrl-C to exit: {stop_s:.1f} s, calls {stop_calls}",
          flush=True)
    print(bench_line(f"slurm_poll_queries_{args.tasks}", per_interval, args.tasks, per_interval / args.tasks,
                     "<=0.01", digits=0, ratio_digits=3))
    print(bench_line(f"slurm_poll_seconds_{args.tasks}", poll_s, per_job_s, poll_s / per_job_s, "<=0.1", digits=3,
                     ratio_digits=3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
