"""Where a study's trials are stored: a URL resolved the same way by every command, opened once per process.

SQLite (one machine) gets WAL and a long busy timeout; PostgreSQL / MySQL (a cluster) get a small
pre-pinged pool; `journal:///PATH` is Optuna's journal file for a shared file system without a database.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna

from sweep.config import ConfigError


def studies_dir() -> Path:
    """Home of every study's files; `SWEEP_STUDIES_DIR` moves it (e.g. to a shared file system)."""
    return Path(os.environ.get("SWEEP_STUDIES_DIR", "studies")).resolve()


def study_dir(name: str) -> Path:
    return studies_dir() / name


def resolve_storage(name: str, cli: str | None = None, config: Mapping[str, Any] | None = None) -> str:
    """`--storage`, then `SWEEP_STORAGE`, then the file's `storage:`, then SQLite under studies/NAME/."""
    for url in (cli, os.environ.get("SWEEP_STORAGE"), (config or {}).get("storage")):
        if url:
            return _absolute(url)
    return f"sqlite:///{study_dir(name) / 'study.db'}"


def _absolute(url: str) -> str:
    """File URLs made absolute here, so workers started elsewhere open the same file."""
    for scheme in ("sqlite:///", "journal:///"):
        if url.startswith(scheme) and url != scheme + ":memory:":
            return scheme + str(Path(url[len(scheme):]).resolve())
    return url


def mask(url: str) -> str:
    """The URL with any password replaced, for every message and log line."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """One storage object per process; SQLite gets WAL and a long busy timeout for several workers."""
    try:
        if url.startswith("sqlite:///"):
            path = Path(url[len("sqlite:///") :])
            path.parent.mkdir(parents=True, exist_ok=True)
            with sqlite3.connect(path, timeout=60) as db:  # WAL is a property of the file: set it once
                db.execute("PRAGMA journal_mode=WAL")
            return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
        if url.startswith(("postgresql", "mysql")):
            return optuna.storages.RDBStorage(
                url, engine_kwargs={"pool_size": 2, "max_overflow": 2, "pool_pre_ping": True, "pool_recycle": 1800}
            )
        if url.startswith("journal:///"):
            from optuna.storages.journal import JournalFileBackend

            path = Path(url[len("journal:///") :])
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    except Exception as exc:  # connection refused, bad credentials, unreadable file, …
        raise ConfigError(f"cannot open storage {mask(url)}: {mask(str(exc).splitlines()[0])}", key="storage") from None
    raise ConfigError(
        f"unknown storage URL {mask(url)}; accepted: sqlite:///PATH, postgresql://…, mysql+pymysql://…, "
        "journal:///PATH",
        key="storage",
    )
