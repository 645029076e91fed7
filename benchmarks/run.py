"""Run every benchmark in benchmarks/ and collect their BENCH lines: one command, one summary.

    python benchmarks/run.py [--quick] [--only NAME,...] [--timeout S] [--write benchmarks/RESULTS.md]

Every `benchmarks/*.py` except this one runs as a subprocess (`python -u`, from the repository root), the
known ones in a fixed order (PREFERRED), any others after them alphabetically; their output is streamed as
it comes. With `--quick` each script gets `--quick`; a script whose source does not mention `--quick` gets
its entry in QUICK_FALLBACK instead (storage_overhead.py: `--workers 1,8`), or its full run, with a warning.
Where CUDA is available a script in ON_CUDA runs a second time with those arguments: trainer_overhead.py on the
GPU with AMP, next to its CPU row (throughput.py picks the GPU by itself).
`--quick` is meant to finish in under 10 minutes on 2 cores.

At the end every BENCH line (`BENCH <name> sweep=<x> baseline=<y> ratio=<r> goal=<g> pass|fail`, anywhere in
a line) is printed again, together, with the pass/fail count. The exit status is 1 if a script crashed
(exited non-zero, or ran past `--timeout`), else 0: a `fail` verdict is a result, not a crash.

`--write FILE` writes the BENCH lines as a markdown table with the machine's facts (cores, CPU, torch and
Optuna versions, load average, date) above MARKER; whatever FILE holds below MARKER (the hand-written
account of the results) is kept as it is.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PREFERRED = ("storage_overhead", "trainer_overhead", "pruning", "pruning_multi", "throughput", "memory",
             "launch_checks")
QUICK_FALLBACK = {"storage_overhead": ["--workers", "1,8"]}  # for a script that has no --quick of its own
ON_CUDA = {"trainer_overhead": ["--device", "cuda", "--amp"]}  # a second run where there is a GPU
BENCH = re.compile(
    r"BENCH (?P<name>\S+) sweep=(?P<sweep>\S+) baseline=(?P<baseline>\S+) ratio=(?P<ratio>\S+) "
    r"goal=(?P<goal>\S+) (?P<verdict>pass|fail)\s*$"
)
MARKER = "<!-- Hand-written below this line: `python benchmarks/run.py --write` keeps it as it is. -->"
UNITS = (  # (pattern of BENCH names, what sweep= and baseline= are), the first match wins
    (r"storage_", "ms per trial per worker"),
    (r"trainer_overhead(_cuda)?(_amp)?$", "s per epoch (median, epoch 1 skipped)"),
    (r"pruning_.*_epochs$", "epochs trained (sum over trials)"),
    (r"pruning_.*_best_acc$", "best val accuracy, %; ratio = difference in points"),
    (r"warm_start_trials_needed$", "trials to within 1 point of the cold best (mean over seeds): warm, cold"),
    (r"pruning_mo_hypervolume$", "hypervolume of the Pareto front, params_mb × val_acc %"),
    (r".*_clips_per_s$", "clips per second"),
    (r"launch_header_check$", "s to check every file's header (sweep) or decode every file (baseline)"),
    (r"launch_top_up_trials_per_s$", "trials enqueued per second (baseline extrapolated from fewer)"),
    (r"orchestration_", "s wall time of the trials (sweep) and their floor, trials × epochs × sleep / workers"),
    (r"slurm_launch_first_trial_s$", "s from `sweep launch` to the first trial running (median); baseline: the goal"),
    (r"slurm_launch_over_bare_job$", "s to the first trial running (sweep), to a bare job's torch import (baseline)"),
    (r"slurm_poll_queries_", "most squeue + sacct calls in a 10 s interval; baseline: one per task"),
    (r"slurm_poll_seconds_", "s per poll over every task; baseline: one squeue per task (scaled from 50)"),
)


@dataclass
class Outcome:
    script: str
    args: list[str]
    returncode: int | None = None
    seconds: float = 0.0
    timed_out: bool = False
    lines: list[str] = field(default_factory=list)

    @property
    def crashed(self) -> bool:
        return self.returncode != 0


def discover(only: set[str] | None = None) -> list[Path]:
    """benchmarks/*.py but run.py: PREFERRED first, in that order, then the rest alphabetically."""
    scripts = [p for p in HERE.glob("*.py") if p.name != Path(__file__).name and not p.name.startswith("_")]
    order = {name: i for i, name in enumerate(PREFERRED)}
    scripts.sort(key=lambda p: (order.get(p.stem, len(order)), p.stem))
    return [p for p in scripts if only is None or p.stem in only]


def arguments(script: Path, quick: bool) -> tuple[list[str], str | None]:
    """The script's arguments for this run, and a warning when it cannot be given --quick."""
    if not quick:
        return [], None
    if "--quick" in script.read_text(errors="replace"):
        return ["--quick"], None
    if script.stem in QUICK_FALLBACK:
        args = QUICK_FALLBACK[script.stem]
        return args, f"{script.name} takes no --quick: running it with {' '.join(args)} as its quick variant"
    return [], f"{script.name} takes no --quick and has no quick variant here: running it in full"


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def run_script(script: Path, args: list[str], timeout: float | None) -> Outcome:
    """Run one benchmark, streaming its output; its BENCH lines are collected."""
    outcome = Outcome(script.name, args)
    cmd = [sys.executable, "-u", str(script), *args]
    print(f"\n===== {' '.join([script.name, *args])} =====", flush=True)
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        errors="replace", start_new_session=True,  # its own process group: a timeout ends its workers too
    )

    def kill() -> None:
        outcome.timed_out = True
        with_group(proc, signal.SIGKILL)

    timer = threading.Timer(timeout, kill) if timeout else None
    if timer is not None:
        timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            bench = line.find("BENCH ")
            if bench >= 0 and BENCH.search(line[bench:]):
                outcome.lines.append(line[bench:].strip())
        proc.wait()
    except KeyboardInterrupt:
        with_group(proc, signal.SIGTERM)
        proc.wait()
        raise
    finally:
        if timer is not None:
            timer.cancel()
    outcome.returncode, outcome.seconds = proc.returncode, time.perf_counter() - started
    state = "timed out" if outcome.timed_out else f"exit {proc.returncode}"
    print(f"===== {script.name}: {state}, {outcome.seconds:.0f} s, {len(outcome.lines)} BENCH line(s) =====",
          flush=True)
    return outcome


def with_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal the benchmark and the processes it started (its own session), by its process group id."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def facts() -> dict[str, str]:
    """What the numbers depend on: the machine, its load, the versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = []
    for pkg in ("torch", "torchaudio", "optuna"):
        try:
            versions.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{pkg} not installed")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": f"{os.cpu_count()} ({usable} usable by this process)",
        "cpu": cpu,
        "system": f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        "versions": ", ".join(versions),
        "load": load,
    }


def units(name: str) -> str:
    return next((u for pattern, u in UNITS if re.match(pattern, name)), "")


def table(outcomes: list[Outcome], before: dict[str, str], mode: str) -> str:
    rows = [
        "# Benchmark results",
        "",
        f"Written by `python benchmarks/run.py{' --quick' if mode == 'quick' else ''} --write ...` on "
        f"{before['date']}; every benchmark measures sweep and its baseline in one run on this machine.",
        "",
        "| machine | |",
        "|---|---|",
        f"| cores | {before['cores']} |",
        f"| CPU | {before['cpu']} |",
        f"| system | {before['system']} |",
        f"| versions | {before['versions']} |",
        f"| load average (1, 5, 15 min) | {before['load']} at the start, {facts()['load']} at the end |",
        f"| mode | {mode} |",
        "",
        "| benchmark | sweep | baseline | ratio | goal | verdict | sweep and baseline are | script |",
        "|---|---:|---:|---:|---|---|---|---|",
    ]
    for o in outcomes:
        for line in o.lines:
            m = BENCH.search(line)
            assert m is not None
            rows.append(
                f"| {m['name']} | {m['sweep']} | {m['baseline']} | {m['ratio']} | {m['goal']} | {m['verdict']} | "
                f"{units(m['name'])} | {o.script} {' '.join(o.args)} |"
            )
    crashed = [o for o in outcomes if o.crashed]
    if crashed:
        rows += ["", "Crashed: " + ", ".join(
            f"{o.script} ({'timed out' if o.timed_out else f'exit {o.returncode}'})" for o in crashed)]
    return "\n".join(rows) + "\n"


def write(path: Path, generated: str) -> None:
    """The table above MARKER; the hand-written part below it (or the whole old file, if it had no marker)."""
    kept = ""
    if path.exists():
        old = path.read_text()
        kept = old.split(MARKER, 1)[1].lstrip("\n") if MARKER in old else old
    path.write_text(f"{generated}\n{MARKER}\n\n{kept}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="each benchmark's quick variant (under 10 min on 2 cores)")
    p.add_argument("--only", help="comma-separated script names without .py (default: all)")
    p.add_argument("--timeout", type=float, help="seconds one script may run before it is killed (a crash)")
    p.add_argument("--write", type=Path, metavar="FILE", help="write the results table into FILE (markdown)")
    args = p.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    scripts = discover(only)
    if not scripts:
        p.error(f"no benchmark scripts found in {HERE}" + (f" named {sorted(only)}" if only else ""))
    before, started = facts(), time.perf_counter()
    print(f"{len(scripts)} benchmark(s): {', '.join(s.name for s in scripts)}; {before['cores']} cores, "
          f"{before['versions']}, load {before['load']}", flush=True)
    outcomes, warnings = [], []
    for script in scripts:
        script_args, warning = arguments(script, args.quick)
        if warning:
            warnings.append(warning)
            print(f"note: {warning}", flush=True)
        outcomes.append(run_script(script, script_args, args.timeout))
        if script.stem in ON_CUDA and cuda_available():
            outcomes.append(run_script(script, [*script_args, *ON_CUDA[script.stem]], args.timeout))

    lines = [line for o in outcomes for line in o.lines]
    passed = sum(line.endswith("pass") for line in lines)
    crashed = [o for o in outcomes if o.crashed]
    silent = [o.script for o in outcomes if not o.crashed and not o.lines]
    print(f"\n===== {len(lines)} BENCH line(s) from {len(outcomes)} script(s), "
          f"{time.perf_counter() - started:.0f} s in all =====")
    for line in lines:
        print(line)
    print(f"{passed} pass, {len(lines) - passed} fail", end="")
    print(f"; crashed: {', '.join(o.script for o in crashed)}" if crashed else "; no script crashed")
    for warning in warnings:
        print(f"note: {warning}")
    if silent:
        print(f"note: no BENCH line from {', '.join(silent)}")
    if args.write:
        write(args.write, table(outcomes, before, "quick" if args.quick else "full"))
        print(f"wrote {args.write}")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
