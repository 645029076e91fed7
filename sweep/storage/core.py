"""Optuna's SQL schema through SQLAlchemy Core: the trial reads and writes a worker makes every epoch, with the
same rows and FrozenTrials as Optuna's ORM code, at a fraction of the client CPU.

A worker's calls are tiny (one trial, a few rows), and through the ORM each cost ~2–6 ms of client CPU here:
session identity map, instrumented attributes, one lazy query per relation when a single trial is read, a
SELECT before every INSERT. That was most of what a worker spent on the database per trial, with 32 of them
sharing a node's cores. Reads here select plain rows — the trials, then the five child tables in one UNION ALL
— and build the FrozenTrial as `RDBStorage._build_frozen_trial_from_trial_model` does; writes are a state
check and one upsert per table; statements are built once per process (tests/test_storage.py compares
everything with Optuna's own reads after every kind of write).
"""

from __future__ import annotations

import datetime
import functools
import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import sqlalchemy
from optuna import distributions
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import Integer, String, cast, literal_column, null
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.dialects import sqlite as sqlite_dialect

from sweep.storage.optuna_private import models

_IN_CHUNK = 500  # ids per IN list, as SQLAlchemy's selectinload (SQLite allows 32766 bound values, older 999)


def select_trials(where: Any) -> Any:
    """The SELECT `read_trials` runs: the trials' own columns where `where` (a condition on `trials`).

    Build it once where the condition can take bound parameters (`sqlalchemy.bindparam`; `expanding=True` for
    id lists): constructing a statement costs more client CPU than running it."""
    c = models.TrialModel.__table__.c
    return (
        models.TrialModel.__table__.select()
        .with_only_columns(c.trial_id, c.number, c.state, c.datetime_start, c.datetime_complete)
        .where(where).order_by(c.trial_id)
    )


def read_trials(session: Any, query: Any, params: Mapping[str, Any] | None = None) -> list[FrozenTrial]:
    """The trials `query` (a `select_trials`) selects, ordered by trial id, as Optuna's FrozenTrials."""
    rows = session.execute(query, params).all()
    if not rows:
        return []
    children = _children(session, [row.trial_id for row in rows])
    return [_frozen(row, *(child.get(row.trial_id, ()) for child in children)) for row in rows]


def _children(session: Any, ids: Sequence[int]) -> list[dict[int, list[Any]]]:
    """The rows of the five child tables for these trials, grouped by table and trial id, in the order they were
    written: one UNION ALL query (per 500 trials), not one per table."""
    grouped: list[dict[int, list[Any]]] = [{} for _ in _CHILDREN]
    for chunk in _chunks(ids):
        rows = session.execute(_children_query(), {"ids": list(chunk)})
        for kind, trial_id, _, name, number, text, step in sorted(rows, key=lambda r: (r[0], r[2])):
            grouped[kind].setdefault(trial_id, []).append((name, number, text, step))
    return grouped


# Each child table as (name, number, text, step) columns (None: NULL), in write order ("ord").
_CHILDREN = (
    ("TrialParamModel", "param_id", "param_name", "param_value", "distribution_json", None),
    ("TrialValueModel", "trial_value_id", None, "value", "value_type", "objective"),
    ("TrialUserAttributeModel", "trial_user_attribute_id", "key", None, "value_json", None),
    ("TrialSystemAttributeModel", "trial_system_attribute_id", "key", None, "value_json", None),
    ("TrialIntermediateValueModel", "trial_intermediate_value_id", None, "intermediate_value",
     "intermediate_value_type", "step"),
)


@functools.cache
def _children_query() -> Any:
    """Built once: constructing a statement of this size costs more client CPU than running it."""
    parts = []
    for kind, (model, order, name, number, text, step) in enumerate(_CHILDREN):
        table = getattr(models, model).__table__
        c = table.c
        parts.append(table.select().with_only_columns(
            literal_column(str(kind), Integer).label("kind"), c.trial_id, c[order].label("ord"),
            c[name] if name else null().label("name"),  # a bare NULL takes the type of the other parts
            c[number] if number else null().label("number"),
            c[text] if text.endswith("json") else cast(c[text], String).label("text"),  # an enum: its name
            c[step] if step else null().label("step"),
        ).where(c.trial_id.in_(sqlalchemy.bindparam("ids", expanding=True))))
    return sqlalchemy.union_all(*parts)


def _chunks(ids: Sequence[int]) -> Iterator[Sequence[int]]:
    for start in range(0, len(ids), _IN_CHUNK):
        yield ids[start : start + _IN_CHUNK]


def _frozen(row: Any, params: Any, values: Any, user: Any, system: Any, steps: Any) -> FrozenTrial:
    """One trial from its row and its child rows, each (name, number, text, step), as `_children` gives them."""
    dists = {name: distributions.json_to_distribution(text) for name, _, text, _ in params}
    objectives = {
        objective: models.TrialValueModel.stored_repr_to_value(v, models.TrialValueModel.TrialValueType[kind])
        for _, v, kind, objective in values
    }
    return FrozenTrial(
        number=row.number,
        state=row.state,
        value=None,
        values=[objectives[i] for i in range(len(objectives))] if objectives else None,
        datetime_start=_local(row.datetime_start),
        datetime_complete=_local(row.datetime_complete),
        params={name: dists[name].to_external_repr(v) for name, v, _, _ in params},
        distributions=dists,
        user_attrs={key: json.loads(text) for key, _, text, _ in user},
        system_attrs={key: json.loads(text) for key, _, text, _ in system},
        intermediate_values={
            step: models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(
                v, models.TrialIntermediateValueModel.TrialIntermediateValueType[kind]
            )
            for _, v, kind, step in steps
        },
        trial_id=row.trial_id,
    )


def _local(utc: datetime.datetime | None) -> datetime.datetime | None:
    """Optuna stores naive UTC and hands out naive local time (`TrialModel.datetime_start`)."""
    return None if utc is None else utc.replace(tzinfo=datetime.timezone.utc).astimezone().replace(tzinfo=None)


def trial_state(session: Any, trial_id: int, for_update: bool = False) -> TrialState:
    """The trial's state (locking its row: `for_update`); KeyError, as Optuna's, when there is no such trial."""
    state = session.execute(_state_query(for_update), {"id": trial_id}).scalar_one_or_none()
    if state is None:
        raise KeyError(models.NOT_FOUND_MSG)
    return state


@functools.cache
def _state_query(for_update: bool) -> Any:
    t = models.TrialModel.__table__
    query = t.select().with_only_columns(t.c.state).where(t.c.trial_id == sqlalchemy.bindparam("id"))
    return query.with_for_update() if for_update else query


def previous_param_json(session: Any, trial_id: int, param_name: str) -> str | None:
    """The distribution (JSON) of a param of that name in any trial of this trial's study, as Optuna checks it
    (only when Optuna's cache does not know the study's distribution yet: not built once)."""
    t, p = models.TrialModel.__table__, models.TrialParamModel.__table__
    study = t.select().with_only_columns(t.c.study_id).where(t.c.trial_id == trial_id).scalar_subquery()
    query = (
        p.select().with_only_columns(p.c.distribution_json).join_from(p, t, p.c.trial_id == t.c.trial_id)
        .where(t.c.study_id == study, p.c.param_name == param_name).limit(1)
    )
    return session.execute(query).scalar_one_or_none()


def insert_param(session: Any, row: Mapping[str, Any]) -> None:
    session.execute(_insert(models.TrialParamModel.__tablename__), dict(row))


def set_trial_row(session: Any, trial_id: int, **columns: Any) -> None:
    """UPDATE trials SET … (datetimes given in local time are stored as Optuna does: naive UTC)."""
    stored = {k: _utc(v) if isinstance(v, datetime.datetime) else v for k, v in columns.items()}
    session.execute(_update_trial(), {"id": trial_id, **stored})


@functools.cache
def _update_trial() -> Any:
    t = models.TrialModel.__table__
    return t.update().where(t.c.trial_id == sqlalchemy.bindparam("id"))  # SET: the other parameters given


@functools.cache
def _insert(table: str) -> Any:
    return models.BaseModel.metadata.tables[table].insert()


def upsert(session: Any, model: Any, keys: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert the rows, or update the other columns where the unique `keys` exist: one statement, executed once
    with the list of rows (a multi-row VALUES clause would be compiled anew for every number of rows)."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    others = tuple(c for c in rows[0] if c not in keys)
    stmt = _upsert(model.__tablename__, tuple(keys), others, dialect)
    if stmt is not None:
        session.execute(stmt, [dict(row) for row in rows])
        return
    table = model.__table__  # no upsert in this SQL: update, insert what was not there
    for row in rows:
        where = [table.c[k] == row[k] for k in keys]
        if session.execute(table.update().where(*where).values({c: row[c] for c in others})).rowcount == 0:
            session.execute(table.insert().values(dict(row)))


@functools.cache
def _upsert(table_name: str, keys: tuple[str, ...], others: tuple[str, ...], dialect: str) -> Any:
    table = models.BaseModel.metadata.tables[table_name]
    if dialect in ("mysql", "mariadb"):
        stmt = mysql.insert(table)
        return stmt.on_duplicate_key_update({c: stmt.inserted[c] for c in others})
    if dialect == "postgresql" or dialect == "sqlite" and sqlite3.sqlite_version_info >= (3, 24, 0):
        stmt = (postgresql if dialect == "postgresql" else sqlite_dialect).insert(table)
        return stmt.on_conflict_do_update(
            index_elements=[table.c[k] for k in keys], set_={c: stmt.excluded[c] for c in others}
        )
    return None


def _utc(local: datetime.datetime) -> datetime.datetime:
    return local.astimezone(datetime.timezone.utc).replace(tzinfo=None)
