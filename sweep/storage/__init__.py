"""Where a study's trials are stored: a URL resolved the same way by every command, opened once per process.

Which storage to use when:

- ``sqlite:///PATH`` (the default, ``studies/NAME/study.db``): every worker on ONE machine; never in memory
  (``sqlite:///:memory:`` is refused: no other process could see it). WAL without an
  fsync per commit (synchronous=NORMAL), a 60 s busy timeout, and every storage call that writes is one
  ``BEGIN IMMEDIATE`` transaction (SQLite has no SELECT … FOR UPDATE: with plain Optuna, two local workers
  could pop the same WAITING trial). Never on a
  network file system (NFS, Lustre, GPFS, BeeGFS, SMB): its locks are not reliable there and the file can
  be corrupted; `check_sqlite_location` warns.
- ``postgresql://USER@HOST/DB`` (psycopg2): a cluster, workers on many nodes. ``mysql+pymysql://USER@HOST/DB``
  (MySQL ≥ 8, MariaDB ≥ 10.6) works too, somewhat slower per trial. Each worker process keeps a pool of one
  connection (two more on demand, e.g. for the heartbeat thread), pre-pinged before use, recycled after
  30 min, with a 10 s connect timeout and TCP keepalives: 32 workers hold ~33 of PostgreSQL's default 100
  connections. A dropped connection or a database restart does not end a worker: every storage call is
  retried with backoff for up to `RETRY_S` (`RetryingRDBStorage`, which also says what Optuna does alone), on
  the errors `is_transient` allows; any other error (a full disk, a query too big) fails at once.
- ``journal:///PATH``: a cluster with a shared file system but no database server: Optuna's append-only log
  behind a symlink lock (NFS-safe). Concurrent writer processes lose nothing, and a trial takes fewer appends
  (lock + fsync each) than under plain Optuna; but every process replays the whole log, so it slows down with
  thousands of trials.

A worker's study goes through `worker_cache`: on SQL, Optuna's trial cache with pruning checks that read only
newly finished trials, over reads and writes in SQLAlchemy Core (`core`). benchmarks/RESULTS.md has the figures.

Credentials: write ``${VAR}`` anywhere in a URL (``postgresql://alice:${SWEEP_DB_PASSWORD}@db/sweep``) and it
is expanded from the environment when the storage is opened, in each process; a URL with a user but no
password takes `PASSWORD_ENV` (``SWEEP_DB_PASSWORD``) when that is set. The URL that is resolved, printed
and saved is the unexpanded one; workers get it with a literal password swapped for a 0600 file
(`urls.for_workers`); every message goes through `mask` / `scrub`.
"""

# One module per concern; this package re-exports what `from sweep.storage import …` has always given.
from sweep.storage.cache import WorkerCache, worker_cache
from sweep.storage.filesystems import (
    NETWORK_FS,
    StorageWarning,
    check_sqlite_location,
    filesystem_type,
    is_network_filesystem,
)
from sweep.storage.journal import SweepJournalStorage
from sweep.storage.opening import SQLITE_TIMEOUT_S, engine_options, open_storage
from sweep.storage.rdb import RetryingRDBStorage
from sweep.storage.retry import RETRY_S, call_with_retry, is_disk_full, is_transient, last_outage_end
from sweep.storage.trials import enqueue_waiting, flush_trial, pop_waiting_trial_id, set_trial_user_attrs, tell_with
from sweep.storage.urls import PASSWORD_ENV, expand_url, mask, resolve_storage, scrub, studies_dir, study_dir

__all__ = [
    "NETWORK_FS",
    "PASSWORD_ENV",
    "RETRY_S",
    "SQLITE_TIMEOUT_S",
    "RetryingRDBStorage",
    "StorageWarning",
    "SweepJournalStorage",
    "WorkerCache",
    "call_with_retry",
    "check_sqlite_location",
    "engine_options",
    "enqueue_waiting",
    "expand_url",
    "filesystem_type",
    "flush_trial",
    "is_disk_full",
    "is_network_filesystem",
    "is_transient",
    "last_outage_end",
    "mask",
    "open_storage",
    "pop_waiting_trial_id",
    "resolve_storage",
    "scrub",
    "set_trial_user_attrs",
    "studies_dir",
    "study_dir",
    "tell_with",
    "worker_cache",
]
