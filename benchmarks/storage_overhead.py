"""Per-trial storage overhead of sweep's worker against plain Optuna, on every storage backend.

    python benchmarks/storage_overhead.py [--quick | --smoke] [--backends sqlite,postgresql,mariadb,journal,grpc]
                                          [--workers 1,8,32] [--space two|demo] [--dir PATH]

sweep: `sweep.run.worker.run_worker`, the function every sweep worker runs, with a trainer that trains nothing: it
reports STEPS values (report + should_prune per step, as `sweep.run.trial.train_trial` does each epoch) and returns.
Everything else is the worker's own code, timed in full: opening the storage and the study, stale-trial checks,
the pop of the budget that `sweep.search.study.top_up` enqueued (as `sweep launch` does) with the trial's run
attributes (host, worker, launch, git commit, versions, trial_dir), the search-space draw, the heartbeat thread
(started and stopped per trial; it writes once every executor.heartbeat_seconds = 30 s of training, so never
here), `tell` with the closing attributes (seed, config, epochs_run, wall_seconds, checkpoint), and the files a
trial leaves (config.yaml, run.json, the TensorBoard hparams summary).
baseline: plain Optuna as one writes it by hand: `optuna.load_study(storage=URL)` (Optuna's own storage for the
URL, the journal through its file backend), then per trial `study.ask()`, a suggest call per param of the
space, report + should_prune per step (tell PRUNED when it says so), tell.
Both: the same sampler (RandomSampler, seed 0 + worker index), the same pruner (MedianPruner, 5 startup trials,
1 warm-up step), the same reported values (a function of trial number and step), the same number of trials
(sweep's workers share the enqueued budget; each baseline worker runs an equal share of it).

Workers are processes forked from a forkserver that imported everything (torch, Optuna, the drivers) but never
connected; each connects after the go signal. Overhead per trial = workers × (time from go to the end of the
last `tell`) / trials: the time one worker spends per trial. (A sweep worker that finds the budget drained
stays until no trial may need a retry; that wait ends a study, it is not a per-trial cost.)

`--space demo` draws the six params of search_spaces/demo.yaml instead of two: on the journal plain Optuna
appends once per param, sweep once for all (on SQL both write a param at a time). `--dir` puts the SQLite or
journal file and the trials' folders on the file system mounted there: a cluster's shared one measures the
journal where it is meant to run. PostgreSQL and MariaDB are the servers at SWEEP_TEST_POSTGRES /
SWEEP_TEST_MYSQL (default: 127.0.0.1), each run in a fresh database, dropped afterwards. Each point ends with
`BENCH storage_<backend>_<n>[_demo] sweep=<ms> baseline=<ms> ratio=<r> goal=<=1.0 pass|fail`.

`--backends grpc` (not in the default list) compares sweep with sweep: its workers through `sweep storage-proxy`
(its own process, 8 threads, in front of PostgreSQL) against its workers on the same PostgreSQL directly, in the
same run, at 1, 8, 32 and 96 workers by default: `BENCH storage_grpc_<n> sweep=<proxy ms> baseline=<direct ms>`.
Direct PostgreSQL with 96 workers needs ~100–300 connections (1 held per worker, up to 3 at peaks), more than a
default server's 100: when the server at SWEEP_TEST_POSTGRES allows fewer than 400, a PostgreSQL of the
benchmark's own is started (benchmarks/_postgres.py, max_connections 400) and removed afterwards.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from _bench import bench_line
from _postgres import own_postgres

from sweep.config.resolve import resolve
from sweep.config.yamlfile import parse_yaml
from sweep.run.place import run_context
from sweep.run.worker import run_worker
from sweep.search import space
from sweep.search.study import top_up
from sweep.storage import open_storage
from sweep.train.loop import Result

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("SWEEP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
MY_ADMIN = os.environ.get("SWEEP_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test")
BACKENDS = ("sqlite", "postgresql", "mariadb", "journal")  # the default; also: grpc (proxy vs direct PostgreSQL)
GRPC_WORKERS = "1,8,32,96"
GRPC_CONNECTIONS = 400  # direct PostgreSQL at 96 workers: 1 held per worker, up to 3 at peaks, and the admin's
STEPS = 5
PRUNER = {"n_startup_trials": 5, "n_warmup_steps": 1}
# The space drawn per trial: two params by default; --space demo draws the six of search_spaces/demo.yaml (the
# shipped spaces hold 3 to 7), where plain Optuna appends once per param and sweep once for all of them.
SPACES = {
    "two": {"train.lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-2, "log": True}, "model.width": [8, 16]},
    "demo": parse_yaml((ROOT / "search_spaces" / "demo.yaml").read_text(), "demo.yaml")["search_space"],
}
# Imported once in the forkserver, so neither side's timing includes a one-time import: what the workers import,
# and what they import lazily on their first trial (TensorBoard's record writer, ~80 ms; Optuna's storages).
PRELOAD = ["__main__", "torch", "sweep.run.worker", "sweep.train", "sweep.look.hparams", "psycopg2", "pymysql",
           "tensorboard.summary.writer.record_writer", "tensorboard.compat.proto.event_pb2",
           "alembic.script", "alembic.migration", "optuna.storages._rdb.models", "optuna.storages.journal"]


def trials_for(n_workers: int, quick: bool) -> int:
    """Enough trials per worker to average over, few enough for a 2-core machine; equal shares."""
    return n_workers * max(3 if quick else 4, (24 if quick else 40) // n_workers)


def value(number: int, step: int) -> float:
    """What trial `number` reports at `step`: a spread of curves, so the median pruner prunes some trials."""
    return ((number * 37) % 100) / 100 * (step + 1) / STEPS


# ---- the two workers -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reporting:
    """`sweep.run.trial.train_trial` without the training: what it does with the storage each epoch (report,
    should_prune), `steps` times. `sleep` s before each report stand for an epoch's training
    (benchmarks/orchestration.py); `spread`: the trials report a spread of curves, so the median pruner prunes
    some, else they all report one curve and none is pruned (each still asks)."""

    steps: int = STEPS
    sleep: float = 0.0
    spread: bool = True

    def __call__(self, config: dict[str, Any], out_dir: Path, trial: optuna.Trial) -> Result:
        for step in range(self.steps):
            if self.sleep:
                time.sleep(self.sleep)
            trial.report(self.value(trial.number, step), step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after step {step}")
        return Result(self.value(trial.number, self.steps - 1), self.steps - 1, [])

    def value(self, number: int, step: int) -> float:
        return value(number, step) if self.spread else (step + 1) / self.steps


def sweep_worker(
    config: dict[str, Any], url: str, study_dir: str, index: int, context: dict[str, Any], trainer: Reporting
) -> None:
    run_worker(config, url, study_dir, index, context, trainer=trainer)


def baseline_worker(url: str, name: str, index: int, share: int, params: list[tuple[str, Any]]) -> None:
    study = optuna.load_study(
        study_name=name,
        storage=plain_storage(url),
        sampler=optuna.samplers.RandomSampler(seed=index),
        pruner=optuna.pruners.MedianPruner(**PRUNER),
    )
    for _ in range(share):
        trial = study.ask()
        for path, dist in params:
            suggest(trial, path, dist)
        for step in range(STEPS):
            trial.report(value(trial.number, step), step)
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, value(trial.number, STEPS - 1))


def suggest(trial: optuna.Trial, path: str, dist: Any) -> None:
    """The suggest call one writes by hand for this distribution."""
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        trial.suggest_categorical(path, dist.choices)
    elif isinstance(dist, optuna.distributions.IntDistribution):
        trial.suggest_int(path, dist.low, dist.high, step=dist.step, log=dist.log)
    else:
        trial.suggest_float(path, dist.low, dist.high, step=dist.step, log=dist.log)


def plain_storage(url: str) -> Any:
    """What a user of Optuna alone would open: the URL as is (driver named), the journal through its backend."""
    if url.startswith("journal:///"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url[len("journal:///") :]))
    for bare, named in (("postgresql://", "postgresql+psycopg2://"), ("mysql://", "mysql+pymysql://")):
        if url.startswith(bare):
            return named + url[len(bare) :]
    return url


def process(target: Any, args: tuple[Any, ...], ready: Any, go: Any, results: Any) -> None:
    """One worker process: ready, wait for go, run; report when its last `tell` returned (or its error)."""
    sys.stdout = open(os.devnull, "w")  # a worker's per-trial log lines, as on a cluster, but not on this screen
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from optuna.study import _tell as tell_module
    from optuna.study import study as study_module

    last_tell = [0.0]
    tell = tell_module._tell_with_warning

    def timed_tell(*args: Any, **kwargs: Any) -> Any:
        result = tell(*args, **kwargs)
        last_tell[0] = time.time()
        return result

    # measurement only: the same wrapper around what both workers' tell runs (Study.tell's name for it, and the
    # module's, which sweep calls without Study.tell's read-back and deep copy)
    study_module._tell_with_warning = tell_module._tell_with_warning = timed_tell
    ready.put(os.getpid())
    go.wait()
    try:
        target(*args)
        results.put((last_tell[0], None))
    except BaseException as exc:
        results.put((last_tell[0], f"{type(exc).__name__}: {exc}"))


def run(
    mode: str, url: str, n_workers: int, n_trials: int, ctx: Any, space_name: str = "two", where: str | None = None,
    name: str | None = None,
) -> float:
    """Per-trial time of one worker in ms: workers × (go → last tell) / trials. Raises if a worker failed or the
    study did not finish exactly `n_trials` trials."""
    return 1000 * n_workers * timed(mode, url, n_workers, n_trials, ctx, space_name, where, name=name) / n_trials


def timed(
    mode: str,
    url: str,
    n_workers: int,
    n_trials: int,
    ctx: Any,
    space_name: str = "two",
    where: str | None = None,
    trainer: Reporting = Reporting(),
    name: str | None = None,
) -> float:
    """Seconds from the go signal to the end of the last `tell` (`trainer`: sweep's only; the baseline reports as
    `Reporting()` does). Raises if a worker failed or the study did not finish exactly `n_trials` trials."""
    name = name or f"{mode}-{uuid.uuid4().hex[:6]}"
    optuna.create_study(study_name=name, storage=open_storage(url), direction="maximize")
    with tempfile.TemporaryDirectory(dir=where, ignore_cleanup_errors=True) as study_dir:
        config = resolve(sweep_config(name, n_trials, n_workers, SPACES[space_name], trainer.steps),
                         "storage_overhead.py")
        if mode == "sweep":
            top_up(optuna.load_study(study_name=name, storage=open_storage(url)), n_trials)
            context = dict(run_context(n_workers), launch="bench")
            jobs = [(sweep_worker, (config, url, study_dir, i, context, trainer)) for i in range(n_workers)]
        else:
            params = [(p.path, p.distribution) for p in space.parse(config["search_space"], config)]
            jobs = [(baseline_worker, (url, name, i, n_trials // n_workers, params)) for i in range(n_workers)]
        ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
        procs = [ctx.Process(target=process, args=(*job, ready, go, results)) for job in jobs]
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=300)
        started = time.time()
        go.set()
        outcomes = [results.get(timeout=900) for _ in procs]
        for p in procs:
            p.join(timeout=60)
    errors = [error for _, error in outcomes if error]
    if errors:
        raise RuntimeError(f"{len(errors)} {mode} worker(s) failed; the first: {errors[0]}")
    trials = optuna.load_study(study_name=name, storage=open_storage(url)).get_trials(deepcopy=False)
    finished = sum(t.state.is_finished() for t in trials)
    if finished != n_trials:
        raise RuntimeError(f"{mode}: {finished} trials finished, expected {n_trials}")
    return max(t for t, _ in outcomes) - started


def sweep_config(
    name: str, n_trials: int, n_workers: int, search_space: dict[str, Any], epochs: int = STEPS
) -> dict[str, Any]:
    return {
        "study": {"name": name, "metric": "val_acc", "n_trials": n_trials},
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "median", **PRUNER},
        "train": {"epochs": epochs},
        "executor": {"name": "local", "workers": n_workers},
        "search_space": search_space,
    }


# ---- backends --------------------------------------------------------------------------------------------


@contextmanager
def backend(name: str, where: str | None = None) -> Iterator[str]:
    if name in ("sqlite", "journal"):
        with tempfile.TemporaryDirectory(dir=where, ignore_cleanup_errors=True) as tmp:
            yield f"sqlite:///{Path(tmp) / 'b.db'}" if name == "sqlite" else f"journal:///{Path(tmp) / 'b.log'}"
        return
    with server_database(PG_ADMIN if name == "postgresql" else MY_ADMIN) as url:
        yield url


@contextmanager
def server_database(admin_url: str) -> Iterator[str]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = make_url(admin_url)
    driver = "postgresql+psycopg2" if admin.drivername.startswith("postgres") else "mysql+pymysql"
    engine = create_engine(admin.set(drivername=driver), isolation_level="AUTOCOMMIT")
    database = f"sweep_bench_{uuid.uuid4().hex[:8]}"
    with engine.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {database}"))
    try:
        yield admin.set(database=database).render_as_string(hide_password=False)
    finally:
        force = " WITH (FORCE)" if driver.startswith("postgresql") else ""
        with engine.connect() as conn:
            conn.execute(text(f"DROP DATABASE {database}{force}"))
        engine.dispose()


@contextmanager
def storage_proxy(url: str, threads: int | None = None, cwd: Path = ROOT) -> Iterator[str]:
    """`sweep storage-proxy URL --port 0` (URL: or a study name) in its own process, as a user runs it, from `cwd`;
    yields the grpc:// URL it prints. Stopped with SIGTERM (as a cluster's job ends) on exit; its exit code must
    be 0."""
    command = [sys.executable, "-m", "sweep.cli", "storage-proxy", url, "--port", "0"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen(command + (["--threads", str(threads)] if threads else []), cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            found = re.search(r"--storage (grpc://\S+)", line)
            if found:
                break
        else:
            raise RuntimeError(f"sweep storage-proxy ended ({proc.wait()}) without serving:\n{''.join(lines)}")
        yield found.group(1)
    finally:
        proc.terminate()
        rest, _ = proc.communicate(timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"sweep storage-proxy exited with {proc.returncode}:\n{rest}")


@contextmanager
def postgres_for(n_workers: int) -> Iterator[str]:
    """The admin URL of a PostgreSQL that takes `n_workers` direct workers at their peaks: SWEEP_TEST_POSTGRES's
    server if its limit allows, else one of the benchmark's own (said on stderr)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(plain_storage(PG_ADMIN))
    with engine.connect() as conn:
        limit = int(conn.execute(text("SHOW max_connections")).scalar_one())
    engine.dispose()
    if limit >= min(GRPC_CONNECTIONS, 3 * n_workers + 10):
        yield PG_ADMIN
        return
    print(f"the PostgreSQL at {PG_ADMIN} allows {limit} connections: starting one with {GRPC_CONNECTIONS}",
          file=sys.stderr, flush=True)
    with own_postgres(GRPC_CONNECTIONS) as admin:
        yield admin


def grpc_point(admin: str, n: int, n_trials: int, ctx: Any, space_name: str, where: str | None) -> tuple[float, float]:
    """(proxy ms, direct ms) per trial: sweep's workers through the proxy, then directly, each on a fresh database."""
    with server_database(admin) as url, storage_proxy(url) as proxied:
        proxy_ms = run("sweep", proxied, n, n_trials, ctx, space_name, where)
    with server_database(admin) as url:
        direct_ms = run("sweep", url, n, n_trials, ctx, space_name, where)
    return proxy_ms, direct_ms


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="fewer trials, 1 and 8 workers")
    size.add_argument("--smoke", action="store_true", help="SQLite and the journal, 1 worker, 3 trials (tests)")
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--workers", default=None, help="worker counts (default 1,8,32; --quick 1,8; --smoke 1)")
    p.add_argument("--dir", default=None, help="where the SQLite or journal file and the trials' folders go "
                   "(default: a temporary folder; a shared file system's mount point measures it)")
    p.add_argument("--space", choices=sorted(SPACES), default="two", help="the space drawn per trial (default two)")
    args = p.parse_args(argv)
    if args.dir is not None and not Path(args.dir).is_dir():
        p.error(f"--dir {args.dir}: not an existing folder (give a mount point of the file system to measure)")
    backends = "sqlite,journal" if args.smoke and args.backends == ",".join(BACKENDS) else args.backends
    workers = [int(n) for n in (args.workers or ("1" if args.smoke else "1,8" if args.quick else "1,8,32")).split(",")]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ctx = mp.get_context("forkserver")  # forked from a process that imported everything and never connected
    ctx.set_forkserver_preload(PRELOAD)
    for name in backends.split(","):
        if name == "grpc":
            counts = [int(n) for n in (args.workers or GRPC_WORKERS).split(",")]
            with postgres_for(max(counts)) as admin:
                for n in counts:
                    n_trials = trials_for(n, args.quick)
                    proxy_ms, direct_ms = grpc_point(admin, n, n_trials, ctx, args.space, args.dir)
                    print(f"{name:10s} {n:2d} workers, {n_trials:3d} trials: proxy {proxy_ms:7.1f} ms/trial, "
                          f"direct PostgreSQL {direct_ms:7.1f} ms/trial", flush=True)
                    point = f"storage_grpc_{n}" + ("" if args.space == "two" else f"_{args.space}")
                    print(bench_line(point, proxy_ms, direct_ms, proxy_ms / direct_ms, "<=1.0"), flush=True)
            continue
        for n in workers:
            n_trials = 3 if args.smoke else trials_for(n, args.quick)
            with backend(name, args.dir) as url:
                sweep_ms = run("sweep", url, n, n_trials, ctx, args.space, args.dir)
                base_ms = run("baseline", url, n, n_trials, ctx, args.space, args.dir)
            print(f"{name:10s} {n:2d} workers, {n_trials:3d} trials: sweep {sweep_ms:7.1f} ms/trial, "
                  f"plain Optuna {base_ms:7.1f} ms/trial", flush=True)
            point = f"storage_{name}_{n}" + ("" if args.space == "two" else f"_{args.space}")
            print(bench_line(point, sweep_ms, base_ms, sweep_ms / base_ms, "<=1.0"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
