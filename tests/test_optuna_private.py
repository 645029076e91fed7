"""What sweep/storage/optuna_private.py relies on in Optuna's private internals, checked against the installed
Optuna: each name still there, with the parameters, bases and attributes the seam uses. Fast (no server, no
subprocess), so that a new Optuna release shows at once which piece of the seam it changed; the behaviour of
sweep's storages under it is tests/test_storage_contract.py's (Optuna's own storage tests)."""

from __future__ import annotations

import importlib
import inspect
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from sweep.storage import optuna_private as seam
from sweep.storage.cache import WorkerCache
from sweep.storage.core import _CHILDREN
from sweep.storage.journal import SweepJournalStorage
from sweep.storage.rdb import _RETRIED, RetryingRDBStorage


def _changed(name: str, relies_on: str) -> str:
    return (f"optuna {optuna.__version__} changed `{name}` (sweep/storage/optuna_private.py relies on {relies_on}): "
            "check the seam before widening the pin")


def _resolve(dotted: str) -> Any:
    """The object a dotted name names: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for i, attr in enumerate(parts[cut:], cut):
            if not hasattr(found, attr):
                pytest.fail(_changed(dotted, f"`{'.'.join(parts[:i + 1])}` existing"))
            found = getattr(found, attr)
        return found
    pytest.fail(_changed(dotted, "its module existing"))


def _names(func: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(func).parameters)


# Private callables the seam calls: the leading parameters it passes (by name where it passes keywords).
CALLED = [
    ("optuna.study._tell._tell_with_warning", ["study", "trial", "value_or_values", "state", "skip_if_finished"]),
    ("optuna.pruners._filter_study", ["study", "trial"]),
    ("optuna.storages._rdb.storage._create_scoped_session", ["scoped_session"]),
    ("optuna.storages._cached_storage._CachedStorage.__init__", ["self", "backend"]),
    ("optuna.storages._cached_storage._CachedStorage._add_trials_to_cache", ["self", "study_id", "trials"]),
    ("optuna.storages._cached_storage._CachedStorage._read_trials_from_remote_storage", ["self", "study_id"]),
    ("optuna.storages.journal._storage.JournalStorage._sync_with_backend", ["self"]),
    ("optuna._imports._LazyImport.__init__", ["self", "name"]),
    ("optuna.storages._grpc.servicer.OptunaStorageProxyService.__init__", ["self", "storage"]),
    ("optuna.storages._grpc.auto_generated.api_pb2_grpc.add_StorageServiceServicer_to_server", ["servicer", "server"]),
]


@pytest.mark.parametrize(("dotted", "leading"), CALLED, ids=[c[0].rsplit(".", 2)[-2] + "." + c[0].rsplit(".", 1)[-1]
                                                            for c in CALLED])
def test_private_callables_take_what_the_seam_passes(dotted: str, leading: list[str]) -> None:
    found = _resolve(dotted)
    assert callable(found), _changed(dotted, "it being callable")
    names = _names(found)
    assert names[: len(leading)] == leading, _changed(dotted, f"its parameters starting ({', '.join(leading)}); "
                                                                f"they are now ({', '.join(names)})")


def test_re_exported_classes_keep_their_bases_and_members() -> None:
    cached = _resolve("optuna.storages._cached_storage._CachedStorage")
    assert issubclass(cached, optuna.storages.BaseStorage), _changed(
        "optuna.storages._cached_storage._CachedStorage", "it being a BaseStorage (WorkerCache subclasses it)")
    info = _resolve("optuna.storages._cached_storage._StudyInfo")()
    for attr, kind in (("trials", dict), ("unfinished_trial_ids", set), ("last_finished_trial_id", int)):
        assert isinstance(getattr(info, attr, None), kind), _changed(
            "optuna.storages._cached_storage._StudyInfo", f"its attribute `{attr}` ({kind.__name__})")
    ops = _resolve("optuna.storages.journal._storage.JournalOperation")
    for op in ("CREATE_TRIAL", "SET_TRIAL_PARAM", "SET_TRIAL_STATE_VALUES", "SET_TRIAL_USER_ATTR"):
        assert hasattr(ops, op), _changed("optuna.storages.journal._storage.JournalOperation", f"its member {op}")
    assert seam.CachedStorage is cached and seam.StudyInfo is type(info) and seam.JournalOperation is ops


def test_study_and_trial_internals() -> None:
    study = optuna.create_study()
    assert isinstance(seam.storage_of(study), optuna.storages.BaseStorage), _changed("Study._storage", "it")
    assert isinstance(seam.study_id_of(study), int), _changed("Study._study_id", "it being the storage's id")
    assert hasattr(study._thread_local, "cached_all_trials"), _changed(
        "Study._thread_local.cached_all_trials", "the trial list Study.ask clears")
    seam.reset_trial_cache(study)
    trial = study.ask()
    trial.report(0.5, 0)
    frozen = seam.cached_frozen_trial(trial)
    assert isinstance(frozen, FrozenTrial) and frozen.intermediate_values == {0: 0.5}, _changed(
        "Trial._cached_frozen_trial", "it being the FrozenTrial the Trial updates as it reports")
    assert seam.trial_id_of(trial) == seam.trial_id_of(study.trials[0]), _changed(
        "Trial._trial_id / FrozenTrial._trial_id", "both being the storage's id of the trial")
    seam.tell_with_warning(study, trial, 1.0, None, False)
    assert study.trials[0].state == TrialState.COMPLETE and study.trials[0].value == 1.0, _changed(
        "optuna.study._tell._tell_with_warning", "it telling the trial as Study.tell does")
    assert seam.filter_study(study, study.trials[0]) is study, _changed(
        "optuna.pruners._filter_study", "it giving the study itself for any pruner but Hyperband")


def test_trial_cache_internals(tmp_path: Path) -> None:
    backend = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'cache.db'}")
    cache = seam.CachedStorage(backend)
    study_id = cache.create_new_study([optuna.study.StudyDirection.MINIMIZE])
    trial_id = cache.create_new_trial(study_id)
    assert seam.uncached(cache) is backend and seam.uncached(backend) is backend, _changed(
        "_CachedStorage._backend", "it being the wrapped storage")
    assert hasattr(seam.cache_lock(cache), "acquire"), _changed("_CachedStorage._lock", "it being a lock")
    assert seam.cache_knows_trial(cache, trial_id) and not seam.cache_knows_trial(cache, trial_id + 1), _changed(
        "_CachedStorage._trial_id_to_study_id_and_number", "it holding every trial the cache knows, by id")
    other = optuna.storages.RDBStorage(backend.url)  # a trial the cache did not create: it must read it
    created = other.create_new_trial(study_id)
    seam.refresh_cache(cache, study_id)
    assert seam.cache_knows_trial(cache, created), _changed(
        "_CachedStorage._read_trials_from_remote_storage", "it loading the study's new trials")
    with seam.cache_lock(cache):
        info = seam.cached_study(cache, study_id)
        assert isinstance(info, seam.StudyInfo) and trial_id in info.unfinished_trial_ids, _changed(
            "_CachedStorage._studies", "it holding a _StudyInfo per study id")
        frozen = backend.get_trial(trial_id)
        seam.add_to_cache(cache, study_id, [frozen])
        assert info.trials[frozen.number] is frozen, _changed("_CachedStorage._add_trials_to_cache", "it")


def test_the_cache_calls_no_other_private_backend_method_than_sweep_retries() -> None:
    """Every private method `_CachedStorage` calls on its backend must be retried by sweep's SQL storage: one
    that is not would end a worker on a dropped connection."""
    source = inspect.getsource(seam.CachedStorage)
    called = set(_private_backend_calls(source))
    expected = {*seam.CACHE_BACKEND_HOOKS, *seam.CACHE_BACKEND_CALLS}
    assert called == expected, _changed("optuna.storages._cached_storage._CachedStorage", (
        f"it calling exactly these private backend methods: {sorted(expected)}; it now calls {sorted(called)}"))
    for name in seam.CACHE_BACKEND_CALLS:
        assert name in _RETRIED and hasattr(optuna.storages.RDBStorage, name), _changed(f"RDBStorage.{name}", "it")
    for name in seam.CACHE_BACKEND_HOOKS:
        assert name in vars(RetryingRDBStorage), f"RetryingRDBStorage no longer overrides {name}"


def _private_backend_calls(source: str) -> list[str]:
    return re.findall(r"self\._backend\.(_\w+)\(", source)


# sweep's subclasses of Optuna's storages: what they override must keep the parameters of what it overrides.
SUBCLASSES = [
    (RetryingRDBStorage, optuna.storages.RDBStorage),
    (WorkerCache, seam.CachedStorage),
    (SweepJournalStorage, optuna.storages.JournalStorage),
]


@pytest.mark.parametrize(("cls", "base"), SUBCLASSES, ids=[c.__name__ for c, _ in SUBCLASSES])
def test_overrides_keep_the_parameters_of_what_they_override(cls: type, base: type) -> None:
    for name, own in vars(cls).items():
        inherited = getattr(base, name, None)
        wrapper = cls is RetryingRDBStorage and name in _RETRIED  # a retry wrapper takes *args, **kwargs
        if wrapper or name.startswith("__") or not callable(own) or inherited is None:
            continue
        assert _names(own) == _names(inherited), _changed(f"{base.__name__}.{name}", (
            f"its parameters being ({', '.join(_names(own))}), as {cls.__name__} overrides it; they are now "
            f"({', '.join(_names(inherited))})"))


def test_sweeps_own_attributes_shadow_nothing_of_optunas(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'attrs.db'}"
    pairs = [
        (RetryingRDBStorage(url), optuna.storages.RDBStorage(url)),
        (WorkerCache(RetryingRDBStorage(url)), seam.CachedStorage(optuna.storages.RDBStorage(url))),
        (SweepJournalStorage(_journal_file(tmp_path / "a.log")), optuna.storages.JournalStorage(
            _journal_file(tmp_path / "b.log"))),
    ]
    for ours, theirs in pairs:
        own = set(vars(ours)) - set(vars(theirs))
        clash = own & {n for n in dir(type(theirs))}
        assert not clash, _changed(type(theirs).__name__, f"none of its members being named {sorted(clash)}")


def test_rdb_internals(tmp_path: Path) -> None:
    import sqlalchemy.engine
    import sqlalchemy.orm

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'rdb.db'}")
    assert isinstance(seam.engine_of(storage), sqlalchemy.engine.Engine), _changed("RDBStorage.engine", "it")
    assert isinstance(storage.scoped_session, sqlalchemy.orm.scoped_session), _changed(
        "RDBStorage.scoped_session", "it being SQLAlchemy's scoped_session")
    assert isinstance(storage.url, str), _changed("RDBStorage.url", "it being the URL (retry messages name it)")
    with seam.session_scope(storage) as session:
        assert isinstance(session, sqlalchemy.orm.Session), _changed("_create_scoped_session", "its session")
        assert session.execute(sqlalchemy.text("SELECT 1")).scalar_one() == 1


def test_rdb_models_have_what_sweeps_core_reads(tmp_path: Path) -> None:
    m = seam.models
    members = {
        "TrialModel": ["__table__", "__tablename__"],
        "StudyModel": ["__table__", "find_or_raise_by_id"],
        "TrialValueModel": ["stored_repr_to_value", "value_to_stored_repr", "TrialValueType"],
        "TrialIntermediateValueModel": ["stored_repr_to_intermediate_value", "intermediate_value_to_stored_repr",
                                        "TrialIntermediateValueType"],
        "TrialParamModel": ["__tablename__"],
        "TrialUserAttributeModel": ["__table__"],
        "TrialSystemAttributeModel": ["__table__"],
        "BaseModel": ["metadata"],
    }
    for model, attrs in members.items():
        for attr in attrs:
            assert hasattr(getattr(m, model, None), attr), _changed(f"optuna.storages._rdb.models.{model}", attr)
    assert isinstance(getattr(m, "NOT_FOUND_MSG", None), str), _changed("optuna.storages._rdb.models.NOT_FOUND_MSG",
                                                                         "it")
    columns = {"TrialModel": ["trial_id", "study_id", "number", "state", "datetime_start", "datetime_complete"],
               "StudyModel": ["study_id"]}
    for model, order, *cols in _CHILDREN:
        columns[model] = ["trial_id", order, *(c for c in cols if c)]
    for model, cols in columns.items():
        missing = [c for c in cols if c not in getattr(m, model).__table__.c]
        assert not missing, _changed(f"optuna.storages._rdb.models.{model}", f"its columns {missing}")
    unique = {c.name for u in m.TrialUserAttributeModel.__table__.constraints if hasattr(u, "columns")
              for c in u.columns if len(u.columns) == 2}
    assert unique == {"trial_id", "key"}, _changed("TrialUserAttributeModel", "a unique (trial_id, key) to upsert on")


def test_the_proxy_server_serves_optunas_own_client(tmp_path: Path) -> None:
    server, port = seam.proxy_server(optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'p.db'}"), "127.0.0.1", 0, 2)
    assert port > 0, _changed("grpc.Server.add_insecure_port", "it returning the port bound")
    server.start()
    try:
        client = optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=port)
        study = optuna.create_study(study_name="p", storage=client)
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2, _changed(
            "optuna.storages._grpc.servicer.OptunaStorageProxyService", "it serving GrpcStorageProxy")
        client.close()
    finally:
        server.stop(None)


def _journal_file(path: Path) -> Any:
    return optuna.storages.journal.JournalFileBackend(str(path))


def _records(path: Path) -> dict[int, set[str]]:
    """The keys of each kind of record in a journal file (the last of each kind)."""
    return {log["op_code"]: set(log) for log in map(json.loads, path.read_text().splitlines())}


def test_the_journal_records_sweep_writes_are_keyed_as_optunas(tmp_path: Path) -> None:
    """sweep builds some of the journal's records itself (several in one append): their keys are the ones
    Optuna writes for the same operations, which every replaying process reads."""
    dist = optuna.distributions.FloatDistribution(0, 1)
    ops = seam.JournalOperation
    theirs = optuna.storages.JournalStorage(_journal_file(tmp_path / "optuna.log"))
    study = optuna.create_study(storage=theirs)
    study.enqueue_trial({}, user_attrs={"a": 1})
    trial = study.ask()
    theirs.set_trial_param(seam.trial_id_of(trial), "x", 0.5, dist)
    theirs.set_trial_user_attr(seam.trial_id_of(trial), "c", 3)
    theirs.set_trial_state_values(seam.trial_id_of(trial), TrialState.COMPLETE, [1.0])

    ours = SweepJournalStorage(_journal_file(tmp_path / "sweep.log"))
    study_id = ours.create_new_study([optuna.study.StudyDirection.MINIMIZE])
    ours.create_waiting_trials(study_id, 1, {"a": 1}, {"fixed_params": {}})
    trial_id = seam.trial_id_of(ours.get_all_trials(study_id)[0])
    ours.set_trial_state_values(trial_id, TrialState.RUNNING)
    ours.hold(trial_id, {"b": 2})
    ours.set_trial_param(trial_id, "x", 0.5, dist)
    ours.flush(trial_id)
    ours.stage_closing_attrs(trial_id, {"c": 3})
    ours.set_trial_state_values(trial_id, TrialState.COMPLETE, [1.0])

    expected, written = _records(tmp_path / "optuna.log"), _records(tmp_path / "sweep.log")
    for op in (ops.CREATE_TRIAL, ops.SET_TRIAL_PARAM, ops.SET_TRIAL_USER_ATTR, ops.SET_TRIAL_STATE_VALUES):
        assert op in expected and written[op] == expected[op], _changed(
            "optuna.storages.journal._storage.JournalStorage", f"its {op.name} records keyed {sorted(written[op])}; "
            f"Optuna's are now keyed {sorted(expected.get(op, ()))}")
