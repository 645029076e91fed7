"""Opening a storage: from a URL to the one storage object of a process, with engine options sized for many
workers, and every failure to open explained as a ConfigError."""

from __future__ import annotations

import itertools
import logging
import os
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
from optuna.storages.journal import JournalFileBackend
from sqlalchemy.engine import make_url

from sweep.schema import ConfigError
from sweep.storage.filesystems import check_sqlite_location
from sweep.storage.journal import SweepJournalStorage
from sweep.storage.optuna_private import engine_of
from sweep.storage.rdb import RetryingRDBStorage
from sweep.storage.remote import SCHEME, open_proxy
from sweep.storage.retry import RETRY_S, _first_line, _mysql_code, is_transient
from sweep.storage.urls import _SERVERS, PASSWORD_ENV, check_not_in_memory, expand_url, mask, scrub

_log = logging.getLogger("sweep.storage")  # one logger for the whole package

SQLITE_TIMEOUT_S = 60  # SQLite busy timeout: several local workers writing at once wait their turn
# Bare URLs pick a driver that sweep installs, whatever SQLAlchemy's default is (2.1 switched to psycopg 3).
_DRIVERS = {
    "postgresql": "postgresql+psycopg2",
    "postgres": "postgresql+psycopg2",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}
_UNREACHABLE_TEXT = (
    "connection refused",
    "timeout expired",
    "timed out",
    "can't connect",
    "could not connect",
    "no route to host",
    "network is unreachable",
    "not currently accepting connections",
    "the database system is",
    "could not translate host name",
    "name or service not known",
)


def engine_options(url: str, connections: int = 1) -> dict[str, Any]:
    """SQLAlchemy engine options for the (expanded) URL: sized for many worker processes, robust to drops.

    One connection per process (each worker is its own single-threaded process) with two on demand (a storage
    proxy serving many workers from its threads asks for `connections`, one per thread, and none on demand); pre-ping
    catches a connection the server closed while the worker trained; recycle beats idle timeouts of servers
    and proxies; connect/TCP keepalive timeouts turn a dead host into an error instead of a hang. Options the
    URL's query already sets win.
    """
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_TIMEOUT_S, "isolation_level": None}}  # see _serialize_sqlite

    given = make_url(url).query
    if url.startswith(("postgres",)):
        defaults: dict[str, Any] = {
            "connect_timeout": 10,
            "application_name": "sweep",
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
        }
    else:
        defaults = {"connect_timeout": 10, "read_timeout": 300, "write_timeout": 300}
    return {
        "pool_size": connections,
        "max_overflow": 2 if connections == 1 else 0,
        "pool_timeout": 60,
        "pool_pre_ping": True,
        "pool_recycle": 1800,
        "connect_args": {k: v for k, v in defaults.items() if k not in given},
    }


def _engine_url(url: str) -> str:
    """A bare postgresql:// or mysql:// URL with the driver sweep installs (psycopg2, PyMySQL)."""
    scheme = url.split("://", 1)[0]
    return _DRIVERS[scheme] + url[len(scheme) :] if scheme in _DRIVERS else url


def open_storage(
    url: str, *, retry_s: float = RETRY_S, wait_s: float = 0.0, connections: int = 1
) -> optuna.storages.BaseStorage:
    """One storage object per process, from the unexpanded URL; every failure to open is a clear ConfigError.

    SQL storages retry each later call on a dropped connection for up to `retry_s` seconds, a grpc:// proxy
    each call while the proxy is unreachable. `wait_s` > 0 also retries opening while the server (or proxy) is
    unreachable (a worker starting during a restart); a refused login or a missing database fails at once. The
    launcher keeps `wait_s=0`, so a bad URL or password is reported before any job is submitted.
    `connections`: the SQL pool's size, for a process that calls from several threads at once (the proxy).
    """
    expanded = expand_url(url)
    if expanded.startswith(SCHEME):  # the proxy waits for itself: it answers, or says so within seconds
        return open_proxy(expanded, retry_s=retry_s, wait_s=wait_s)
    deadline = time.monotonic() + wait_s
    for attempt in itertools.count():
        try:
            return _open(expanded, retry_s, connections)
        except ConfigError:
            raise
        except Exception as exc:  # connection refused, bad credentials, unreadable file, missing driver, …
            left = deadline - time.monotonic()
            if left <= 0 or not is_transient(exc) or _is_login_problem(exc):
                reason = _explain(exc, url, expanded)
                raise ConfigError(f"cannot open storage {mask(url)}: {reason}", key="storage") from None
            if attempt == 0:
                reason = scrub(_first_line(exc), expanded)
                _log.warning("storage %s not reachable (%s); waiting up to %.0f s", mask(url), reason, left)
            time.sleep(min(left, 0.25 * 2**attempt, 5.0))
    raise AssertionError("unreachable")


def _create_sqlite(path: Path) -> None:
    """A new study file appears whole: schema and WAL mode made in a private file, then linked into place.

    Two processes creating the same file at once (a launch and a `sweep status`, two launches) each ran
    Optuna's CREATE TABLEs on it: one failed with "table … already exists", or a reader kept seeing an
    empty study table while the launch wrote its study. A hard link fails if the file exists, so exactly one
    creator wins; the others open the winner's file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    try:
        with sqlite3.connect(tmp, timeout=SQLITE_TIMEOUT_S) as db:  # WAL is a property of the file: set once
            db.execute("PRAGMA journal_mode=WAL")
        made = RetryingRDBStorage(f"sqlite:///{tmp}", engine_kwargs=engine_options(f"sqlite:///{tmp}"))
        engine_of(made).dispose()  # the last connection closed: SQLite checkpoints and removes its -wal file
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process created it first: use theirs
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
            leftover.unlink(missing_ok=True)


def _open(url: str, retry_s: float, connections: int = 1) -> optuna.storages.BaseStorage:
    check_not_in_memory(url)
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        path.parent.mkdir(parents=True, exist_ok=True)
        check_sqlite_location(path.parent)
        if not path.exists():
            _create_sqlite(path)
        return RetryingRDBStorage(url, engine_kwargs=engine_options(url), retry_s=retry_s)
    if url.startswith(_SERVERS):
        engine_url = _engine_url(url)
        options = engine_options(engine_url, connections)
        return RetryingRDBStorage(engine_url, engine_kwargs=options, retry_s=retry_s)
    if url.startswith("journal:///"):
        path = Path(url[len("journal:///") :])
        path.parent.mkdir(parents=True, exist_ok=True)
        return SweepJournalStorage(JournalFileBackend(str(path)))
    raise ConfigError(
        f"unknown storage URL {mask(url)}; accepted: sqlite:///PATH, postgresql://…, mysql+pymysql://…, "
        "journal:///PATH, grpc://HOST:PORT",
        key="storage",
    )

def _explain(exc: BaseException, url: str, expanded: str) -> str:
    """Why opening failed, in words that say what to fix; never the password."""
    detail = scrub(_first_line(exc), url, expanded)
    low = detail.lower()
    if isinstance(exc, ImportError):
        return f"no database driver for {url.split('://')[0]}:// ({detail}); pip install psycopg2-binary or PyMySQL"
    if _is_login_problem(exc):
        return (
            f"the server refused the login ({detail}); check the user name and password (the password may "
            f"come from the environment: ${{{PASSWORD_ENV}}} in the URL, or {PASSWORD_ENV})"
        )
    if "does not exist" in low or "unknown database" in low:
        return f"{detail}; create the database first"
    if any(s in low for s in _UNREACHABLE_TEXT):
        return f"cannot reach the database server ({detail}); is it running, and reachable from this machine?"
    return detail


def _is_login_problem(exc: BaseException) -> bool:
    low = _first_line(exc).lower()
    return any(s in low for s in ("authentication failed", "access denied", "no pg_hba.conf entry")) or (
        _mysql_code(exc) in (1045, 1698)
    )
