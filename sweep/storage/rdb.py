"""SQL storages (SQLite, PostgreSQL, MySQL): Optuna's RDBStorage with every call retried, one-transaction
claims and batched attribute writes, the calls a worker makes every epoch in SQLAlchemy Core (`core`), and
SQLite's writers serialized."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import optuna
import sqlalchemy
import sqlalchemy.exc
from optuna.distributions import check_distribution_compatibility, distribution_to_json, json_to_distribution
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from sqlalchemy import and_, bindparam, event, or_

from sweep.storage.core import (
    insert_param,
    previous_param_json,
    read_trials,
    select_trials,
    set_trial_row,
    trial_state,
    upsert,
)
from sweep.storage.optuna_private import (
    CACHE_BACKEND_CALLS,
    engine_of,
    models,
    session_scope,
    trial_id_of,
)
from sweep.storage.retry import RETRY_S, _retry_state, call_with_retry, retrying

_log = logging.getLogger("sweep.storage")  # one logger for the whole package
_FINISHED = [state for state in TrialState if state.is_finished()]
_MAX_IDS = 5000  # trial ids bound into one query (SQLite allows 32766, older builds 999; servers more)


# Every method of RDBStorage that talks to the database, including the private ones Optuna's trial cache calls
# directly (`CACHE_BACKEND_CALLS`). Each opens its own session, so calling it again after a rollback is safe.
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
    "get_trial_param",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number",
    "get_all_trials",
    "get_best_trial",
    "record_heartbeat",
    *CACHE_BACKEND_CALLS,
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
        engine = engine_of(self)
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_connect)
            event.listen(engine, "begin", _sqlite_begin)
            engine.dispose()  # the connection Optuna opened to set up the schema predates the listeners

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state["_closing"] = {}
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._serialize_sqlite()

    def _get_trials(
        self, study_id: int, states: Any, included_trial_ids: set[int], trial_id_greater_than: int
    ) -> list[optuna.trial.FrozenTrial]:
        """Optuna's incremental read (the trials its cache holds as unfinished, and all newer), through
        `read_trials`. Every unfinished trial is read again, WAITING ones too: Optuna's contract lets anyone set
        a waiting trial's params and attributes, from any process, without changing its state."""

        def attempt(n: int) -> list[optuna.trial.FrozenTrial]:
            t = models.TrialModel.__table__.c
            newer = _unfinished_or_newer(included_trial_ids, trial_id_greater_than)
            wanted = sqlalchemy.and_(t.study_id == study_id, newer)
            if states is not None:
                wanted = sqlalchemy.and_(wanted, t.state.in_(list(states)))
            with session_scope(self) as session:
                loaded = read_trials(session, select_trials(wanted))
                if not loaded:  # a trial row proves its study exists; without one, ask (a deleted study raises)
                    models.StudyModel.find_or_raise_by_id(study_id, session)
            # exactly Optuna's set, also where `_unfinished_or_newer` read more (too many ids to bind)
            return [t for t in loaded
                    if trial_id_of(t) in included_trial_ids or trial_id_of(t) > trial_id_greater_than]

        return call_with_retry(attempt, "_get_trials", self.retry_s, self.url)

    def read_finished(
        self, study_id: int, unfinished: Iterable[int], last_finished: int, ahead: Iterable[int]
    ) -> list[optuna.trial.FrozenTrial]:
        """The finished trials among `unfinished` (ids up to `last_finished`) and above `last_finished`, except
        `ahead` (already read): what `WorkerCache` loads for a pruning check, usually nothing (one query)."""
        older = [i for i in unfinished if i <= last_finished]  # usually the other workers' running trials
        if len(older) > _MAX_IDS:  # too many bound values for some servers: every trial from the oldest on
            older, last_finished = [], min(older) - 1  # (a finished one read again is cached again, unchanged)
        params = {"study_id": study_id, "older": older, "last_finished": last_finished, "ahead": list(ahead)}

        def attempt(n: int) -> list[optuna.trial.FrozenTrial]:
            with session_scope(self) as session:
                return read_trials(session, _newly_finished(), params)

        return call_with_retry(attempt, "read_finished", self.retry_s, self.url)

    def get_trial(self, trial_id: int) -> optuna.trial.FrozenTrial:
        """Optuna's `get_trial` through `read_trials`: `tell` reads the trial twice, each pruning check once."""

        def attempt(n: int) -> optuna.trial.FrozenTrial:
            with session_scope(self) as session:
                found = read_trials(session, _one_trial(), {"trial_id": trial_id})
            if not found:
                raise KeyError(models.NOT_FOUND_MSG)
            return found[0]

        return call_with_retry(attempt, "get_trial", self.retry_s, self.url)

    def unfinished_trial_ids(self, study_id: int) -> tuple[int, list[int]]:
        """(the study's highest trial id, -1 without trials; the ids of its WAITING and RUNNING trials): where a
        reader of newly finished trials (`read_finished`) resumes next time (the storage proxy's clients)."""
        t = models.TrialModel.__table__

        def attempt(n: int) -> tuple[int, list[int]]:
            with session_scope(self) as session:
                last = session.execute(sqlalchemy.select(sqlalchemy.func.max(t.c.trial_id))
                                       .where(t.c.study_id == study_id)).scalar_one()
                unfinished = session.execute(
                    t.select().with_only_columns(t.c.trial_id)
                    .where(t.c.study_id == study_id, t.c.state.in_([TrialState.WAITING, TrialState.RUNNING]))
                ).scalars().all()
            return -1 if last is None else last, list(unfinished)

        return call_with_retry(attempt, "unfinished_trial_ids", self.retry_s, self.url)

    def study_id_of_trial(self, trial_id: int) -> int:
        """The id of the study a trial belongs to (KeyError, as Optuna's, if there is no such trial): what a trial
        cache needs to read a trial it has not seen (`WorkerCache.set_trial_param`)."""
        t = models.TrialModel.__table__

        def attempt(n: int) -> int:
            with session_scope(self) as session:
                query = t.select().with_only_columns(t.c.study_id).where(t.c.trial_id == trial_id)
                found = session.execute(query).scalar_one_or_none()
            if found is None:
                raise KeyError(models.NOT_FOUND_MSG)
            return found

        return call_with_retry(attempt, "study_id_of_trial", self.retry_s, self.url)

    def set_trial_user_attrs(self, trial_id: int, attrs: Mapping[str, Any]) -> None:
        """Several user attributes of one trial in one transaction (upserts: a retry rewrites the same values)."""

        def attempt(n: int) -> None:
            with session_scope(self) as session:
                self.check_trial_is_updatable(trial_id, trial_state(session, trial_id))
                upsert(session, models.TrialUserAttributeModel, _ATTR_KEY, _attr_rows(trial_id, attrs))

        call_with_retry(attempt, "set_trial_user_attrs", self.retry_s, self.url)

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        """Optuna's report (a state check, then the value inserted or replaced) in two statements, not four."""
        value, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(intermediate_value)
        row = {"trial_id": trial_id, "step": step, "intermediate_value": value, "intermediate_value_type": kind}

        def attempt(n: int) -> None:
            with session_scope(self) as session:
                self.check_trial_is_updatable(trial_id, trial_state(session, trial_id))
                upsert(session, models.TrialIntermediateValueModel, ("trial_id", "step"), [row])

        call_with_retry(attempt, "set_trial_intermediate_value", self.retry_s, self.url)

    def _set_trial_param(
        self, trial_id: int, param_name: str, param_value_internal: float,
        distribution: optuna.distributions.BaseDistribution,
        previous_distribution: optuna.distributions.BaseDistribution | None,
    ) -> None:
        """Optuna's, in Core. Optuna's cache passes the distribution the study already uses for this name, if any
        (else one query finds it, as Optuna's does); a duplicate name raises IntegrityError, as with Optuna."""
        row = {"trial_id": trial_id, "param_name": param_name, "param_value": param_value_internal,
               "distribution_json": distribution_to_json(distribution)}

        def attempt(n: int) -> None:
            with session_scope(self) as session:
                self.check_trial_is_updatable(trial_id, trial_state(session, trial_id))
                previous = previous_distribution
                if previous is None:
                    text = previous_param_json(session, trial_id, param_name)
                    previous = None if text is None else json_to_distribution(text)
                if previous is not None:
                    check_distribution_compatibility(previous, distribution)
                insert_param(session, row)

        call_with_retry(attempt, "_set_trial_param", self.retry_s, self.url)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        def attempt(n: int) -> bool:
            try:
                if state == TrialState.RUNNING and values is None:
                    done = self._claim(trial_id)
                elif state.is_finished():
                    done = self._finish(trial_id, state, values, self._closing.get(trial_id) or {})
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
        rows = [
            dict(zip(("trial_id", "objective", "value", "value_type"),
                     (trial_id, objective, *models.TrialValueModel.value_to_stored_repr(v))))
            for objective, v in enumerate(values or ())
        ]
        try:
            with session_scope(self) as session:
                self.check_trial_is_updatable(trial_id, trial_state(session, trial_id, for_update=True))
                upsert(session, models.TrialUserAttributeModel, _ATTR_KEY, _attr_rows(trial_id, attrs))
                upsert(session, models.TrialValueModel, ("trial_id", "objective"), rows)
                set_trial_row(session, trial_id, state=state, datetime_complete=datetime.now())
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
        t = models.TrialModel.__table__
        with session_scope(self) as session:
            if engine_of(self).dialect.name in ("mysql", "mariadb"):  # InnoDB's REPEATABLE READ would keep every
                # row the locking read passes over locked (the finished trials before the first WAITING one)
                session.connection(execution_options={"isolation_level": "READ COMMITTED"})
            query = (
                t.select().with_only_columns(t.c.trial_id, t.c.number)
                .where(t.c.study_id == study_id, t.c.state == TrialState.WAITING)
                .order_by(t.c.trial_id).limit(1).with_for_update(skip_locked=self._skip_locked())
            )
            found = session.execute(query).first()
            if found is None:
                return None
            set_trial_row(session, found.trial_id, state=TrialState.RUNNING, datetime_start=datetime.now())
            if attrs is not None:
                rows = _attr_rows(found.trial_id, attrs(found.number))
                upsert(session, models.TrialUserAttributeModel, _ATTR_KEY, rows)
            return found.trial_id

    def _claim(self, trial_id: int) -> bool:
        """WAITING → RUNNING, as Optuna does it, except that a trial another worker is claiming right now is
        skipped (SKIP LOCKED) instead of waited for, only to find it taken.

        Optuna's pop tries the WAITING trials in the same order in every worker, so with plain FOR UPDATE a
        claim queues behind another worker's claim of the same row only to find it taken. A WAITING trial's
        row is locked only while a worker claims or voids it, so moving on to the next one is right.
        """

        with session_scope(self) as session:
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

    def create_waiting_trials(
        self, study_id: int, count: int, user_attrs: Mapping[str, Any], system_attrs: Mapping[str, Any]
    ) -> None:
        """`count` WAITING trials with these attributes in one transaction: what `count` calls of Optuna's
        `enqueue_trial` store, without its transaction and its count of the earlier trials for each (190 trials
        a second on SQLite, slower as the study grows). The study's row is locked as Optuna locks it to number
        a trial, so numbers stay consecutive beside anyone creating trials through Optuna."""
        call_with_retry(
            lambda n: self._create_waiting_once(study_id, count, user_attrs, system_attrs),
            "create_waiting_trials",
            self.retry_s,
            self.url,
        )

    def _create_waiting_once(
        self, study_id: int, count: int, user_attrs: Mapping[str, Any], system_attrs: Mapping[str, Any]
    ) -> None:
        trials, studies = models.TrialModel.__table__, models.StudyModel.__table__
        with session_scope(self) as session:
            lock = studies.select().with_only_columns(studies.c.study_id).where(studies.c.study_id == study_id)
            if session.execute(lock.with_for_update()).first() is None:
                raise KeyError(models.NOT_FOUND_MSG)
            count_query = sqlalchemy.select(sqlalchemy.func.count()).where(trials.c.study_id == study_id)
            base = session.execute(count_query).scalar_one()
            session.execute(
                trials.insert(),
                [{"study_id": study_id, "number": base + i, "state": TrialState.WAITING} for i in range(count)],
            )
            ids = session.execute(
                trials.select().with_only_columns(trials.c.trial_id)
                .where(trials.c.study_id == study_id, trials.c.number >= base)
            ).scalars().all()
            for model, attrs in ((models.TrialUserAttributeModel, user_attrs),
                                 (models.TrialSystemAttributeModel, system_attrs)):
                rows = [row for trial_id in ids for row in _attr_rows(trial_id, attrs)]
                if rows:
                    session.execute(model.__table__.insert(), rows)

    def _skip_locked(self) -> bool:
        """PostgreSQL ≥ 9.5, MySQL ≥ 8.0 and MariaDB ≥ 10.6 know SKIP LOCKED; SQLite serializes writers anyway."""
        dialect = engine_of(self).dialect
        version = dialect.server_version_info or (0,)
        if dialect.name == "postgresql":
            return version >= (9, 5)
        if dialect.name in ("mysql", "mariadb"):
            return version >= ((10, 6) if getattr(dialect, "is_mariadb", False) else (8, 0))
        return False


_ATTR_KEY = ("trial_id", "key")


@functools.cache
def _one_trial() -> Any:
    return select_trials(models.TrialModel.__table__.c.trial_id == sqlalchemy.bindparam("trial_id"))


@functools.cache
def _newly_finished() -> Any:
    """`read_finished`'s query: finished trials Optuna's cache holds as unfinished or has not read, except those
    already read ahead (`_unfinished_or_newer` with bound parameters, built once)."""
    t = models.TrialModel.__table__.c
    return select_trials(and_(
        t.study_id == bindparam("study_id"),
        or_(t.trial_id.in_(bindparam("older", expanding=True)), t.trial_id > bindparam("last_finished")),
        t.state.in_(_FINISHED),
        t.trial_id.not_in(bindparam("ahead", expanding=True)),
    ))


def _unfinished_or_newer(unfinished: Iterable[int], last_finished: int) -> Any:
    """The trials Optuna's cache must read again: those it holds as unfinished, and all above the last finished
    one it read (the condition of `RDBStorage._get_trials`). More ids than one query may bind (SQLite: "too many
    SQL variables"): every trial from the oldest of them on (a finished one read again is cached again, unchanged)."""
    t = models.TrialModel.__table__.c
    older = [i for i in unfinished if i <= last_finished]
    if len(older) > _MAX_IDS:
        return t.trial_id >= min(older)
    return sqlalchemy.or_(t.trial_id.in_(older), t.trial_id > last_finished) if older else t.trial_id > last_finished


def _attr_rows(trial_id: int, attrs: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"trial_id": trial_id, "key": key, "value_json": json.dumps(value)} for key, value in attrs.items()]


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


for _name in _RETRIED:
    setattr(RetryingRDBStorage, _name, retrying(RDBStorage, _name, "RetryingRDBStorage"))
