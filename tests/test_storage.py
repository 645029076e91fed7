"""Storage URLs: resolution order, masking, and opening each backend for real."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import optuna
import pytest

from sweep.config import ConfigError
from sweep.storage import mask, open_storage, resolve_storage


def test_storage_resolution_order(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = {"storage": "sqlite:///from_file.db"}
    assert resolve_storage("s") == f"sqlite:///{home}/studies/s/study.db"
    assert resolve_storage("s", config=config) == f"sqlite:///{home}/from_file.db"  # made absolute
    monkeypatch.setenv("SWEEP_STORAGE", "postgresql://u@db/x")
    assert resolve_storage("s", config=config) == "postgresql://u@db/x"
    assert resolve_storage("s", cli="journal:///j.log", config=config) == f"journal:///{home}/j.log"
    monkeypatch.setenv("SWEEP_STUDIES_DIR", str(home / "shared"))
    monkeypatch.delenv("SWEEP_STORAGE")
    assert resolve_storage("s") == f"sqlite:///{home}/shared/s/study.db"


def test_mask_hides_passwords() -> None:
    assert mask("postgresql://alice:s3cret@db:5432/x") == "postgresql://alice:***@db:5432/x"
    assert mask("mysql+pymysql://bob@db/x") == "mysql+pymysql://bob@db/x"
    assert mask("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"


def test_sqlite_storage_uses_wal(home: Path) -> None:
    url = resolve_storage("w")
    optuna.create_study(study_name="w", storage=open_storage(url))
    with sqlite3.connect(home / "studies" / "w" / "study.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_journal_storage_opens(home: Path) -> None:
    url = resolve_storage("j", cli="journal:///j/study.log")
    optuna.create_study(study_name="j", storage=open_storage(url)).optimize(lambda t: 1.0, n_trials=2)
    assert (home / "j" / "study.log").stat().st_size > 0


def test_bad_storage_urls_are_clear_and_masked() -> None:
    with pytest.raises(ConfigError, match="unknown storage URL redis://"):
        open_storage("redis://localhost")
    with pytest.raises(ConfigError) as err:
        open_storage("postgresql://alice:s3cret@127.0.0.1:1/nosuch")
    assert "cannot open storage postgresql://alice:***@127.0.0.1:1/nosuch" in str(err.value)
    assert "s3cret" not in str(err.value)
