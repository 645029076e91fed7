"""Seconds from `sweep launch` to the first trial running on SLURM, against a bare job's start on the same cluster.

    python benchmarks/slurm_launch.py [--quick] [--runs 3] [--storage URL]

sweep: `sweep launch` of a one-trial study (seconds of synthetic audio, one epoch) with one SLURM worker
(cluster/local.yaml's profile), from the moment the command starts to the first trial's `datetime_start` (its
claim: RUNNING in the study); the launch then runs to its end. Median of --runs (3); --quick runs 2.
baseline: `sbatch --wrap` of a Python that imports what a worker imports (torch, sweep.run.worker) and stamps
the time: SLURM's scheduling plus the interpreter's start, the floor of any PyTorch worker on this cluster.
Where the seconds go is printed per run: the launcher up to its sbatch (imports, checks including
`sbatch --test-only`, study creation, submitit's pickling), SLURM's queue (sacct's Submit → Start, whole
seconds), the job's start to submitit's first log line, then the worker's imports and claim.

Lines:
`BENCH slurm_launch_first_trial_s sweep=<s> baseline=15.0 ratio=<sweep/15> goal=<=1.0`: the goal of issue 21
(≤ 15 s on the test SLURM), and `BENCH slurm_launch_over_bare_job sweep=<s> baseline=<bare s> ratio goal=<=2.0`:
what sweep adds over the floor. Needs a running cluster (cluster/start.sh); without one it says why and exits 0
with no BENCH line. On a shared cluster run it under its lock.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from _bench import bench_line
from _slurm import PROFILE, Launcher, study_file, unavailable

GOAL_S = 15.0
SUBMITIT_START = re.compile(r"submitit INFO \((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\) - Starting with JobEnvironment")


def launch_once(folder: Path, storage: str | None) -> dict[str, float]:
    """One launch; the seconds from its start to each step (`first_trial` the one measured)."""
    import optuna

    name = f"latency-{uuid.uuid4().hex[:8]}"
    url = storage or f"sqlite:///{folder / (name + '.db')}"
    launcher = Launcher(folder, str(study_file(folder)), "--executor", "slurm", "--cluster", str(PROFILE),
                        "--workers", "1", "--trials", "1", "--study", name, "--storage", url)
    try:
        submitted = launcher.when("slurm worker(s)", timeout=120) - launcher.started
        code = launcher.wait(timeout=300)
    finally:
        if launcher.proc.poll() is None:
            launcher.proc.kill()
    if code != 0:
        raise RuntimeError(f"`sweep launch` exited {code}:\n{launcher.output()}")
    study = optuna.load_study(study_name=name, storage=url)
    (trial,) = study.get_trials()
    (job,) = study.user_attrs["sweep_jobs"]
    first = trial.datetime_start.timestamp() - launcher.started  # Optuna stamps local, naive datetimes
    steps = {"sbatch_returned": submitted, "first_trial": first}
    acct = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "Submit,Start", "-j", job["id"]], capture_output=True,
                          text=True).stdout.split()
    if acct and "|" in acct[0]:
        submit, start = (dt.datetime.fromisoformat(s).timestamp() for s in acct[0].split("|"))
        steps["slurm_queue"] = start - submit
    log = next((folder / "studies" / name / "logs").glob(f"{job['id']}/*_log.out"), None)
    found = SUBMITIT_START.search(log.read_text()) if log else None
    if found:
        stamp = dt.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        steps["job_python_up"] = stamp - launcher.started
    optuna.delete_study(study_name=name, storage=url)
    return steps


def bare_job(folder: Path, partition: str) -> float:
    """Seconds from sbatch to a bare job's Python having imported torch and sweep's worker."""
    stamp = folder / f"bare-{uuid.uuid4().hex[:6]}"
    script = stamp.with_suffix(".py")
    script.write_text("import time\nimport torch, sweep.run.worker\n"
                      f"open({str(stamp)!r}, 'w').write(repr(time.time()))\n")
    started = time.time()
    sbatch = subprocess.run(["sbatch", "--parsable", "-p", partition, "-c", "1", "-o", "/dev/null",
                             f"--chdir={folder}", "--wrap", f"{sys.executable} {script}"],
                            capture_output=True, text=True, timeout=60)
    if sbatch.returncode != 0:
        raise RuntimeError(f"sbatch failed: {sbatch.stderr.strip()}")
    deadline = time.time() + 180
    while time.time() < deadline:
        if stamp.exists() and stamp.read_text():
            return float(stamp.read_text()) - started
        time.sleep(0.05)
    subprocess.run(["scancel", sbatch.stdout.strip().split(";")[0]], capture_output=True)
    raise RuntimeError(f"the bare job {sbatch.stdout.strip()} did not start within 180 s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2 runs of each")
    p.add_argument("--runs", type=int, default=None, help="launches (and bare jobs) to take the median of (3)")
    p.add_argument("--storage", default=None, help="the study's storage URL (default: a SQLite file)")
    args = p.parse_args(argv)
    why = unavailable()
    if why:
        print(f"slurm_launch.py: skipped: {why}")
        return 0
    import yaml

    partition = yaml.safe_load(PROFILE.read_text())["partition"]
    runs = args.runs or (2 if args.quick else 3)
    sweeps, bares = [], []
    with tempfile.TemporaryDirectory(dir=Path.home(), ignore_cleanup_errors=True) as tmp:
        for i in range(runs):  # alternating, so a change in the machine's load falls on both
            bares.append(bare_job(Path(tmp), partition))
            steps = launch_once(Path(tmp), args.storage)
            sweeps.append(steps["first_trial"])
            print(f"run {i + 1}: bare job up {bares[-1]:5.2f} s; sweep: " +
                  ", ".join(f"{k} {v:5.2f} s" for k, v in steps.items()), flush=True)
    sweep_s, bare_s = statistics.median(sweeps), statistics.median(bares)
    print(f"launch → first trial running: median {sweep_s:.2f} s of {runs} (range {min(sweeps):.2f}–"
          f"{max(sweeps):.2f}); bare job: median {bare_s:.2f} s (range {min(bares):.2f}–{max(bares):.2f})")
    print(bench_line("slurm_launch_over_bare_job", sweep_s, bare_s, sweep_s / bare_s, "<=2.0", digits=2))
    print(bench_line("slurm_launch_first_trial_s", sweep_s, GOAL_S, sweep_s / GOAL_S, "<=1.0", digits=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
