"""A pytest plugin that runs Optuna's own storage tests against sweep's storages (`test_storage_contract.py`).

Optuna's tests draw their storages from `optuna.testing.storages`: the `STORAGE_MODES` lists parametrize them
and `StorageSupplier(mode)` builds one storage per test. Loaded with ``-p optuna_contract_plugin`` before
Optuna's test modules are imported, this plugin puts sweep's modes in those lists (instead of Optuna's own,
which Optuna tests itself), and teaches `StorageSupplier` to build them as sweep's commands do: `open_storage`
for the launcher's view, `worker_cache` over it for a worker's; a test that names one of Optuna's own
SQLite or journal modes gets sweep's. Optuna's tests and assertions are untouched.

Modes (SWEEP_CONTRACT_MODES, comma-separated, picks some): sweep_sqlite, sweep_cached_sqlite,
sweep_postgresql, sweep_cached_postgresql, sweep_journal. SWEEP_CONTRACT_OTHERS=False leaves out the tests with no
sweep mode among their parameters (for a second run beside the first, which has them). PostgreSQL runs in fresh
databases on the server of SWEEP_TEST_POSTGRES (one per storage open at once), emptied before each test and
dropped at the end.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from typing import Any

import pytest

PG_ADMIN = os.environ.get("SWEEP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
ALL_MODES = ["sweep_sqlite", "sweep_cached_sqlite", "sweep_postgresql", "sweep_cached_postgresql", "sweep_journal"]
_HEARTBEAT = ("sweep_sqlite", "sweep_cached_sqlite", "sweep_postgresql", "sweep_cached_postgresql")
# Optuna's modes that a test names itself (StorageSupplier("sqlite")), not through the lists: sweep's instead
_SUBSTITUTES = {"sqlite": "sweep_sqlite", "cached_sqlite": "sweep_cached_sqlite", "journal": "sweep_journal"}
_COUNTS = pytest.StashKey[dict]()
_databases: list[str] = []  # the session's PostgreSQL databases, once made
_free: list[str] = []  # those no storage of the running test uses


def _modes() -> list[str]:
    chosen = [m for m in os.environ.get("SWEEP_CONTRACT_MODES", ",".join(ALL_MODES)).split(",") if m]
    unknown = set(chosen) - set(ALL_MODES)
    if unknown:
        raise pytest.UsageError(f"SWEEP_CONTRACT_MODES: unknown {sorted(unknown)}; known: {ALL_MODES}")
    return chosen


def _admin_sql(sql: str, database: str | None = None) -> None:
    import psycopg2
    from sqlalchemy.engine import make_url

    u = make_url(PG_ADMIN)
    conn = psycopg2.connect(
        host=u.host, port=u.port, user=u.username, password=u.password, dbname=database or u.database
    )
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def _postgresql_url(supplier: Any) -> str:
    """A database of the session no other storage of this test uses (copy_study opens two), emptied: Optuna's
    tests expect a storage with no studies."""
    from sqlalchemy.engine import make_url

    if _free:
        supplier._sweep_database = _free.pop()  # the schema stays (made by the first storage); the rows go
        _admin_sql("SET lock_timeout = '30s'; DO $$ BEGIN IF to_regclass('studies') IS NOT NULL THEN "
                   "TRUNCATE studies CASCADE; END IF; END $$", supplier._sweep_database)
    else:
        supplier._sweep_database = f"sweep_contract_{uuid.uuid4().hex[:10]}"
        _admin_sql(f"CREATE DATABASE {supplier._sweep_database}")
        _databases.append(supplier._sweep_database)
    return make_url(PG_ADMIN).set(database=supplier._sweep_database).render_as_string(hide_password=False)


def _sweep_storage(supplier: Any) -> Any:
    """The storage of a sweep mode, as sweep opens it (extra arguments: RDBStorage's, e.g. heartbeat_interval)."""
    from sweep.storage import RetryingRDBStorage, open_storage, worker_cache

    mode, extra = supplier.storage_specifier, supplier.extra_args
    if mode == "sweep_journal":
        supplier._sweep_dir = tempfile.mkdtemp(prefix="sweep-contract-")
        return open_storage(f"journal:///{supplier._sweep_dir}/journal.log")
    if "sqlite" in mode:
        supplier._sweep_dir = tempfile.mkdtemp(prefix="sweep-contract-")
        url = f"sqlite:///{supplier._sweep_dir}/study.db"
    else:
        url = _postgresql_url(supplier)
    storage = open_storage(url)
    if extra:
        storage.engine.dispose()
        storage = RetryingRDBStorage(storage.url, engine_kwargs=storage.engine_kwargs, **extra)
    return worker_cache(storage) if "cached" in mode else storage


def pytest_configure(config: pytest.Config) -> None:
    import optuna.testing.storages as supplied

    modes = _modes()
    supplied.STORAGE_MODES[:] = modes
    supplied.STORAGE_MODES_HEARTBEAT[:] = [m for m in modes if m in _HEARTBEAT]
    enter, leave = supplied.StorageSupplier.__enter__, supplied.StorageSupplier.__exit__

    def __enter__(self: Any) -> Any:
        self.storage_specifier = _SUBSTITUTES.get(self.storage_specifier, self.storage_specifier)
        if not str(self.storage_specifier).startswith("sweep_"):
            return enter(self)
        self.storage = _sweep_storage(self)
        return self.storage

    def __exit__(self: Any, *exc: Any) -> None:
        leave(self, *exc)  # disposes an RDBStorage's engine, also under a _CachedStorage
        if getattr(self, "_sweep_dir", None):
            shutil.rmtree(self._sweep_dir, ignore_errors=True)
        if getattr(self, "_sweep_database", None):
            _free.append(self._sweep_database)

    supplied.StorageSupplier.__enter__, supplied.StorageSupplier.__exit__ = __enter__, __exit__


@pytest.hookimpl(trylast=True)  # after -k has deselected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Count the tests per sweep mode, for the summary `test_storage_contract.py` checks and reports; leave out
    those with no mode where SWEEP_CONTRACT_OTHERS says so."""
    counts: dict[str, int] = {}
    others = os.environ.get("SWEEP_CONTRACT_OTHERS", "True") != "False"
    kept, left = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        modes = {v for v in params.values() if isinstance(v, str) and v.startswith("sweep_")}
        if not modes and not others:
            left.append(item)
            continue
        kept.append(item)
        for mode in modes or {"other (no sweep mode among its parameters)"}:
            counts[mode] = counts.get(mode, 0) + 1
    if left:
        config.hook.pytest_deselected(items=left)
        items[:] = kept
    config.stash[_COUNTS] = counts


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    for mode, n in sorted(config.stash.get(_COUNTS, {}).items()):
        terminalreporter.write_line(f"sweep contract: {mode}: {n} tests")


def pytest_unconfigure(config: pytest.Config) -> None:
    while _databases:
        _admin_sql(f'DROP DATABASE IF EXISTS "{_databases.pop()}" WITH (FORCE)')
