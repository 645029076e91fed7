"""Hundreds of workers on one database: `sweep storage-proxy`, grpc:// storage URLs, and the launch's check of the
database server's free connections.

The server with few connections is a PostgreSQL of the test's own (max_connections 40, benchmarks/_postgres.py);
the 96 workers run sweep's real worker path with the training replaced (benchmarks/storage_overhead.py's
`sweep_worker`), forked from a forkserver that imported everything once. The other tests put the proxy in front
of a fresh database on the shared server (test_storage's `pg` fixture) and reuse test_storage's many-worker
drain, so the same assertions hold through the proxy as directly.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import queue
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import TINY, sweep_cli
from optuna.trial import TrialState
from sqlalchemy import text
from test_storage import PG_ADMIN, Server, _server, assert_exact, report, run_workers

from sweep.schema import ConfigError
from sweep.search.study import VOID, pop_trial, recover_stale, retry, top_up
from sweep.storage import open_storage
from sweep.storage.limits import server_connections
from sweep.storage.optuna_private import proxy_server, storage_of, trial_id_of
from sweep.storage.proxy import THREADS, serve
from sweep.storage.remote import RetryingGrpcProxy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import storage_overhead  # noqa: E402  (benchmarks/ on the path: the benchmark's worker machinery, reused)
from _postgres import free_port, own_postgres  # noqa: E402


@pytest.fixture
def pg() -> Iterator[Server]:
    """A fresh database on the shared PostgreSQL (test_storage's)."""
    yield from _server(PG_ADMIN)


@pytest.fixture(scope="module")
def small_pg() -> Iterator[Server]:
    """A PostgreSQL of this module's own that takes 40 connections, as a small shared server does."""
    with own_postgres(40) as admin:
        server = Server(admin, f"sweep_g_{uuid.uuid4().hex[:8]}")
        server.sql(f"CREATE DATABASE {server.database}")
        yield server


@contextmanager
def proxy(url: str, port: int = 0, threads: int = 4, stop: threading.Event | None = None) -> Iterator[str]:
    """`serve` (what `sweep storage-proxy` runs) in a thread of this process; yields the grpc:// URL it prints."""
    stop = stop or threading.Event()
    given: queue.Queue = queue.Queue()

    def run() -> None:
        try:
            serve(url, "127.0.0.1", port, threads, out=io.StringIO(), stop=stop, ready=given.put)
        except BaseException as exc:
            given.put(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    first = given.get(timeout=60)
    if isinstance(first, BaseException):
        raise first
    try:
        yield first
    finally:
        stop.set()
        thread.join(timeout=60)


@contextmanager
def optunas_own_proxy(url: str) -> Iterator[str]:
    """Optuna's proxy server alone, without sweep's own calls (as `run_grpc_proxy_server` serves it): the workers
    claim through Optuna's protocol, a compare-and-set per claim."""
    server, port = proxy_server(open_storage(url, connections=4), "127.0.0.1", 0, 4)
    server.start()
    try:
        yield f"grpc://127.0.0.1:{port}"
    finally:
        server.stop(5).wait()


# ---- the connection check ---------------------------------------------------------------------------------


def test_a_launch_with_more_workers_than_free_connections_is_refused_before_anything_is_stored(
    small_pg: Server, tmp_path: Path
) -> None:
    study = f"wide_{uuid.uuid4().hex[:6]}"
    (tmp_path / "wide.yaml").write_text(yaml.safe_dump({**TINY, "study": {"name": study, "n_trials": 96}}))
    url = small_pg.url()
    run = sweep_cli("launch", "wide.yaml", "--workers", "96", "--storage", url, cwd=tmp_path)
    assert run.returncode == 2, run.stdout + run.stderr
    message = run.stderr
    assert "96 workers need 96 connections" in message and "PostgreSQL max_connections 40" in message, message
    assert "3 reserved for superusers" in message and "free" in message, message
    assert f"sweep storage-proxy {url} --host 0.0.0.0 --port 13000" in message, message
    assert "--storage grpc://" in message, message
    assert optuna.get_all_study_names(open_storage(url)) == []  # the study was neither created nor changed
    assert not (tmp_path / "studies" / study / "logs").exists()  # and no worker was started


def test_the_connection_check_reads_mariadbs_limit_too(tmp_path: Path) -> None:
    storage = open_storage(storage_overhead.MY_ADMIN)
    found = server_connections(storage)
    with storage.engine.connect() as conn:
        limit = conn.execute(text("SELECT @@max_connections")).scalar_one()
    assert found is not None and found.server in ("MariaDB", "MySQL") and found.limit == limit
    assert 1 <= found.in_use < found.limit and found.free == found.limit - found.in_use
    assert server_connections(open_storage(f"sqlite:///{tmp_path / 'x.db'}")) is None  # no server, no limit


# ---- 96 workers through the proxy ------------------------------------------------------------------------------


def test_96_workers_share_one_budget_through_the_proxy_on_a_server_of_40_connections(small_pg: Server) -> None:
    """The launch above was refused; through `sweep storage-proxy` (its own process, as a user runs it) the same
    server serves 96 concurrent workers: budget exact, no error, a handful of server connections."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["storage_overhead", *storage_overhead.PRELOAD[1:]])
    name, budget = f"many_{uuid.uuid4().hex[:6]}", 96
    server = Server(small_pg.admin_url, f"sweep_g_{uuid.uuid4().hex[:8]}")  # its own database: only the proxy in it
    server.sql(f"CREATE DATABASE {server.database}")
    peak, stop = [0], threading.Event()

    def watch() -> None:
        while not stop.wait(0.2):
            peak[0] = max(peak[0], server.connections())

    watcher = threading.Thread(target=watch, daemon=True)
    with storage_overhead.storage_proxy(server.url()) as url:
        watcher.start()
        try:
            ms = storage_overhead.run("sweep", url, 96, budget, ctx, name=name)  # raises on any worker's error
        finally:
            stop.set()
            watcher.join()
        trials = optuna.load_study(study_name=name, storage=open_storage(url)).get_trials()
    assert [t.number for t in trials] == list(range(budget))  # none doubled, none skipped, none more
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert all(VOID not in t.user_attrs and "fail_reason" not in t.user_attrs for t in trials)
    workers = len({t.user_attrs["worker"] for t in trials})
    assert workers > 1  # the workers did share the budget
    assert 1 <= peak[0] <= THREADS, peak  # the proxy's pool, whatever the number of workers
    print(f"\n96 workers through the proxy: {budget} trials run by {workers} of them, {ms:.0f} ms per trial per "
          f"worker, peak server connections {peak[0]} (max_connections 40)")


# ---- sweep's guarantees through the proxy ---------------------------------------------------------------------


@pytest.mark.parametrize("calls", ["sweep", "optuna"])
def test_8_workers_share_one_budget_through_the_proxy(calls: str, pg: Server) -> None:
    """Exact budget, one claim per waiting trial, every report and value stored: through sweep's own calls (the
    pop in one transaction) and through Optuna's protocol alone (a compare-and-set per claim on the database)."""
    with (proxy(pg.url()) if calls == "sweep" else optunas_own_proxy(pg.url())) as url:
        assert open_storage(url).extras == (calls == "sweep")
        run = run_workers(url, "many", n_workers=8, budget=32, server=pg)
    assert_exact(run, budget=32)
    assert run.peak_connections <= 4 + 1  # the proxy's threads (and this process's direct check of the budget)
    report(f"grpc proxy ({calls} calls)", run)


def test_a_handed_back_trial_is_retried_once_and_a_stale_one_recovered_through_the_proxy(
    pg: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sweep.search.study.last_outage_end", lambda: 0.0)  # no earlier test's outage counts here
    with proxy(pg.url()) as url:
        study = optuna.create_study(study_name="back", storage=open_storage(url))
        assert top_up(study, 2) == 2
        trial = pop_trial(study, lambda n: {"trial_dir": f"/x/{n}"})
        trial.suggest_float("lr", 0.1, 1.0)
        frozen = storage_of(study).get_trial(trial_id_of(trial))
        assert frozen.user_attrs["trial_dir"] == "/x/0" and frozen.state == TrialState.RUNNING
        assert retry(study, frozen, "interrupted", max_retries=2) == 0
        assert retry(study, frozen, "interrupted", max_retries=2) is None  # a second hand-back: no second retry
        other = pop_trial(study)
        storage_of(study).set_trial_user_attr(trial_id_of(other), "heartbeat", time.time() - 900)
        assert recover_stale(study, stale_after=60, max_retries=2) == [other.number]
        trials = optuna.load_study(study_name="back", storage=open_storage(pg.url())).get_trials()
    counted = [t for t in trials if VOID not in t.user_attrs]
    assert [t.state for t in trials[:2]] == [TrialState.FAIL, TrialState.FAIL]
    assert [t.state for t in counted] == [TrialState.WAITING, TrialState.WAITING] and len(trials) == 4
    assert counted[0].system_attrs["fixed_params"] == {"lr": trials[0].params["lr"]}  # the same params again
    assert counted[0].user_attrs["sweep_resume_from"] == "/x/0" and counted[0].user_attrs["sweep_retry_of"] == 0


def test_a_database_restart_behind_the_proxy_is_retried_by_the_proxy(pg: Server) -> None:
    with proxy(pg.url()) as url:
        study = optuna.create_study(study_name="restart", storage=open_storage(url, retry_s=5))
        top_up(study, 2)
        trial = pop_trial(study)
        pg.refuse_connections_for(2.0)  # every session killed, new ones refused: a restart as the proxy sees it
        started = time.monotonic()
        trial.report(0.5, 0)  # the worker's side gives up after 5 s; the proxy's storage waits for the server
        study.tell(trial, 1.0)
        assert time.monotonic() - started > 1.5
        assert pop_trial(study).number == 1
    (done, running) = optuna.load_study(study_name="restart", storage=open_storage(pg.url())).get_trials()
    assert done.state == TrialState.COMPLETE and done.value == 1.0 and done.intermediate_values == {0: 0.5}
    assert running.state == TrialState.RUNNING


def test_a_proxy_restart_is_retried_by_the_workers(pg: Server) -> None:
    port = free_port()
    first = threading.Event()
    with proxy(pg.url(), port=port, stop=first) as url:
        study = optuna.create_study(study_name="proxy", storage=open_storage(url, retry_s=60))
        top_up(study, 2)
        trial = pop_trial(study)
    restarted, done = threading.Event(), threading.Event()

    def restart() -> None:
        time.sleep(1.5)  # not a synchronization: the worker's calls below wait for the proxy however long it takes
        with proxy(pg.url(), port=port, stop=done):
            restarted.set()
            done.wait()

    thread = threading.Thread(target=restart, daemon=True)
    thread.start()
    try:
        trial.report(0.5, 0)  # the proxy is gone: retried until it is back
        assert restarted.is_set()
        trial.suggest_float("x", 0.0, 1.0)  # a trial the new proxy's cache never read
        study.tell(trial, 2.0)
        first = study.get_trials()[0]
    finally:
        done.set()
        thread.join(timeout=60)
    assert first.value == 2.0 and first.intermediate_values == {0: 0.5} and "x" in first.params


# ---- bad input ----------------------------------------------------------------------------------------------


def test_an_unreachable_or_wrong_proxy_is_exit_2_naming_it(home: Path) -> None:
    nothing = f"grpc://127.0.0.1:{free_port()}"
    run = sweep_cli("status", "x", "--storage", nothing, cwd=home, timeout=60)
    assert run.returncode == 2 and nothing in run.stderr and "is `sweep storage-proxy` running" in run.stderr
    database = "grpc://127.0.0.1:5432"  # PostgreSQL's port: something listens, not a proxy
    run = sweep_cli("status", "x", "--storage", database, cwd=home, timeout=60)
    assert run.returncode == 2 and database in run.stderr and "not a gRPC storage proxy" in run.stderr, run.stderr
    run = sweep_cli("status", "x", "--storage", "grpc://login1", cwd=home, timeout=60)
    assert run.returncode == 2 and "grpc://HOST:PORT" in run.stderr
    with pytest.raises(ConfigError, match="journal cannot be served"):
        serve(f"journal:///{home}/j.log", port=0, stop=threading.Event())
    with pytest.raises(ConfigError, match="is a storage proxy already"):
        serve(nothing, port=0, stop=threading.Event())


def test_storage_proxy_command_serves_until_sigterm(home: Path) -> None:
    """The command as a user runs it, on the default SQLite of a study name: prints the URL, serves, stops on
    SIGTERM with exit 0."""
    with storage_overhead.storage_proxy("demo", cwd=home) as url:  # raises if its exit code is not 0
        storage = open_storage(url)
        assert isinstance(storage, RetryingGrpcProxy) and storage.extras
        optuna.create_study(study_name="demo", storage=storage)
    assert optuna.get_all_study_names(open_storage(f"sqlite:///{home}/studies/demo/study.db")) == ["demo"]


