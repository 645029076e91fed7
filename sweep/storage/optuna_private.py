"""The one place sweep touches Optuna's private internals: every other module goes through the names here.

sweep's storages subclass Optuna's storage classes and reach past its public API to batch a trial's writes into
one transaction or append. Those private names may change in any Optuna release, so each is used here only,
with what it relies on said beside it, and tests/test_optuna_private.py checks every one of them (presence,
parameters, bases, attributes) against the installed Optuna. Checked against Optuna 5.1.0; pyproject.toml
allows 5.1.x. Before widening that pin, run tests/test_optuna_private.py and tests/test_storage_contract.py
(Optuna's own storage tests against sweep's storages) on the new version.

What each piece relies on (Optuna 5.1.0):

- `storage_of`, `study_id_of`: `Study._storage` (the storage the study reads and writes through: for a worker,
  the trial cache) and `Study._study_id`, both set in `Study.__init__`.
- `trial_id_of`: `Trial._trial_id` and `FrozenTrial._trial_id`, the storage's id of a trial (Optuna's storage
  API takes it; neither class has a public one).
- `cached_frozen_trial`: `Trial._cached_frozen_trial`, the FrozenTrial a `Trial` reads when created and updates
  as it reports (its intermediate values), without a storage read.
- `reset_trial_cache`: `Study._thread_local.cached_all_trials`, the trial list `Study.ask` and `Study.tell`
  clear so that the sampler sees fresh trials.
- `tell_with_warning`: `optuna.study._tell._tell_with_warning(study, trial, value_or_values, state,
  skip_if_finished, ...)`, `Study.tell` without reading the trial back and deep-copying it.
- `filter_study`: `optuna.pruners._filter_study(study, trial)`, the study a sampler's `after_trial` is given
  (a Hyperband bracket's, or the study).
- `CachedStorage`, `StudyInfo`: `optuna.storages._cached_storage._CachedStorage(backend)`, the trial cache
  `optuna.Study` wraps an RDBStorage in (`WorkerCache` subclasses it), and its per-study `_StudyInfo` (`trials`
  by number, `unfinished_trial_ids`, `last_finished_trial_id`). Its internals: `_backend`, `_lock`, `_studies`,
  `_trial_id_to_study_id_and_number`, `_add_trials_to_cache(study_id, trials)`,
  `_read_trials_from_remote_storage(study_id)`; and the private methods it calls on its backend
  (`CACHE_BACKEND_HOOKS`, `CACHE_BACKEND_CALLS`), which sweep's SQL storage must retry like every other call.
- `engine_of`, `session_scope`: `RDBStorage.engine` (the SQLAlchemy engine), `RDBStorage.scoped_session` and
  `optuna.storages._rdb.storage._create_scoped_session(scoped_session)`, Optuna's session scope (commits at the
  end, rolls back and raises StorageInternalError on a failure).
- `models`: `optuna.storages._rdb.models`, Optuna's SQLAlchemy ORM models (tables, columns, value encodings),
  loaded on first use through `optuna._imports._LazyImport` (~15 MB).
- `proxy_server`: `optuna.storages._grpc.servicer.OptunaStorageProxyService(storage)` (the servicer
  `run_grpc_proxy_server` serves) and `optuna.storages._grpc.auto_generated.api_pb2_grpc
  .add_StorageServiceServicer_to_server(servicer, server)`: `run_grpc_proxy_server` itself blocks until the
  process dies, cannot report the port it bound (``--port 0``) and cannot be stopped letting calls finish.
- `JournalOperation` and the `journal_*` accessors: `optuna.storages.journal._storage.JournalOperation` (the
  op codes of the journal's records), and JournalStorage's `_backend` (the log storage), `_thread_lock`,
  `_sync_with_backend()` (replay the logs appended since) and `_replay_result.worker_id` (this process's id in
  the records it writes).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import optuna
from optuna._imports import _LazyImport
from optuna.pruners import _filter_study
from optuna.storages._cached_storage import _CachedStorage, _StudyInfo
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.storages.journal._storage import JournalOperation
from optuna.study import _tell
from optuna.trial import FrozenTrial, TrialState

CachedStorage = _CachedStorage
StudyInfo = _StudyInfo
filter_study = _filter_study

models = _LazyImport("optuna.storages._rdb.models")  # SQLAlchemy's ORM models: ~15 MB, loaded on first use

# The private RDBStorage methods `_CachedStorage` calls on its backend. sweep's SQL storage overrides the hooks
# (`RetryingRDBStorage._get_trials`, `._set_trial_param`: same parameters) and wraps the calls with retries.
CACHE_BACKEND_HOOKS = ("_get_trials", "_set_trial_param")
CACHE_BACKEND_CALLS = ("_create_new_trial", "_get_best_trial_id", "_get_stale_trial_ids")

__all__ = [
    "CACHE_BACKEND_CALLS",
    "CACHE_BACKEND_HOOKS",
    "CachedStorage",
    "JournalOperation",
    "StudyInfo",
    "add_to_cache",
    "cache_knows_trial",
    "cache_lock",
    "cached_frozen_trial",
    "cached_study",
    "engine_of",
    "filter_study",
    "journal_lock",
    "journal_log_storage",
    "journal_replay",
    "journal_worker_id",
    "models",
    "proxy_server",
    "refresh_cache",
    "reset_trial_cache",
    "session_scope",
    "storage_of",
    "study_id_of",
    "tell_with_warning",
    "trial_id_of",
    "uncached",
]


# ---- Study and Trial ------------------------------------------------------------------------------------------


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    return study._storage


def study_id_of(study: optuna.Study) -> int:
    return study._study_id


def trial_id_of(trial: optuna.Trial | FrozenTrial) -> int:
    return trial._trial_id


def cached_frozen_trial(trial: optuna.Trial) -> FrozenTrial:
    """The trial as this process last knew it (its reports included), read without going to the storage."""
    return trial._cached_frozen_trial


def reset_trial_cache(study: optuna.Study) -> None:
    """Forget the study's cached trial list, as `Study.ask` does: the sampler must see fresh trials."""
    study._thread_local.cached_all_trials = None


def tell_with_warning(
    study: optuna.Study, trial: optuna.Trial, value: float | Sequence[float] | None, state: TrialState | None,
    skip_if_finished: bool,
) -> None:
    # looked up at each call, not bound at import: benchmarks/storage_overhead.py times tells by patching it
    _tell._tell_with_warning(study, trial, value_or_values=value, state=state, skip_if_finished=skip_if_finished)


# ---- Optuna's trial cache (_CachedStorage) --------------------------------------------------------------------


def uncached(storage: optuna.storages.BaseStorage) -> optuna.storages.BaseStorage:
    """The storage under Optuna's trial cache, or the storage itself where there is no cache."""
    return storage._backend if isinstance(storage, _CachedStorage) else storage


def cache_lock(cache: _CachedStorage) -> threading.Lock:
    return cache._lock


def cached_study(cache: _CachedStorage, study_id: int) -> _StudyInfo:
    """The cache's record of this study, created empty if it has none yet (as its own reads do). Hold the lock."""
    return cache._studies.setdefault(study_id, _StudyInfo())


def add_to_cache(cache: _CachedStorage, study_id: int, trials: Sequence[FrozenTrial]) -> None:
    """Put trials read from the backend into the cache (it must know the study: `cached_study`). Hold the lock."""
    cache._add_trials_to_cache(study_id, list(trials))


def cache_knows_trial(cache: _CachedStorage, trial_id: int) -> bool:
    return trial_id in cache._trial_id_to_study_id_and_number


def refresh_cache(cache: _CachedStorage, study_id: int) -> None:
    """The cache's own read of the study: its unfinished trials again, and every trial newer than it holds."""
    cache._read_trials_from_remote_storage(study_id)


# ---- RDBStorage ---------------------------------------------------------------------------------------------


def engine_of(storage: optuna.storages.RDBStorage) -> Any:
    """The storage's SQLAlchemy engine (`sqlalchemy.engine.Engine`)."""
    return storage.engine


def session_scope(storage: optuna.storages.RDBStorage) -> AbstractContextManager[Any]:
    """Optuna's session scope: commits at the end, rolls back and raises StorageInternalError on a failure."""
    return _create_scoped_session(storage.scoped_session)


# ---- the gRPC storage proxy ---------------------------------------------------------------------------------


def proxy_server(storage: optuna.storages.BaseStorage, host: str, port: int, threads: int) -> tuple[Any, int]:
    """Optuna's gRPC storage proxy for `storage`, as `run_grpc_proxy_server` builds it, bound to host:port but not
    started: (the `grpc.Server`, the port bound; `port` 0 picks a free one, 0 back means it could not bind)."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc  # ~0.3 s, and protobuf: only the proxy needs them (the client imports them through Optuna)
    from optuna.storages._grpc.auto_generated import api_pb2_grpc
    from optuna.storages._grpc.servicer import OptunaStorageProxyService

    server = grpc.server(ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sweep-proxy"))
    api_pb2_grpc.add_StorageServiceServicer_to_server(OptunaStorageProxyService(storage), server)
    return server, server.add_insecure_port(f"{host}:{port}")


# ---- JournalStorage -----------------------------------------------------------------------------------------


def journal_log_storage(storage: optuna.storages.JournalStorage) -> Any:
    """The log storage the journal appends to (`optuna.storages.journal.BaseJournalBackend`)."""
    return storage._backend


def journal_lock(storage: optuna.storages.JournalStorage) -> threading.Lock:
    """The lock a journal storage holds while it appends and replays (one thread of this process at a time)."""
    return storage._thread_lock


def journal_replay(storage: optuna.storages.JournalStorage) -> None:
    """Replay the records appended since the last replay (raises what applying a record of this process raises)."""
    storage._sync_with_backend()


def journal_worker_id(storage: optuna.storages.JournalStorage) -> str:
    """This process's id in the records it appends (the journal tells its own records from others' by it)."""
    return storage._replay_result.worker_id
