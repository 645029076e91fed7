"""Retrying storage calls: which database errors go away by themselves (`is_transient`), and the retry loop
(`call_with_retry`) with its per-process state (`last_outage_end`).

Hand-written because no installed library classifies these errors or retries them: SQLAlchemy flags only a
dropped connection (`DBAPIError.connection_invalidated`, from each dialect's `is_disconnect`), not a deadlock,
lock wait, serialization failure, refused connection, too many connections or busy SQLite file; Optuna's
RDBStorage wraps every failure in StorageInternalError without retrying; and no retry package (tenacity,
backoff) is among sweep's dependencies.
"""

from __future__ import annotations

import errno
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy.exc as sa_exc

from sweep.storage.urls import scrub

_log = logging.getLogger("sweep.storage")  # one logger for the whole package
T = TypeVar("T")

RETRY_S = 600.0  # how long a worker keeps retrying one storage call: a database restart takes seconds to minutes
# What is retried is an allow-list: anything else (a full disk, a query the database cannot run, bad data, a
# refused login, a missing table) fails at once, because retrying it would only hide it for `RETRY_S` seconds.
# MySQL error codes that go away by themselves: lock wait timeout, deadlock, too many connections, server
# shutdown, connection killed, can't connect, server gone, connection lost, disconnected for inactivity, and
# PyMySQL's 0 for a connection it already holds closed.
_MYSQL_TRANSIENT = frozenset({0, 1205, 1213, 1040, 1053, 1927, 2002, 2003, 2006, 2013, 2055, 4031})
# PostgreSQL SQLSTATEs: classes 08 (connection exception) and 40 (serialization failure, deadlock), and lock
# not available (lock_timeout), too many connections, server shutting down or starting up, idle session timeout.
_PG_TRANSIENT_CLASSES = ("08", "40")
_PG_TRANSIENT = frozenset({"55P03", "53300", "57P01", "57P02", "57P03", "57P05"})
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6  # primary result codes (the extended ones carry them in their low byte)
# Errors that come without a code: a connection refused or dropped before the server could say why (libpq
# gives no SQLSTATE for those), a server restarting, SQLite's busy file (Python < 3.11 gives no code).
_TRANSIENT_TEXT = (
    "database is locked",
    "database table is locked",
    "connection refused",
    "server closed the connection",
    "connection already closed",
    "terminating connection",
    "the database system is",
    "not currently accepting connections",
    "could not receive data",
    "could not send data",
    "connection timed out",
    "timeout expired",
    "ssl connection has been closed",
    "connection reset by peer",
    "broken pipe",
    "no route to host",
    "network is unreachable",
    "temporary failure in name resolution",
)


def _first_line(exc: BaseException) -> str:
    code = _grpc_code(exc)
    if code is not None:  # a gRPC error's str() is a multi-line repr: its code and details say it all
        return f"gRPC {code}: {exc.details() or 'no details'}".splitlines()[0]  # type: ignore[attr-defined]
    orig = getattr(exc, "orig", None) or exc.__cause__ or exc
    text = str(orig).strip() or type(orig).__name__
    return text.splitlines()[0]


def _grpc_code(exc: BaseException) -> str | None:
    """The status code's name of a failed gRPC call (a grpc:// storage's), None for any other error."""
    code = getattr(exc, "code", None)
    if not callable(code) or not type(exc).__module__.startswith("grpc"):
        return None
    return getattr(code(), "name", None)


def _db_error(exc: BaseException) -> BaseException | None:
    """The SQLAlchemy error under an Optuna StorageInternalError (which wraps every failed commit), if any."""
    for e in (exc, exc.__cause__, exc.__context__):
        if isinstance(e, (sa_exc.SQLAlchemyError,)):
            return e
    return None


def _mysql_code(exc: BaseException) -> int | None:
    err = _db_error(exc)
    orig = getattr(err, "orig", None)
    args = getattr(orig, "args", ())
    return (
        args[0]
        if args and isinstance(args[0], int) and type(orig).__module__.startswith(("pymysql", "MySQLdb"))
        else None
    )


# A full disk (or quota) does not go away by itself while the workers wait: SQLite's SQLITE_FULL, PostgreSQL's
# 53100 disk_full, MySQL's 1021 disk full and 1114 table full, and ENOSPC/EDQUOT from the file system.
_DISK_FULL_TEXT = ("database or disk is full", "no space left on device", "disk quota exceeded")
_DISK_FULL_CODES = frozenset({1021, 1114})


def is_disk_full(exc: BaseException) -> bool:
    """Whether an error (a storage call's or a file write's) says the disk or the quota is full."""
    for e in (exc, exc.__cause__, exc.__context__, getattr(exc, "orig", None)):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
    err = _db_error(exc)
    if err is None:
        return False
    orig = getattr(err, "orig", None)
    return (
        getattr(orig, "pgcode", None) == "53100"
        or _mysql_code(err) in _DISK_FULL_CODES
        or any(s in _first_line(err).lower() for s in _DISK_FULL_TEXT)
    )


def is_transient(exc: BaseException) -> bool:
    """Whether a storage error may go away by itself: a dropped or refused connection, a server restarting,
    a deadlock, serialization failure or lock wait timeout, a busy SQLite file, a gRPC storage proxy unreachable
    (UNAVAILABLE: restarting, or its connection dropped). Only these are retried.
    """
    if _grpc_code(exc) is not None:  # whatever the proxy's database did, the proxy retried it already
        return _grpc_code(exc) == "UNAVAILABLE"
    err = _db_error(exc)
    if err is None or is_disk_full(err):
        return False
    if isinstance(err, sa_exc.DBAPIError) and err.connection_invalidated:
        return True
    if isinstance(err, sa_exc.TimeoutError):  # pool exhausted for pool_timeout: another thread held on too long
        return True
    code = _mysql_code(err)
    if code is not None:
        return code in _MYSQL_TRANSIENT
    if not isinstance(err, (sa_exc.OperationalError, sa_exc.InterfaceError)):
        return False
    orig = getattr(err, "orig", None)
    sqlstate = getattr(orig, "pgcode", None)
    if sqlstate:
        return sqlstate[:2] in _PG_TRANSIENT_CLASSES or sqlstate in _PG_TRANSIENT
    sqlite_code = getattr(orig, "sqlite_errorcode", None)
    if sqlite_code is not None:
        return sqlite_code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    return any(s in _first_line(err).lower() for s in _TRANSIENT_TEXT)


_retry_state = threading.local()  # nested storage calls (get_all_trials → _get_trials) retry only at the top
_outage_ended = 0.0


def last_outage_end() -> float:
    """When (time.time()) a storage call in this process last succeeded after retries; 0.0 if never.

    For stale-trial recovery: right after an outage every other worker's heartbeat looks old, because none
    could be written; judging staleness before they had time to resume would retry live trials.
    """
    return _outage_ended


def call_with_retry(attempt: Callable[[int], T], what: str, retry_s: float = RETRY_S, url: str = "") -> T:
    """`attempt(n)` (n = 0, 1, …) until it returns, retrying transient storage errors with jittered backoff
    for up to `retry_s` seconds after the first failure; other errors, and the last one, propagate.
    """
    if getattr(_retry_state, "active", False):
        return attempt(0)
    _retry_state.active, _retry_state.what = True, what
    try:
        first_failure, last_log, n = None, float("-inf"), 0
        while True:
            try:
                result = attempt(n)
                if first_failure is not None:
                    global _outage_ended
                    _outage_ended = time.time()
                    waited = time.monotonic() - first_failure
                    _log.warning("storage: %s succeeded after %.1f s of retries", what, waited)
                return result
            except Exception as exc:
                now = time.monotonic()
                first_failure = now if first_failure is None else first_failure
                if not is_transient(exc) or now - first_failure >= retry_s:
                    raise
                delay = min(5.0, 0.1 * 2**n) * random.uniform(0.5, 1.0)
                if now - last_log >= 30:  # the first failure, then one line every 30 s of an outage
                    last_log = now
                    _log.warning(
                        "storage: %s failed (%s); retrying for up to %.0f s",
                        what,
                        scrub(_first_line(exc), url),
                        retry_s - (now - first_failure),
                    )
                time.sleep(delay)
                n += 1
    finally:
        _retry_state.active, _retry_state.what = False, ""


def retrying(base: type, name: str, owner: str) -> Callable[..., Any]:
    """`base.name` wrapped in `call_with_retry` on the instance's `retry_s` and `url`: how a retrying storage
    (`RetryingRDBStorage`, `RetryingGrpcProxy`, named by `owner`) retries the calls it does not rewrite."""
    method = getattr(base, name)

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        return call_with_retry(lambda n: method(self, *args, **kwargs), name, self.retry_s, self.url)

    call.__name__, call.__qualname__, call.__doc__ = name, f"{owner}.{name}", method.__doc__
    return call
