"""Per-trial storage overhead of sweep's worker loop against plain Optuna, on every storage backend.

    python benchmarks/storage_overhead.py [--backends sqlite,postgresql,mariadb,journal] [--workers 1,8,32]

sweep: the launcher enqueues the whole budget as WAITING trials (`sweep.study.top_up`); each worker process
loops `pop_trial` → `report` + `should_prune` per step → `tell` until the budget is used up.
baseline: plain Optuna on the same storage URL opened by Optuna itself (`optuna.load_study(storage=URL)`):
each worker runs its share of the budget as `study.ask()` → `report` + `should_prune` per step → `tell`.

Per-trial overhead = workers × wall time / trials, the time one worker spends per trial (no training: this is
all storage). Workers are processes (forked from a forkserver that never connected) that connect first and
start together. PostgreSQL and MariaDB are the servers at SWEEP_TEST_POSTGRES / SWEEP_TEST_MYSQL (default:
127.0.0.1), each run in a fresh database, dropped afterwards. Each line ends with
`BENCH storage_<backend>_<n> sweep=<ms> baseline=<ms> ratio=<r> goal=<=1.0 pass|fail`.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna

from sweep.storage import open_storage, pop_waiting_trial_id
from sweep.study import pop_trial, top_up

PG_ADMIN = os.environ.get("SWEEP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
MY_ADMIN = os.environ.get("SWEEP_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test")
STEPS = 5
WORKERS = {"sqlite": (1, 8), "journal": (1, 8), "postgresql": (1, 8, 32), "mariadb": (1, 8, 32)}


def trials_for(n_workers: int) -> int:
    """Enough trials per worker to average over, few enough to finish on a 2-core machine; equal shares."""
    return n_workers * max(4, 30 // n_workers)


# ---- one worker process ------------------------------------------------------------------------------


def worker(mode: str, url: str, name: str, share: int, ready: Any, go: Any, results: Any) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        storage = plain_storage(url) if mode == "baseline" else open_storage(url)
        study = optuna.load_study(study_name=name, storage=storage)
    finally:
        ready.put(os.getpid())
    go.wait()
    started, count = time.perf_counter(), 0
    try:
        while mode != "baseline" or count < share:
            trial = pop(study, mode)
            if trial is None:
                break
            for step in range(STEPS):
                trial.report(step / STEPS, step)
                trial.should_prune()
            study.tell(trial, float(trial.number))
            count += 1
    finally:  # the launcher waits for one result per worker, even from a worker that failed
        results.put((count, time.perf_counter() - started))


def pop(study: optuna.Study, mode: str) -> optuna.Trial | None:
    """sweep's pop_trial, the one-transaction pop (`--pop storage`), or plain Optuna's ask."""
    if mode == "baseline":
        return study.ask()
    if mode == "sweep":
        return pop_trial(study)
    trial_id = pop_waiting_trial_id(study)
    return None if trial_id is None else optuna.Trial(study, trial_id)


def plain_storage(url: str) -> Any:
    """What a user of Optuna alone would open: the URL as is (driver named), the journal through its backend."""
    if url.startswith("journal:///"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url[len("journal:///") :]))
    for bare, named in (("postgresql://", "postgresql+psycopg2://"), ("mysql://", "mysql+pymysql://")):
        if url.startswith(bare):
            return named + url[len(bare) :]
    return url


def run(mode: str, url: str, n_workers: int, n_trials: int) -> tuple[float, float]:
    """(wall time per trial per worker in ms, trials per second overall), from the go signal to the last result."""
    name = f"{mode}-{uuid.uuid4().hex[:6]}"
    study = optuna.create_study(study_name=name, storage=open_storage(url))
    if mode != "baseline":
        top_up(study, n_trials)
    ctx = mp.get_context("forkserver")  # a fresh process that never connected, forked per worker: fast starts
    ctx.set_forkserver_preload(["__main__", "psycopg2", "pymysql", "alembic.script", "optuna.storages.journal"])
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    share = n_trials // n_workers
    procs = [ctx.Process(target=worker, args=(mode, url, name, share, ready, go, results)) for _ in range(n_workers)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=300)
    started = time.perf_counter()
    go.set()
    outcomes = [results.get(timeout=600) for _ in procs]
    elapsed = time.perf_counter() - started
    for p in procs:
        p.join(timeout=60)
        if p.exitcode != 0:
            raise RuntimeError(f"a {mode} worker exited with {p.exitcode}")
    done = sum(c for c, _ in outcomes)
    return 1000 * n_workers * elapsed / done, done / elapsed


# ---- backends --------------------------------------------------------------------------------------------


@contextmanager
def backend(name: str) -> Iterator[str]:
    if name in ("sqlite", "journal"):
        with tempfile.TemporaryDirectory() as tmp:
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backends", default="sqlite,postgresql,mariadb,journal")
    p.add_argument("--workers", default="1,8,32", help="worker counts (32 only for the database servers)")
    p.add_argument(
        "--pop",
        choices=("study", "storage"),
        default="study",
        help="sweep's pop: sweep.study.pop_trial (default), or sweep.storage.pop_waiting_trial_id",
    )
    args = p.parse_args(argv)
    sweep_mode = "sweep" if args.pop == "study" else "sweep-storage-pop"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    wanted = {int(n) for n in args.workers.split(",")}
    for name in args.backends.split(","):
        for n in (n for n in WORKERS[name] if n in wanted):
            n_trials = trials_for(n)
            with backend(name) as url:
                sweep_ms, sweep_rate = run(sweep_mode, url, n, n_trials)
                base_ms, base_rate = run("baseline", url, n, n_trials)
            ratio = sweep_ms / base_ms
            print(
                f"{name:10s} {n:2d} workers, {n_trials} trials: sweep ({args.pop} pop) {sweep_ms:7.1f} ms/trial "
                f"({sweep_rate:6.1f} trials/s), plain Optuna {base_ms:7.1f} ms/trial ({base_rate:6.1f} trials/s)  "
                f"BENCH storage_{name}_{n} sweep={sweep_ms:.1f} baseline={base_ms:.1f} ratio={ratio:.2f} "
                f"goal=<=1.0 {'pass' if ratio <= 1.0 else 'fail'}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
