"""SQL storages (SQLite, PostgreSQL, MySQL): Optuna's RDBStorage with every call retried, one-transaction
claims and batched attribute writes, and SQLite's writers serialized."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from sweep.storage.retry import RETRY_S, _retry_state, call_with_retry

_log = logging.getLogger("sweep.storage")  # one logger for the whole package


# Every method of RDBStorage that talks to the database, including the private ones Optuna's _CachedStorage
# calls directly. Each opens its own session, so calling it again after a rollback is safe.
_RETRIED = (
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "_create_new_trial",
    "set_trial_param",
    "_set_trial_param",
    "get_trial_param",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number",
    "get_trial",
    "get_all_trials",
    "get_best_trial",
    "_get_best_trial_id",
    "record_heartbeat",
    "_get_stale_trial_ids",
)


class RetryingRDBStorage(RDBStorage):
    """Optuna's RDBStorage whose every database call survives dropped connections and server restarts.

    What Optuna 5.0 does by itself: only `_create_new_trial` retries (5 times, 0–2 s apart, on any
    StorageInternalError — meant for deadlocks); every other call turns a dropped connection into a
    StorageInternalError that ends the worker, and pool_pre_ping is on by default for MySQL only. This class
    retries every call on transient errors (`is_transient`) for `retry_s` seconds.

    A write whose COMMIT was sent but whose answer was lost is the one ambiguous case. Finishing a trial
    (`tell`) is reconciled: if the retry finds the trial already finished with the state and values it was
    writing, that is success, not UpdateFinishedTrialError — no trial is counted twice. A lost answer to the
    claim of a WAITING trial may leave that trial RUNNING with no worker (logged); it sends no heartbeat, so
    stale-trial recovery hands it back.
    """

    def __init__(self, url: str, *, retry_s: float = RETRY_S, **kwargs: Any) -> None:
        self.retry_s = retry_s
        self._waiting: dict[int, dict[int, optuna.trial.FrozenTrial]] = {}  # study id → trial id → trial
        self._waiting_lock = threading.Lock()
        self._closing: dict[int, dict[str, Any]] = {}  # trial id → attributes written when it finishes
        super().__init__(url, **kwargs)
        self._serialize_sqlite()

    def _serialize_sqlite(self) -> None:
        """One SQLite transaction per storage call that writes, holding the write lock from its start.

        SQLite ignores Optuna's SELECT … FOR UPDATE, and pysqlite only begins a transaction at the first
        write, so Optuna's read-then-write steps raced between processes: two workers could both claim the
        same WAITING trial (seen with plain Optuna at 8 local workers). BEGIN IMMEDIATE makes a writing call
        wait (up to the busy timeout) for the previous writer, then read and write under one lock.
        """
        if self.engine.dialect.name == "sqlite":
            from sqlalchemy import event

            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", _sqlite_begin)
            self.engine.dispose()  # the connection Optuna opened to set up the schema predates the listeners

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        del state["_waiting_lock"]
        state["_waiting"], state["_closing"] = {}, {}
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        state["_waiting_lock"] = threading.Lock()
        super().__setstate__(state)
        self._serialize_sqlite()

    def _get_trials(
        self, study_id: int, states: Any, included_trial_ids: set[int], trial_id_greater_than: int
    ) -> list[optuna.trial.FrozenTrial]:
        """Optuna's incremental read, minus re-reading WAITING trials that are still WAITING.

        Optuna's cache re-reads every unfinished trial on every `get_trials` (each pruning check, each sample),
        and sweep enqueues its whole budget as WAITING trials: a budget of 1000 meant 1000 trials with all their
        attributes loaded per epoch per worker. A WAITING trial only changes together with its state (popped,
        voided, finished), so one cheap (id, state) query decides which trials need their full row again.
        """
        return call_with_retry(
            lambda n: self._get_trials_once(study_id, states, included_trial_ids, trial_id_greater_than),
            "_get_trials",
            self.retry_s,
            self.url,
        )

    def _get_trials_once(
        self, study_id: int, states: Any, included: set[int], greater: int
    ) -> list[optuna.trial.FrozenTrial]:
        if states is not None:
            return RDBStorage._get_trials(self, study_id, states, included, greater)
        import sqlalchemy
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session
        from sqlalchemy import orm

        model = models.TrialModel
        older = {i for i in included if i <= greater}
        with self._waiting_lock:
            cached = self._waiting.setdefault(study_id, {})
            for i in [i for i in cached if i <= greater and i not in older]:  # finished, as Optuna's cache knows
                del cached[i]
            wanted = model.trial_id > greater
            if older:
                wanted = sqlalchemy.or_(model.trial_id.in_(older), wanted)
            if cached:  # the same query as Optuna's, minus the cached WAITING trials that are still WAITING
                still_waiting = sqlalchemy.and_(model.trial_id.in_(cached), model.state == TrialState.WAITING)
                wanted = sqlalchemy.and_(wanted, sqlalchemy.not_(still_waiting))
            with _create_scoped_session(self.scoped_session) as session:
                query = session.query(model).filter(model.study_id == study_id, wanted).order_by(model.trial_id)
                for relation in ("params", "values", "user_attributes", "system_attributes", "intermediate_values"):
                    query = query.options(orm.selectinload(getattr(model, relation)))
                loaded = [self._build_frozen_trial_from_trial_model(t) for t in query.all()]
                if not loaded:  # a trial row proves its study exists; without one, ask (a deleted study raises)
                    models.StudyModel.find_or_raise_by_id(study_id, session)
            for t in loaded:
                cached.pop(t._trial_id, None)
            kept = list(cached.values())  # not read again: still WAITING, so unchanged
            cached.update((t._trial_id, t) for t in loaded if t.state == TrialState.WAITING)
        return sorted(kept + loaded, key=lambda t: t._trial_id)

    def set_trial_user_attrs(self, trial_id: int, attrs: Mapping[str, Any]) -> None:
        """Several user attributes of one trial in one transaction (upserts: a retry rewrites the same values)."""
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        def attempt(n: int) -> None:
            with _create_scoped_session(self.scoped_session, True) as session:
                trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
                self.check_trial_is_updatable(trial_id, trial.state)
                self._upsert_user_attrs(session, trial_id, attrs)

        call_with_retry(attempt, "set_trial_user_attrs", self.retry_s, self.url)

    def _upsert_user_attrs(self, session: Any, trial_id: int, attrs: Mapping[str, Any]) -> None:
        """Optuna's attribute upsert (INSERT … ON CONFLICT / ON DUPLICATE KEY UPDATE), executed once for all rows.

        One statement whatever the keys, run with a list of rows: SQLAlchemy compiles it once per process (a
        multi-row VALUES clause would be compiled anew for every set of keys, ~5 ms each here)."""
        import json

        from optuna.storages._rdb import models
        from sqlalchemy.dialects import mysql, postgresql, sqlite

        model = models.TrialUserAttributeModel
        rows = [{"trial_id": trial_id, "key": key, "value_json": json.dumps(value)} for key, value in attrs.items()]
        dialect = self.engine.dialect.name
        if not rows:
            return
        if dialect in ("mysql", "mariadb"):
            stmt = mysql.insert(model)
            session.execute(stmt.on_duplicate_key_update(value_json=stmt.inserted.value_json), rows)
        elif dialect == "postgresql" or dialect == "sqlite" and sqlite3.sqlite_version_info >= (3, 24, 0):
            stmt = (postgresql if dialect == "postgresql" else sqlite).insert(model)
            conflict = {"index_elements": [model.trial_id, model.key], "set_": {"value_json": stmt.excluded.value_json}}
            session.execute(stmt.on_conflict_do_update(**conflict), rows)
        else:
            for key, value in attrs.items():
                self._set_trial_attr_without_commit(session, model, trial_id, key, value)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        def attempt(n: int) -> bool:
            try:
                closing = self._closing.get(trial_id) if state.is_finished() else None
                if state == TrialState.RUNNING and values is None:
                    done = self._claim(trial_id)
                elif closing:
                    done = self._finish(trial_id, state, values, closing)
                else:
                    done = RDBStorage.set_trial_state_values(self, trial_id, state, values)
            except optuna.exceptions.UpdateFinishedTrialError:
                if n > 0 and _already_written(RDBStorage.get_trial(self, trial_id), state, values):
                    return True
                raise
            if n > 0 and not done and state == TrialState.RUNNING:
                _log.warning(
                    "storage: the claim of trial id %d may have committed before the connection dropped; "
                    "if so it stays RUNNING without a worker",
                    trial_id,
                )
            return done

        return call_with_retry(attempt, "set_trial_state_values", self.retry_s, self.url)

    def stage_closing_attrs(self, trial_id: int, attrs: Mapping[str, Any] | None) -> None:
        """Attributes to write in the transaction that finishes the trial (None: forget them); see `tell_with`."""
        if attrs is None:
            self._closing.pop(trial_id, None)
        else:
            self._closing[trial_id] = dict(attrs)

    def _finish(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None, attrs: Mapping[str, Any]
    ) -> bool:
        """`RDBStorage.set_trial_state_values` for a finishing state, with the trial's closing attributes."""
        import sqlalchemy.exc
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        try:
            with _create_scoped_session(self.scoped_session) as session:
                trial = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
                self.check_trial_is_updatable(trial_id, trial.state)
                self._upsert_user_attrs(session, trial_id, attrs)
                for objective, v in enumerate(values or ()):
                    self._set_trial_value_without_commit(session, trial, objective, v)
                trial.state = state
                trial.datetime_complete = datetime.now()
        except sqlalchemy.exc.IntegrityError:
            return False
        return True

    def pop_waiting_trial_id(
        self, study_id: int, attrs: Callable[[int], Mapping[str, Any]] | None = None
    ) -> int | None:
        """Claim the oldest WAITING trial of the study (→ RUNNING) in one transaction; None if there is none.
        `attrs(number)`: user attributes written in the same transaction.

        Optuna's own pop tries the WAITING trials one by one, each a transaction that fails when another
        worker was faster, and all workers try them in the same order: with 32 workers on PostgreSQL that was
        ~10 claims (and twice the client CPU) per trial popped. Here one locking read takes the first trial no
        other worker is claiming (SKIP LOCKED where the server has it; SQLite serializes writers anyway).
        """
        return call_with_retry(
            lambda n: self._pop_once(study_id, attrs), "pop_waiting_trial_id", self.retry_s, self.url
        )

    def _pop_once(self, study_id: int, attrs: Callable[[int], Mapping[str, Any]] | None) -> int | None:
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        model = models.TrialModel
        with _create_scoped_session(self.scoped_session) as session:
            if self.engine.dialect.name in ("mysql", "mariadb"):  # InnoDB's REPEATABLE READ would keep every
                # row the locking read passes over locked (the finished trials before the first WAITING one)
                session.connection(execution_options={"isolation_level": "READ COMMITTED"})
            query = session.query(model).filter(model.study_id == study_id, model.state == TrialState.WAITING)
            trial = query.order_by(model.trial_id).with_for_update(skip_locked=self._skip_locked()).first()
            if trial is None:
                return None
            trial.state = TrialState.RUNNING
            trial.datetime_start = datetime.now()
            if attrs is not None:
                self._upsert_user_attrs(session, trial.trial_id, attrs(trial.number))
            return trial.trial_id

    def _claim(self, trial_id: int) -> bool:
        """WAITING → RUNNING, as Optuna does it, except that a trial another worker is claiming right now is
        skipped (SKIP LOCKED) instead of waited for, only to find it taken.

        Optuna's pop tries the WAITING trials in the same order in every worker, so with plain FOR UPDATE a
        claim queues behind another worker's claim of the same row only to find it taken. A WAITING trial's
        row is locked only while a worker claims or voids it, so moving on to the next one is right.
        """
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        with _create_scoped_session(self.scoped_session) as session:
            query = session.query(models.TrialModel).filter(models.TrialModel.trial_id == trial_id)
            trial = query.with_for_update(skip_locked=self._skip_locked()).one_or_none()
            if trial is None:  # being claimed by another worker (a missing trial id is not popped)
                return False
            self.check_trial_is_updatable(trial_id, trial.state)
            if trial.state != TrialState.WAITING:
                return False
            trial.state = TrialState.RUNNING
            trial.datetime_start = datetime.now()
        return True

    def _skip_locked(self) -> bool:
        """PostgreSQL ≥ 9.5, MySQL ≥ 8.0 and MariaDB ≥ 10.6 know SKIP LOCKED; SQLite serializes writers anyway."""
        dialect = self.engine.dialect
        version = dialect.server_version_info or (0,)
        if dialect.name == "postgresql":
            return version >= (9, 5)
        if dialect.name in ("mysql", "mariadb"):
            return version >= ((10, 6) if getattr(dialect, "is_mariadb", False) else (8, 0))
        return False


def _sqlite_connect(dbapi_connection: Any, record: Any) -> None:
    """WAL with synchronous=NORMAL: a commit no longer waits for an fsync (~5 ms each here, ~10 commits a
    trial). SQLite's documented trade: the file is never corrupted, and a killed worker loses nothing; only an
    OS crash or power cut may roll back the last commits, whose trials stale-trial recovery then retries."""
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


def _sqlite_begin(conn: Any) -> None:
    """Calls that write take the lock up front; reads run without a transaction, as under plain Optuna (each
    statement sees the last commit, WAL never makes them wait for a writer, and no BEGIN/COMMIT is paid)."""
    writes = getattr(_retry_state, "what", "").lstrip("_").startswith(("set_", "create_", "delete_", "record_", "pop_"))
    if writes:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _already_written(trial: optuna.trial.FrozenTrial, state: TrialState, values: Iterable[float] | None) -> bool:
    stored = trial.values or []
    wanted = list(values or [])
    return trial.state == state and (
        values is None
        or len(stored) == len(wanted)
        and all(a == b or (a != a and b != b) for a, b in zip(stored, wanted))
    )


def _retrying(name: str) -> Callable[..., Any]:
    method = getattr(RDBStorage, name)

    def call(self: RetryingRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return call_with_retry(lambda n: method(self, *args, **kwargs), name, self.retry_s, self.url)

    call.__name__, call.__qualname__, call.__doc__ = name, f"RetryingRDBStorage.{name}", method.__doc__
    return call


for _name in _RETRIED:
    setattr(RetryingRDBStorage, _name, _retrying(_name))
