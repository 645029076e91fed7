"""Storage URLs: resolution, masking, credentials, network file systems, and every backend opened for real.

PostgreSQL and MariaDB are real servers (127.0.0.1:5432 and :3306 unless SWEEP_TEST_POSTGRES / SWEEP_TEST_MYSQL
say otherwise); each test gets its own database, dropped afterwards. Connections are killed on the server side
mid-sweep to prove workers reconnect; many worker processes share one budget to prove nothing is lost or doubled.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import sqlite3
import stat
import subprocess
import threading
import time
import traceback
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from conftest import sweep_cli
from optuna.storages.journal._storage import JournalOperation
from optuna.trial import TrialState
from sqlalchemy import create_engine, event
from sqlalchemy.engine import make_url

from sweep.schema import ConfigError
from sweep.search.study import pop_trial, top_up
from sweep.storage import (
    PASSWORD_ENV,
    RetryingRDBStorage,
    StorageWarning,
    WorkerCache,
    check_sqlite_location,
    expand_url,
    filesystem_type,
    flush_trial,
    is_network_filesystem,
    is_transient,
    last_outage_end,
    mask,
    open_storage,
    pop_waiting_trial_id,
    resolve_storage,
    scrub,
    set_trial_user_attrs,
    tell_with,
    worker_cache,
)

PG_ADMIN = os.environ.get("SWEEP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
MY_ADMIN = os.environ.get("SWEEP_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test")
# What a worker imports when it opens a storage, imported once in the forkserver that forks the workers.
WORKER_IMPORTS = [
    "psycopg2",
    "pymysql",
    "sqlalchemy.dialects.postgresql.psycopg2",
    "sqlalchemy.dialects.mysql.pymysql",
    "alembic.script",
    "alembic.migration",
    "optuna.storages._rdb.models",
    "optuna.storages.journal",
]
STEPS = 5  # reports (and pruning checks) per trial in the concurrency tests, like a 5-epoch trainer


# ---- resolution, masking, credentials (no server) -------------------------------------------------------


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
    monkeypatch.setenv("SWEEP_STORAGE", "postgresql://u:${PW}@db/x")
    assert resolve_storage("s") == "postgresql://u:${PW}@db/x"  # expanded only when opened


def test_mask_hides_passwords() -> None:
    assert mask("postgresql://alice:s3cret@db:5432/x") == "postgresql://alice:***@db:5432/x"
    assert mask("mysql+pymysql://bob@db/x") == "mysql+pymysql://bob@db/x"
    assert mask("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"
    assert mask("postgresql://alice:p@ss:w/rd@db/x") == "postgresql://alice:***@db/x"  # raw '@' in a password
    assert mask("postgresql://alice:${SWEEP_DB_PASSWORD}@db/x") == "postgresql://alice:***@db/x"
    assert mask("postgresql://alice@db/x?sslmode=require&password=s3cret") == (
        "postgresql://alice@db/x?sslmode=require&password=***"
    )
    assert mask("postgresql://db/x?options=a@b") == "postgresql://db/x?options=a@b"


def test_scrub_masks_urls_and_the_password_in_driver_messages() -> None:
    url = "postgresql://alice:s3cr%40t@db/x"
    text = "could not parse 'postgresql://alice:s3cr%40t@db/x'; password s3cr@t rejected (dsn password=s3cr%40t)"
    clean = scrub(text, url)
    assert "s3cr" not in clean
    assert "postgresql://alice:***@db/x" in clean


def test_expand_url_takes_passwords_from_the_environment() -> None:
    env = {"PW": "p@ss:w/rd", "HOST": "db.cluster", PASSWORD_ENV: "fallback"}
    assert expand_url("postgresql://alice:${PW}@${HOST}/x", env) == "postgresql://alice:p%40ss%3Aw%2Frd@db.cluster/x"
    assert make_url(expand_url("postgresql://alice:${PW}@db/x", env)).password == "p@ss:w/rd"
    assert expand_url("mysql+pymysql://alice@db/x", env) == "mysql+pymysql://alice:fallback@db/x"
    assert expand_url("postgresql://alice:given@db/x", env) == "postgresql://alice:given@db/x"
    assert expand_url("postgresql://db/x", env) == "postgresql://db/x"  # no user: libpq's own defaults apply
    assert expand_url("sqlite:////tmp/x.db", env) == "sqlite:////tmp/x.db"
    with pytest.raises(ConfigError, match=r"uses \$\{NOPE\}, but NOPE is not set") as err:
        expand_url("postgresql://alice:${NOPE}@db/x", env)
    assert "postgresql://alice:***@db/x" in str(err.value)


def test_a_literal_password_goes_to_a_private_file_for_the_workers(tmp_path: Path) -> None:
    from sweep.storage.urls import PASSWORD_FILE, for_workers

    url = "postgresql://alice:p%40ss:w/rd@db/x"
    handed = for_workers(url, tmp_path / "study")
    secret = tmp_path / "study" / PASSWORD_FILE
    assert "p%40ss" not in handed and "p@ss" not in handed and str(secret) in handed
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and secret.read_text() == "p@ss:w/rd"
    assert expand_url(handed) == "postgresql://alice:p%40ss%3Aw%2Frd@db/x" and mask(handed) == mask(url)
    for kept in ("postgresql://alice:${PW}@db/x", "postgresql://alice@db/x", "sqlite:////tmp/x.db"):
        assert for_workers(kept, tmp_path / "other") == kept  # nothing literal: nothing written
    assert not (tmp_path / "other").exists()
    odd = for_workers("postgresql://alice:pw1@db/x", tmp_path / "a st@dy")  # an '@' in the folder's path
    assert expand_url(odd) == "postgresql://alice:pw1@db/x"
    secret.unlink()
    with pytest.raises(ConfigError, match=rf"takes its password from {secret}, which cannot be read"):
        expand_url(handed)


def test_a_raw_at_in_a_password_is_refused_saying_how_to_encode_it() -> None:
    for url, fixed in (
        ("postgresql://u:SEC@RETPW@127.0.0.1/test", "postgresql://u:***%40***@127.0.0.1/test"),
        ("mysql+pymysql://u:Sx1@Ry2@Tz3@db/x", "mysql+pymysql://u:***%40***%40***@db/x"),
    ):
        with pytest.raises(ConfigError, match="raw '@' in its user name or password") as err:
            expand_url(url, {})
        assert f"('@' → %40, and '%' → %25), as in {fixed}," in str(err.value)
        assert not [part for part in ("SEC", "RETPW", "Sx1", "Ry2", "Tz3") if part in str(err.value)]
    assert expand_url("postgresql://u:pw@db/x?options=a@b", {}) == "postgresql://u:pw@db/x?options=a@b"
    assert mask("postgresql://u:pw@db/x?options=a@b") == "postgresql://u:***@db/x?options=a@b"


def test_scrub_removes_every_part_of_a_password_a_driver_split_at_its_first_at() -> None:
    """A real driver error: psycopg2 reads `SEC` as the password and `RETPW@127.0.0.1` as the host name."""
    url = "postgresql://u:SEC@RETPW@127.0.0.1:5432/test"
    with pytest.raises(Exception) as err:
        create_engine(url.replace("postgresql://", "postgresql+psycopg2://")).connect()
    assert "RETPW" in str(err.value)  # what the driver says
    clean = scrub(str(err.value), url)
    assert "RETPW" not in clean and "SEC" not in clean and "***@127.0.0.1" in clean


# ---- network file systems ---------------------------------------------------------------------------------

MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
proc /proc proc rw 0 0
fs1:/export/home /home nfs4 rw,vers=4.2 0 0
/dev/sdb1 /home/alice/local\\040disk ext4 rw 0 0
fs2@tcp:/scratch /scratch lustre rw 0 0
//nas/share /mnt/nas cifs rw 0 0
/dev/sdc1 /mnt/nasty xfs rw 0 0
"""


def test_filesystem_type_is_the_longest_mount_prefix(tmp_path: Path) -> None:
    assert filesystem_type("/home/alice/studies/s", MOUNTS) == "nfs4"
    assert filesystem_type("/home/alice/local disk/s", MOUNTS) == "ext4"  # a local disk mounted inside NFS
    assert filesystem_type("/home2/x", MOUNTS) == "ext4"  # /home is not a prefix of /home2
    assert filesystem_type("/mnt/nasty/x", MOUNTS) == "xfs"
    assert [is_network_filesystem(p, MOUNTS) for p in ("/scratch/u/s", "/mnt/nas/s", "/tmp/s", "/")] == [
        True,
        True,
        False,
        False,
    ]
    assert filesystem_type(tmp_path) is not None  # the real /proc/mounts


def test_sqlite_on_a_network_file_system_warns(home: Path) -> None:
    with pytest.warns(StorageWarning, match=r"network file system \(nfs4\).*journal:///"):
        assert check_sqlite_location("/home/alice/studies/s", MOUNTS)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StorageWarning)
        assert not check_sqlite_location("/tmp/studies/s", MOUNTS)
        assert not is_network_filesystem(home)
        open_storage(resolve_storage("local"))  # on this machine's local disk: no warning


# ---- SQLite and journal -----------------------------------------------------------------------------------


def test_sqlite_storage_uses_wal(home: Path) -> None:
    url = resolve_storage("w")
    storage = open_storage(url)
    assert isinstance(storage, RetryingRDBStorage)
    optuna.create_study(study_name="w", storage=storage)
    with sqlite3.connect(home / "studies" / "w" / "study.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_journal_storage_opens(home: Path) -> None:
    url = resolve_storage("j", cli="journal:///j/study.log")
    optuna.create_study(study_name="j", storage=open_storage(url)).optimize(lambda t: 1.0, n_trials=2)
    assert (home / "j" / "study.log").stat().st_size > 0


def test_journal_file_under_concurrent_writers_loses_nothing(home: Path) -> None:
    url = resolve_storage("jc", cli="journal:///shared/study.log")
    run = run_workers(url, "jc", n_workers=8, budget=48)
    assert_exact(run, budget=48)
    report("journal", run)


def test_a_worker_pops_from_its_own_index_among_the_waiting_trials(home: Path) -> None:
    """Outside SQL (which skips locked rows) workers that pop at once must not all race for the first waiting
    trial: each begins at its index, wrapping round; index 0 keeps Optuna's order."""
    study = optuna.create_study(study_name="rot", storage=open_storage(f"journal:///{home}/rot.log"))
    top_up(study, 5)
    claimed = [pop_trial(study, start=start).number for start in (2, 0, 7, 0, 0)]
    # waiting 0-4: the 3rd is 2; then 0; then [1,3,4][7 % 3] = 3; then 1; then 4
    assert claimed == [2, 0, 3, 1, 4] and pop_trial(study, start=3) is None
    log = [json.loads(line) for line in (home / "rot.log").read_text().splitlines()]
    claims = [r for r in log if r["op_code"] == JournalOperation.SET_TRIAL_STATE_VALUES and r["state"] == 0]
    assert len(claims) == 5  # one append a claim: none lost


# ---- bad input ----------------------------------------------------------------------------------------------


def test_bad_storage_urls_are_clear_and_masked() -> None:
    with pytest.raises(ConfigError, match="unknown storage URL redis://"):
        open_storage("redis://localhost")
    started = time.monotonic()
    for url in ("postgresql://alice:s3cret@127.0.0.1:1/nosuch", "mysql+pymysql://alice:s3cret@127.0.0.1:1/nosuch"):
        with pytest.raises(ConfigError) as err:
            open_storage(url)
        assert f"cannot open storage {mask(url)}: cannot reach the database server" in str(err.value)
        assert "s3cret" not in str(err.value)
    assert time.monotonic() - started < 10
    with pytest.raises(ConfigError, match="no database driver for mysql\\+mysqldb://"):
        open_storage("mysql+mysqldb://alice:s3cret@127.0.0.1/x")


def test_an_in_memory_sqlite_database_is_refused(home: Path, tiny_file: Path) -> None:
    """An in-memory database lives in one connection of one process: the workers would never see the study."""
    for url in ("sqlite:///:memory:", "sqlite://", "sqlite:///file::memory:?cache=shared"):
        with pytest.raises(ConfigError, match="in-memory SQLite database.*sqlite:///PATH"):
            open_storage(url)
        with pytest.raises(ConfigError, match="in-memory SQLite database"):
            resolve_storage("s", cli=url)  # every command, before it looks for the study
    cli = sweep_cli("launch", str(tiny_file), "--storage", "sqlite:///:memory:", cwd=home, timeout=120)
    assert cli.returncode == 2, cli.stderr
    assert "sweep: error:" in cli.stderr and "in-memory SQLite database" in cli.stderr
    cli = sweep_cli("status", "s", "--storage", "sqlite:///:memory:", cwd=home, timeout=120)
    assert cli.returncode == 2 and "in-memory SQLite database" in cli.stderr, cli.stderr


def test_file_urls_with_a_root_folder_as_relative_path_are_refused_with_both_spellings(
    home: Path, tiny_file: Path
) -> None:
    """After the three slashes the path is as written (SQLAlchemy's sqlite rule, for the journal too), so
    journal:///tmp/x.log would be the working directory's tmp/x.log: refused, naming both spellings."""
    for scheme in ("journal:///", "sqlite:///"):
        with pytest.raises(ConfigError) as err:
            resolve_storage("s", cli=f"{scheme}tmp/x.log")
        assert f"write {scheme}/tmp/x.log for /tmp/x.log, or {scheme}./tmp/x.log for {home}/tmp/x.log" in str(
            err.value
        )
        assert resolve_storage("s", cli=f"{scheme}//tmp/x.log") == f"{scheme}/tmp/x.log"
        assert resolve_storage("s", cli=f"{scheme}./tmp/x.log") == f"{scheme}{home}/tmp/x.log"
        assert resolve_storage("s", cli=f"{scheme}runs/x.log") == f"{scheme}{home}/runs/x.log"
    absolute = home / "abs" / "study.log"
    storage = open_storage(resolve_storage("s", cli=f"journal:///{absolute}"))  # four slashes: absolute
    optuna.create_study(study_name="s", storage=storage)
    assert absolute.stat().st_size > 0
    cli = sweep_cli("status", str(tiny_file), "--storage", "journal:///tmp/x.log", cwd=home, timeout=120)
    assert cli.returncode == 2, cli.stderr
    assert "journal:////tmp/x.log" in cli.stderr and not (home / "tmp").exists()


def test_missing_database_says_so(pg: Server) -> None:
    url = pg.url(database=f"{pg.database}_nosuch")
    with pytest.raises(ConfigError, match="does not exist; create the database first"):
        open_storage(url)


def test_wrong_password_is_a_clear_config_error_before_any_job(
    mysql: Server, home: Path, tiny_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On MariaDB: this machine's PostgreSQL trusts every 127.0.0.1 login (pg_hba.conf), so any password works."""
    user = mysql.create_user("right-Pa55")
    url = mysql.url(user=user, password="${SWEEP_TEST_PW}")
    for wrong in (url.replace("${SWEEP_TEST_PW}", "wrong-Pa55"), url):
        monkeypatch.setenv("SWEEP_TEST_PW", "wrong-Pa55")
        with pytest.raises(ConfigError) as err:
            open_storage(wrong)
        assert "the server refused the login" in str(err.value) and "Access denied" in str(err.value)
        assert f"{user}:***@" in str(err.value) and "wrong-Pa55" not in str(err.value)

    cli = sweep_cli("launch", str(tiny_file), "--storage", url, cwd=home, env={"SWEEP_TEST_PW": "wrong-Pa55"})
    assert cli.returncode == 2, cli.stderr
    assert "sweep: error:" in cli.stderr and "refused the login" in cli.stderr
    assert "wrong-Pa55" not in cli.stderr + cli.stdout
    assert not (home / "studies" / "tiny" / "logs").exists()  # nothing was submitted

    monkeypatch.setenv("SWEEP_TEST_PW", "right-Pa55")
    optuna.create_study(study_name="pw", storage=open_storage(url))
    monkeypatch.setenv(PASSWORD_ENV, "right-Pa55")  # a password-less URL takes SWEEP_DB_PASSWORD
    assert optuna.load_study(study_name="pw", storage=open_storage(mysql.url(user=user)))


def test_password_never_reaches_attrs_or_logs(
    mysql: Server, tiny_config: dict, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from sweep.run.launch import create_or_resume

    user = mysql.create_user("Secret-Pa55")
    monkeypatch.setenv(PASSWORD_ENV, "Secret-Pa55")
    url = mysql.url(user=user, password=f"${{{PASSWORD_ENV}}}")
    config = {**tiny_config, "storage": url}
    storage = open_storage(url, retry_s=30)
    study = create_or_resume(config, storage, url)
    top_up(study, 2)
    trial = pop_trial(study)
    mysql.kill_all()  # a retry is logged: its message must not carry the password either
    kill_on_next_write(storage, mysql)
    with caplog.at_level(logging.WARNING, logger="sweep.storage"):
        study.tell(trial, 1.0)
    assert "retrying" in caplog.text and "Secret-Pa55" not in caplog.text
    stored = optuna.load_study(study_name=study.study_name, storage=storage)
    text = json.dumps(
        [
            stored.user_attrs,
            storage.get_study_system_attrs(stored._study_id),
            [(t.user_attrs, t.system_attrs) for t in stored.trials],
        ],
        default=str,
    )
    assert "Secret-Pa55" not in text


def test_a_literal_password_reaches_no_file_under_studies_and_no_database_row(
    pg: Server, home: Path, tiny_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real local launch with `--storage postgresql://USER:PASSWORD@…`: its workers read the password from a
    0600 file in the study folder; no other byte under studies/ (submitit's pickles and logs, trial configs) nor
    the database holds it. The study file's own `storage:` (another password, overridden by --storage) is not
    copied anywhere either. This machine's PostgreSQL trusts 127.0.0.1, so any password logs in: what is
    tested is where the literal lands."""
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    password, in_file = f"Lit3ral-{uuid.uuid4().hex[:12]}", f"InFile-{uuid.uuid4().hex[:12]}"
    user = pg.create_user(password)
    url = pg.url(user=user, password=password)
    raw = yaml.safe_load(tiny_file.read_text())
    tiny_file.write_text(yaml.safe_dump({**raw, "storage": pg.url(user=user, password=in_file)}, sort_keys=False))

    out = sweep_cli("launch", str(tiny_file), "--storage", url, "--trials", "2", cwd=home)
    assert out.returncode == 0, out.stdout + out.stderr
    trials = optuna.load_study(study_name="tiny", storage=open_storage(url)).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    study = home / "studies" / "tiny"
    secret = study / "storage-password"
    assert secret.read_text() == password and stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE((study / "logs").stat().st_mode) == 0o700
    files = [p for p in (home / "studies").rglob("*") if p.is_file() and p != secret]
    assert any(p.name.endswith("_submitted.pkl") for p in files) and any(p.name == "config.yaml" for p in files)
    leaks = [str(p) for p in files for s in (password, in_file) if s.encode() in p.read_bytes()]
    assert not leaks
    assert password not in out.stdout + out.stderr
    admin = make_url(PG_ADMIN)
    dump = subprocess.run(
        ["pg_dump", "-h", admin.host, "-p", str(admin.port or 5432), "-U", admin.username, pg.database],
        capture_output=True, check=True,
    ).stdout
    assert b"sweep_config" in dump and b'"name": "tiny"' in dump  # the dump holds the study and its config
    assert password.encode() not in dump and in_file.encode() not in dump


def test_a_raw_at_in_a_password_never_reaches_a_message_of_status_or_launch(
    pg: Server, home: Path, tiny_file: Path
) -> None:
    """The driver would split `SEC@RETPW` at its first '@' and print `RETPW@127.0.0.1` as a host it cannot find;
    sweep refuses the URL before connecting and shows where %40 goes; the encoded URL then works."""
    user = pg.create_user("SEC@RETPW")
    url = pg.url(user=user, password="SEC@RETPW")
    for args in (("status", "tiny"), ("launch", str(tiny_file))):
        out = sweep_cli(*args, "--storage", url, cwd=home)
        assert out.returncode == 2, out.stdout + out.stderr
        assert "SEC" not in out.stdout + out.stderr and "RETPW" not in out.stdout + out.stderr
        assert f"percent-encode it ('@' → %40, and '%' → %25), as in postgresql://{user}:***%40***@" in out.stderr
    assert not (home / "studies").exists()
    optuna.create_study(study_name="encoded", storage=open_storage(url.replace("SEC@RETPW", "SEC%40RETPW")))


# ---- dropped connections --------------------------------------------------------------------------------


def _sqlite_error(tmp: Path, statement: str, *setup: str) -> Exception:
    """The real error SQLAlchemy raises when SQLite runs `statement` (after `setup`) on a fresh file."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(f"sqlite:///{tmp}/{uuid.uuid4().hex}.db", connect_args={"timeout": 0})
    try:
        with engine.begin() as conn:
            for s in setup:
                conn.exec_driver_sql(s)
            conn.exec_driver_sql(statement)
    except sqlalchemy.exc.SQLAlchemyError as exc:
        return exc
    finally:
        engine.dispose()
    raise AssertionError(f"{statement} ran")


def test_only_errors_that_go_away_by_themselves_are_retried(tmp_path: Path, pg: Server) -> None:
    """An allow-list: a busy SQLite file, a lock wait timeout, a dropped connection are retried; a query over
    SQLite's bound-variable limit, a full database, a missing table, a statement timeout are not."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/v.db")
    with pytest.raises(sqlalchemy.exc.OperationalError, match="too many SQL variables") as variables:
        with engine.connect() as conn:
            conn.exec_driver_sql(f"SELECT 1 WHERE 1 IN ({','.join('?' * 300000)})", tuple(range(300000)))
    engine.dispose()
    full = _sqlite_error(tmp_path, "INSERT INTO t VALUES (randomblob(100000))",
                         "CREATE TABLE t (b BLOB)", "PRAGMA max_page_count = 8")
    assert "database or disk is full" in str(full)
    missing = _sqlite_error(tmp_path, "SELECT * FROM studies")
    locked_path = tmp_path / "locked.db"
    holder = sqlite3.connect(locked_path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        engine = sqlalchemy.create_engine(f"sqlite:///{locked_path}", connect_args={"timeout": 0})
        with pytest.raises(sqlalchemy.exc.OperationalError, match="database is locked") as busy:
            with engine.begin() as conn:
                conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        engine.dispose()
    finally:
        holder.close()
    engine = sqlalchemy.create_engine(pg.url().replace("postgresql://", "postgresql+psycopg2://"))
    holder = engine.raw_connection()  # a second connection, holding a lock on the table
    holder.cursor().execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
    holder.commit()
    holder.cursor().execute("LOCK TABLE t")  # psycopg2 opened a transaction: the lock is held until close
    try:
        with pytest.raises(sqlalchemy.exc.OperationalError, match="lock timeout") as lock_wait:
            with engine.begin() as conn:
                conn.exec_driver_sql("SET lock_timeout = '50ms'; UPDATE t SET x = 2")
        with pytest.raises(sqlalchemy.exc.OperationalError, match="statement timeout") as cancelled:
            with engine.begin() as conn:
                conn.exec_driver_sql("SET statement_timeout = '10ms'; SELECT pg_sleep(5)")
    finally:
        holder.close()
        engine.dispose()
    assert [is_transient(e) for e in (busy.value, lock_wait.value)] == [True, True]
    assert [is_transient(e) for e in (variables.value, full, missing, cancelled.value)] == [False] * 4
    wrapped = optuna.exceptions.StorageInternalError("An exception is raised during the commit.")
    wrapped.__cause__ = full  # how Optuna's session scope hands it on
    assert not is_transient(wrapped)


def test_an_id_list_over_the_bind_limit_is_read_without_retrying(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Optuna's cache may hold more unfinished trial ids than SQLite binds in one query (its own test asks for
    500000): sweep reads from the oldest of them on instead, and nothing is retried."""
    storage = open_storage(f"sqlite:///{home}/ids.db", retry_s=1)
    study = optuna.create_study(study_name="ids", storage=storage)
    trial_id = storage.create_new_trial(study._study_id)
    with caplog.at_level(logging.WARNING, logger="sweep.storage"):
        trials = storage._get_trials(study._study_id, None, set(range(500000)), trial_id + 500000)
    assert [t._trial_id for t in trials] == [trial_id]
    assert "retrying" not in caplog.text


def test_a_worker_may_wait_for_a_restarting_server(pg: Server) -> None:
    """The launcher fails at once on an unreachable server; a worker (wait_s > 0) waits for it to come back."""
    pg.refuse_connections_for(2.0)
    with pytest.raises(ConfigError, match="cannot reach the database server"):
        open_storage(pg.url())
    time.sleep(0.5)
    started = time.monotonic()
    open_storage(pg.url(), wait_s=30)
    assert time.monotonic() - started > 0.5


def test_plain_optuna_dies_when_postgres_drops_its_connection(pg: Server) -> None:
    """Why sweep wraps RDBStorage: Optuna 5 neither pre-pings PostgreSQL connections nor retries reads."""
    plain = optuna.storages.RDBStorage(pg.url().replace("postgresql://", "postgresql+psycopg2://"))
    study = optuna.create_study(study_name="plain", storage=plain)
    assert pg.kill_all() >= 1
    with pytest.raises(optuna.exceptions.StorageInternalError) as err:
        study.ask()
    assert is_transient(err.value)


def test_postgres_workers_survive_dropped_connections_and_a_restart(
    pg: Server, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWEEP_TEST_PW", "Pa55-word")
    storage = open_storage(pg.url(password="${SWEEP_TEST_PW}"), retry_s=60)  # trust auth ignores the password
    assert storage.engine.pool.size() == 1 and storage.engine.pool._pre_ping
    assert storage.engine.dialect.driver == "psycopg2"  # a bare postgresql:// URL, whatever SQLAlchemy's default
    with caplog.at_level(logging.WARNING, logger="sweep.storage"):
        survive_dropped_connections(pg, storage)
        pg.refuse_connections_for(2.0)  # what a restart looks like to a worker: killed, then refused for a while
        started = time.monotonic()
        trial = pop_trial(optuna.load_study(study_name="drops", storage=storage))
        assert time.monotonic() - started > 1.5
        trial.report(0.5, 0)
        trial.study.tell(trial, 5.0)
    assert "not currently accepting connections" in caplog.text and "Pa55" not in caplog.text
    assert time.time() - last_outage_end() < 10  # stale-trial recovery can tell that heartbeats just resumed
    assert_final(storage, "drops", {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0, 5: 5.0})


def test_mariadb_workers_survive_killed_connections(mysql: Server) -> None:
    storage = open_storage(mysql.url(), retry_s=60)
    assert storage.engine.dialect.driver == "pymysql"
    survive_dropped_connections(mysql, storage)
    study = optuna.load_study(study_name="drops", storage=storage)
    trial = pop_trial(study)
    study.tell(trial, 5.0)
    assert_final(storage, "drops", {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0, 5: 5.0})


def test_a_finished_trial_whose_commit_answer_was_lost_is_not_finished_twice(pg: Server) -> None:
    """The one ambiguous failure: the COMMIT of `tell` reached the server, its answer did not. The retry finds
    the trial already finished with the same state and value: success, not UpdateFinishedTrialError."""
    import sqlalchemy.exc

    storage = open_storage(pg.url(), retry_s=30)
    study = optuna.create_study(study_name="lost", storage=storage)
    top_up(study, 1)
    trial = pop_trial(study)
    finishing, lost = [], []

    def before_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        finishing.append(statement.startswith("UPDATE trials SET state"))

    def on_commit(conn: Any) -> None:  # just before SQLAlchemy sends COMMIT: send it, then lose the answer
        if any(finishing) and not lost:
            dbapi = conn.connection.dbapi_connection
            dbapi.commit()
            lost.append(pg.kill(pg.backend_id(dbapi)))
            raise sqlalchemy.exc.OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))
        finishing.clear()

    event.listen(storage.engine, "before_cursor_execute", before_execute)
    event.listen(storage.engine, "commit", on_commit)
    study.tell(trial, 0.25)
    assert lost
    (final,) = optuna.load_study(study_name="lost", storage=storage).get_trials()
    assert final.state == TrialState.COMPLETE and final.value == 0.25


def survive_dropped_connections(server: Server, storage: optuna.storages.BaseStorage) -> None:
    """Trials 0–3 complete with values 1–4 while the server kills this process's connections, idle ones and
    ones in the middle of a transaction; trial 4 is voided, trial 5 is left WAITING."""
    study = optuna.create_study(study_name="drops", storage=storage)
    assert top_up(study, 5) == 5
    trial = pop_trial(study)
    trial.report(0.1, 0)
    assert server.kill_all() >= 1  # idle in the pool: pre-ping replaces it
    trial.report(0.2, 1)
    assert not trial.should_prune()
    study.tell(trial, 1.0)
    # killed between the row lock and the write, before the commit: in a pop, a report, a tell
    killed = kill_on_next_write(storage, server)
    trial = pop_from_storage(study)
    assert killed and trial.number == 1, "the pop's connection was not killed mid-transaction"
    trial.report(0.2, 0)
    study.tell(trial, 2.0)
    trial = pop_trial(study)
    killed = kill_on_next_write(storage, server)
    trial.report(0.3, 0)
    assert killed, "the report's connection was not killed mid-transaction"
    study.tell(trial, 3.0)
    trial = pop_trial(study)
    trial.report(0.4, 0)
    killed = kill_on_next_write(storage, server)
    study.tell(trial, 4.0)
    assert killed, "the tell's connection was not killed mid-transaction"
    new = study.ask()  # Optuna's ask (it pops trial 4); voided, so it does not count
    new.set_user_attr("sweep_void", "test")
    study.tell(new, state=TrialState.FAIL)
    assert top_up(study, 5) == 1


def assert_final(storage: optuna.storages.BaseStorage, name: str, values: dict[int, float]) -> None:
    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    counted = [t for t in trials if "sweep_void" not in t.user_attrs]
    assert {t.number: t.value for t in counted} == values
    assert all(t.state == TrialState.COMPLETE for t in counted)
    assert len({t.number for t in trials}) == len(trials)


# ---- many workers, one budget ---------------------------------------------------------------------------


def test_32_workers_share_one_budget_on_postgres(pg: Server) -> None:
    max_connections = int(pg.sql("SHOW max_connections")[0][0])
    run = run_workers(pg.url(), "many", n_workers=32, budget=96, server=pg)
    assert_exact(run, budget=96)
    assert run.peak_connections <= 32 + 1 < max_connections  # one per worker process, one for this one
    report("postgresql", run)


def test_8_workers_share_one_budget_on_mariadb(mysql: Server) -> None:
    run = run_workers(mysql.url(), "many", n_workers=8, budget=32, server=mysql)
    assert_exact(run, budget=32)
    report("mariadb", run)


def test_8_workers_share_one_budget_on_sqlite(home: Path) -> None:
    """Plain Optuna lets two SQLite workers pop the same WAITING trial (no FOR UPDATE); sweep's storage not."""
    run = run_workers(resolve_storage("many"), "many", n_workers=8, budget=32)
    assert_exact(run, budget=32)
    report("sqlite", run)


@pytest.mark.parametrize("backend", ["pg", "mysql", "sqlite"])
def test_one_transaction_pop_under_concurrency(backend: str, request: pytest.FixtureRequest) -> None:
    """`pop_waiting_trial_id`, the pop sweep.search.study.pop_trial could use: one locking read, no failed claims."""
    server = request.getfixturevalue(backend) if backend != "sqlite" else None
    url = server.url() if server else resolve_storage("pop", cli=f"sqlite:///{request.getfixturevalue('home')}/p.db")
    run = run_workers(url, "pop", n_workers=8, budget=32, server=server, pop="storage")
    assert_exact(run, budget=32)
    report(f"{backend} one-transaction pop", run)


@dataclass
class Run:
    trials: list[optuna.trial.FrozenTrial]
    told: dict[int, float]
    per_worker: list[tuple[int, float]]  # (trials, seconds) of each worker
    exit_codes: list[int]
    errors: list[str]
    seconds: float
    startup: float = 0.0
    peak_connections: int = 0
    retries: list[str] = field(default_factory=list)


def run_workers(
    url: str, name: str, n_workers: int, budget: int, server: Server | None = None, pop: str = "study"
) -> Run:
    """`n_workers` processes drain one study of `budget` WAITING trials.

    Forked from a forkserver that imported this module (spawning 32 interpreters that each import Optuna and
    SQLAlchemy took ~30 s of 2 cores): it is a fresh process that never opened a connection, so each worker
    connects on its own, as a submitit worker does.
    """
    study = optuna.create_study(study_name=name, storage=open_storage(url))
    assert top_up(study, budget) == budget
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__, *WORKER_IMPORTS])
    begun = time.perf_counter()
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=drain, args=(url, name, pop, i, ready, go, results)) for i in range(n_workers)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)  # every worker imported and connected: time only the storage work
    startup = time.perf_counter() - begun
    peak, stop = [0], threading.Event()
    watcher = threading.Thread(target=watch_connections, args=(server, peak, stop), daemon=True)
    watcher.start()
    started = time.perf_counter()
    go.set()
    outcomes = [results.get(timeout=300) for _ in procs]
    seconds = time.perf_counter() - started
    stop.set()
    for p in procs:
        p.join(timeout=60)
    watcher.join()
    told = {number: value for outcome in outcomes for number, value in outcome["told"]}
    return Run(
        trials=optuna.load_study(study_name=name, storage=open_storage(url)).get_trials(),
        told=told,
        per_worker=[(len(o["told"]), o["seconds"]) for o in outcomes],
        exit_codes=[p.exitcode for p in procs],
        errors=[o["error"] for o in outcomes if o["error"]],
        seconds=seconds,
        startup=startup,
        peak_connections=peak[0],
        retries=[line for o in outcomes for line in o["retries"]],
    )


def drain(url: str, name: str, pop: str, index: int, ready: Any, go: Any, results: Any) -> None:
    """A worker without the training: pop → report + should_prune per step → tell, until the budget is used.
    Worker `index` begins looking for a waiting trial at the index-th, as sweep's workers do."""
    told: list[tuple[int, float]] = []
    retries: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: retries.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("sweep.storage").addHandler(handler)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seconds, error, is_ready = 0.0, None, False
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(url, retry_s=60))
        ready.put(os.getpid())
        is_ready = True
        go.wait()
        started = time.perf_counter()
        while (trial := pop_trial(study, start=index) if pop == "study" else pop_from_storage(study)) is not None:
            for step in range(STEPS):
                trial.report(trial.number + step / 10, step)
                trial.should_prune()
            value = trial.number * 1.5
            study.tell(trial, value)
            told.append((trial.number, value))
        seconds = time.perf_counter() - started
    except BaseException:
        error = traceback.format_exc()
        if not is_ready:
            ready.put(os.getpid())
    results.put({"told": told, "seconds": seconds, "error": error, "retries": retries})
    if error:
        raise SystemExit(1)


def pop_from_storage(study: optuna.Study) -> optuna.Trial | None:
    trial_id = pop_waiting_trial_id(study)
    return None if trial_id is None else optuna.Trial(study, trial_id)


def watch_connections(server: Server | None, peak: list[int], stop: threading.Event) -> None:
    while server is not None and not stop.wait(0.1):
        peak[0] = max(peak[0], server.connections())


def assert_exact(run: Run, budget: int) -> None:
    assert run.errors == [] and run.exit_codes == [0] * len(run.exit_codes)
    assert len(run.trials) == budget
    assert [t.number for t in run.trials] == list(range(budget))  # none doubled, none skipped
    assert all(t.state == TrialState.COMPLETE for t in run.trials)
    assert {t.number: t.value for t in run.trials} == run.told  # every told value stored, each by one worker
    assert sum(n for n, _ in run.per_worker) == budget
    for t in run.trials:
        assert t.intermediate_values == {step: t.number + step / 10 for step in range(STEPS)}


def report(backend: str, run: Run) -> None:
    """The storage overhead, as benchmarks/storage_overhead.py measures it: one worker's wall time per trial."""
    workers, trials = len(run.per_worker), len(run.trials)
    print(
        f"\nstorage {backend}: {workers} workers, {trials} trials in {run.seconds:.2f} s = "
        f"{trials / run.seconds:.1f} trials/s, {1000 * workers * run.seconds / trials:.0f} ms per trial per worker; "
        f"peak connections {run.peak_connections}; retries logged {len(run.retries)}; "
        f"workers started and connected in {run.startup:.1f} s"
    )
    for line in run.retries[:5]:
        print(f"  retry: {line}")


# ---- a trial's writes batched, reads cached -------------------------------------------------------------


def _url_for(backend: str, request: pytest.FixtureRequest) -> str:
    if backend in ("pg", "mysql"):
        return request.getfixturevalue(backend).url()
    home = request.getfixturevalue("home")
    return f"sqlite:///{home}/b.db" if backend == "sqlite" else f"journal:///{home}/b.log"


def _commits(storage: Any) -> list[int]:
    """A counter of the storage's writes: transactions that wrote something (SQL), appends (the journal)."""
    count = [0]
    if isinstance(storage, optuna.storages.JournalStorage):
        append = storage._backend.append_logs

        def counted(logs: list[dict[str, Any]]) -> None:
            count[0] += 1
            append(logs)

        storage._backend.append_logs = counted
        return count
    backend = storage._backend

    def wrote(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")):
            conn.info["wrote"] = True

    def committed(conn: Any) -> None:
        count[0] += conn.info.pop("wrote", False)

    event.listen(backend.engine, "before_cursor_execute", wrote)
    event.listen(backend.engine, "commit", committed)
    return count


@pytest.mark.parametrize("backend", ["sqlite", "pg", "mysql", "journal"])
def test_a_trials_bookkeeping_rides_on_its_claim_and_its_tell(backend: str, request: pytest.FixtureRequest) -> None:
    """The worker's attributes go in with the claim and with the tell (one transaction each on SQL, one append
    on the journal), and plain Optuna reads them back; a trial finished meanwhile takes none of them."""
    url = _url_for(backend, request)
    study = optuna.create_study(study_name="batch", storage=open_storage(url), direction="maximize")
    top_up(study, 3)
    commits = _commits(study._storage)
    trial = pop_trial(study, lambda number: {"trial_dir": f"/trials/{number}", "host": "n1", "versions": {"a": "1"}})
    # the claim and its attributes: one transaction; on the journal the claim must be replayed (another worker
    # may have won it) on its own, and its attributes wait for the trial's params: one more append for all
    assert commits[0] == 1
    assert trial.user_attrs["trial_dir"] == "/trials/0"  # what the worker holds back, it sees
    trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    trial.suggest_categorical("width", [8, 16])
    flush_trial(study, trial)
    assert commits[0] == (2 if backend == "journal" else 3)  # SQL: one transaction per param, as Optuna's
    trial.report(0.5, 0)
    before = commits[0]
    tell_with(study, trial, {"config": {"train": {"lr": 0.1}}, "epochs_run": 1}, 0.75)
    assert commits[0] - before == 1  # the final state and the closing attributes
    set_trial_user_attrs(study._storage, pop_trial(study)._trial_id, {"a": 1, "b": [1, 2], "c": "x"})

    plain = optuna.load_study(study_name="batch", storage=_plain(url)).get_trials()
    assert plain[0].state == TrialState.COMPLETE and plain[0].value == 0.75
    assert plain[0].params == trial.params and set(plain[0].params) == {"lr", "width"}
    assert plain[0].user_attrs == {
        "sweep_enqueued": True, "trial_dir": "/trials/0", "host": "n1", "versions": {"a": "1"},
        "config": {"train": {"lr": 0.1}}, "epochs_run": 1,
    }
    assert plain[1].state == TrialState.RUNNING
    assert {"a": 1, "b": [1, 2], "c": "x"}.items() <= plain[1].user_attrs.items()

    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):  # finished: nothing more is written to it
        set_trial_user_attrs(study._storage, trial._trial_id, {"late": 1, "later": 2})
    third = pop_trial(study)
    third.set_user_attr("after", True)  # no error left over from the refused batch (the journal replays it)
    study.tell(third, 1.0)
    final = optuna.load_study(study_name="batch", storage=_plain(url)).get_trials()
    assert "late" not in final[0].user_attrs and "later" not in final[0].user_attrs
    assert final[2].user_attrs["after"] is True


def test_the_journal_appends_a_claims_attributes_with_its_params(home: Path) -> None:
    """On the journal a claim is one append and its attributes and params the next: held until `flush_trial` or
    the trial's next write, seen meanwhile by the worker only; a param the study refuses fails at the flush."""
    url = f"journal:///{home}/h.log"
    study = optuna.create_study(study_name="h", storage=open_storage(url), direction="maximize")
    top_up(study, 3)
    commits = _commits(study._storage)
    first = pop_trial(study, lambda n: {"trial_dir": f"/t/{n}"})
    first.suggest_float("x", 0.0, 1.0)
    held = optuna.load_study(study_name="h", storage=_plain(url)).trials[0]
    assert held.state == TrialState.RUNNING and held.params == {} and "trial_dir" not in held.user_attrs
    assert study._storage.get_trial(first._trial_id).params == first.params  # the worker sees what it holds
    first.report(0.25, 1)  # the trial's next write appends what was held, first
    assert commits[0] == 3
    seen = optuna.load_study(study_name="h", storage=_plain(url)).trials[0]
    assert seen.params == first.params and seen.user_attrs["trial_dir"] == "/t/0" and seen.intermediate_values
    study.tell(first, 0.5)

    second = pop_trial(study, lambda n: {"trial_dir": f"/t/{n}"})
    second.suggest_int("x", 0, 5)  # held, so not checked yet against the study's float "x"
    with pytest.raises(ValueError):
        flush_trial(study, second)
    study.tell(second, state=TrialState.FAIL)  # nothing of the refused record is left to surface here
    third = pop_trial(study, lambda n: {"trial_dir": f"/t/{n}"})
    third.suggest_float("x", 0.0, 1.0)
    study.tell(third, 1.0)  # the tell appends the held records before the final state
    trials = optuna.load_study(study_name="h", storage=_plain(url)).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].user_attrs["trial_dir"] == "/t/1" and "x" not in trials[1].params
    assert trials[2].params == third.params and trials[2].user_attrs["trial_dir"] == "/t/2"


def _plain(url: str) -> Any:
    if url.startswith("journal:///"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url[len("journal:///") :]))
    return url.replace("postgresql://", "postgresql+psycopg2://")


@pytest.mark.parametrize("backend", ["sqlite", "pg", "mysql"])
def test_a_workers_cached_reads_see_every_change_another_worker_makes(
    backend: str, request: pytest.FixtureRequest
) -> None:
    """sweep's pruning check reads only what finished, and every trial goes through SQLAlchemy Core: after each
    step of another worker, one worker's listings (all trials, and finished ones only, as a pruner asks, before
    and after the full one) and each `get_trial` equal a fresh read by plain Optuna, field by field (params of
    every kind, NaN and infinite values, attributes, times)."""
    _cached_reads_match_fresh_ones(_url_for(backend, request))


def test_cached_reads_match_with_more_unfinished_trials_than_one_query_binds(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sweep.storage import rdb

    monkeypatch.setattr(rdb, "_MAX_IDS", 0)  # every pruning check takes the wider query
    _cached_reads_match_fresh_ones(f"sqlite:///{home}/wide.db")


def _cached_reads_match_fresh_ones(url: str) -> None:
    optuna.create_study(study_name="view", storage=open_storage(url), direction="maximize")
    mine = optuna.load_study(study_name="view", storage=worker_cache(open_storage(url)))
    assert isinstance(mine._storage, WorkerCache)
    other = optuna.load_study(study_name="view", storage=open_storage(url))
    top_up(other, 5)
    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)

    def same() -> None:
        fresh = optuna.load_study(study_name="view", storage=_plain(url)).get_trials()
        for states in [(TrialState.COMPLETE,), finished, None, (TrialState.COMPLETE,)]:
            seen = mine.get_trials(states=states)
            assert [_fields(t) for t in seen] == [_fields(t) for t in fresh if states is None or t.state in states]
        for t in fresh:
            assert _fields(mine._storage.get_trial(t._trial_id)) == _fields(t)

    same()  # every WAITING trial read and cached
    a = pop_trial(other, lambda n: {"trial_dir": f"/t/{n}"})
    same()
    a.suggest_float("lr", 1e-3, 1e-1, log=True)
    a.suggest_int("depth", 1, 8)
    a.suggest_categorical("model", ["cnn", None, 3])
    a.report(0.25, 1)
    a.report(float("nan"), 2)
    a.report(float("inf"), 3)
    other._storage.set_trial_system_attr(a._trial_id, "fixed_params", {"x": [1, 2]})
    same()
    other.enqueue_trial({"lr": 0.01}, user_attrs={"sweep_retry_of": 0})  # a retry appended behind the budget
    tell_with(other, a, {"epochs_run": 3, "config": {"a": [1.5, "b"]}}, 0.5)
    same()
    b = pop_trial(other)
    other._storage.set_trial_user_attr(b._trial_id, "heartbeat", 1.0)
    b.report(-float("inf"), 1)
    top_up(other, 5)  # budget lowered: the surplus WAITING trial is voided
    same()
    other.tell(b, state=TrialState.PRUNED)
    c, d = pop_trial(other), pop_trial(other)
    other.tell(d, 2.0)
    assert d.number in [t.number for t in mine.get_trials(states=(TrialState.COMPLETE,))]  # read ahead of c
    other.tell(c, float("-inf"))  # finishes below the trial the pruning listing read ahead
    same()
    while (d := pop_trial(other)) is not None:
        other.tell(d, 1.0)
    same()


_WRITE_TO_WAITING = """
import sys, optuna
from optuna.distributions import FloatDistribution
storage = optuna.storages.RDBStorage(sys.argv[1].replace("postgresql://", "postgresql+psycopg2://"))
trial_id = int(sys.argv[2])
storage.set_trial_user_attr(trial_id, "note", "from elsewhere")
storage.set_trial_system_attr(trial_id, "note", {"lr": 0.5})
storage.set_trial_param(trial_id, "lr", 0.5, FloatDistribution(0.0, 1.0))
"""


@pytest.mark.parametrize("view", ["plain_optuna", "launcher", "worker"])
@pytest.mark.parametrize("backend", ["sqlite", "pg"])
def test_what_another_process_writes_to_a_waiting_trial_shows_in_listings(
    backend: str, view: str, request: pytest.FixtureRequest
) -> None:
    """Optuna lets anyone set a WAITING trial's params and attributes without changing its state; a listing
    read after that shows them, in every view (plain Optuna's cache, the launcher's storage, a worker's)."""
    import subprocess
    import sys

    url = _url_for(backend, request)
    optuna.create_study(study_name="w", storage=open_storage(url))
    if view == "plain_optuna":
        storage = optuna.storages.get_storage(_plain(url))
    else:
        storage = open_storage(url) if view == "launcher" else worker_cache(open_storage(url))
    study = optuna.load_study(study_name="w", storage=storage)
    top_up(study, 2)
    waiting = study.get_trials()[0]
    assert waiting.state == TrialState.WAITING and not waiting.params  # read (and cached) before the writes
    subprocess.run([sys.executable, "-c", _WRITE_TO_WAITING, url, str(waiting._trial_id)], check=True)
    for seen in (study.get_trials()[0], study.get_trials(states=(TrialState.WAITING,))[0]):
        assert seen.state == TrialState.WAITING
        assert seen.user_attrs == {**waiting.user_attrs, "note": "from elsewhere"}
        assert seen.system_attrs == {**waiting.system_attrs, "note": {"lr": 0.5}}
        assert seen.params == {"lr": 0.5}


def test_a_study_that_reuses_a_deleted_studys_id_lists_only_its_own_trials(home: Path) -> None:
    """SQLite hands a deleted study's id to the next study; nothing of the deleted one may show in it."""
    storage = open_storage(f"sqlite:///{home}/d.db")
    old = optuna.create_study(study_name="old", storage=storage)
    top_up(old, 1)
    assert len(old.get_trials()) == 1
    optuna.delete_study(study_name="old", storage=storage)
    new = optuna.create_study(study_name="new", storage=storage)
    assert new._study_id == old._study_id  # the case in point
    assert new.get_trials() == []


def _fields(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """Every field of a FrozenTrial, NaN made comparable (NaN != NaN)."""
    return {k: ({s: "nan" if v != v else v for s, v in x.items()} if k == "intermediate_values" else x)
            for k, x in trial.__dict__.items()}


def test_a_missing_trial_is_a_key_error(home: Path) -> None:
    storage = open_storage(f"sqlite:///{home}/m.db")
    optuna.create_study(study_name="m", storage=storage)
    with pytest.raises(KeyError):
        storage.get_trial(12345)
    with pytest.raises(KeyError):
        storage.set_trial_intermediate_value(12345, 1, 0.5)


def test_sqlite_commits_without_an_fsync_each(home: Path) -> None:
    """WAL with synchronous=NORMAL on every connection sweep opens (the one Optuna set up the schema with too)."""
    storage = open_storage(f"sqlite:///{home}/s.db")
    with storage.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


# ---- real servers ---------------------------------------------------------------------------------------


@dataclass
class Server:
    """An admin connection to a real database server and one fresh database on it for the test."""

    admin_url: str
    database: str
    users: list[str] = field(default_factory=list)

    @property
    def is_pg(self) -> bool:
        return self.admin_url.startswith("postgres")

    def connect(self) -> Any:
        u = make_url(self.admin_url)
        if self.is_pg:
            import psycopg2

            conn = psycopg2.connect(
                host=u.host, port=u.port or 5432, user=u.username, password=u.password or "", dbname=u.database
            )
            conn.autocommit = True
            return conn
        import pymysql

        return pymysql.connect(
            host=u.host,
            port=u.port or 3306,
            user=u.username,
            password=u.password or "",
            database=u.database,
            autocommit=True,
        )

    def sql(self, statement: str, params: tuple = ()) -> list[tuple]:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(statement, params or None)
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()

    def url(self, user: str | None = None, password: str | None = None, database: str | None = None) -> str:
        u = make_url(self.admin_url)
        scheme = "postgresql" if self.is_pg else "mysql+pymysql"
        creds = user or u.username
        if password is not None:
            creds += f":{password}"
        port = f":{u.port}" if u.port else ""
        return f"{scheme}://{creds}@{u.host}{port}/{database or self.database}"

    def sessions(self) -> list[int]:
        if self.is_pg:
            query = "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
        else:
            query = "SELECT id FROM information_schema.processlist WHERE db = %s AND id <> CONNECTION_ID()"
        return [row[0] for row in self.sql(query, (self.database,))]

    def connections(self) -> int:
        return len(self.sessions())

    def kill(self, *ids: int) -> int:
        """Kill sessions on the server side and wait until they are gone."""
        for i in ids:
            try:
                self.sql(
                    "SELECT pg_terminate_backend(%s)" if self.is_pg else f"KILL {int(i)}", (i,) if self.is_pg else ()
                )
            except Exception:  # already gone
                pass
        deadline = time.monotonic() + 5
        while set(ids) & set(self.sessions()) and time.monotonic() < deadline:
            time.sleep(0.02)
        return len(ids)

    def kill_all(self) -> int:
        return self.kill(*self.sessions())

    def refuse_connections_for(self, seconds: float) -> None:
        """PostgreSQL only: kill every session and refuse new ones for a while, as a restarting server does."""
        self.sql(f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS false')
        self.kill_all()
        timer = threading.Timer(seconds, self.sql, (f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS true',))
        timer.daemon = True
        timer.start()

    def create_user(self, password: str) -> str:
        """A user with this password owning (PostgreSQL) or granted everything on (MariaDB) the test database."""
        user = f"sweep_pw_{uuid.uuid4().hex[:8]}"
        if self.is_pg:
            self.sql(f"CREATE ROLE {user} LOGIN PASSWORD %s", (password,))
            self.sql(f'ALTER DATABASE "{self.database}" OWNER TO {user}')  # PostgreSQL 15: public is the owner's
        else:
            self.sql(f"CREATE USER '{user}'@'%%' IDENTIFIED BY %s", (password,))
            self.sql(f"GRANT ALL PRIVILEGES ON `{self.database}`.* TO '{user}'@'%'")
        self.users.append(user)
        return user

    def backend_id(self, dbapi_connection: Any) -> int:
        return dbapi_connection.get_backend_pid() if self.is_pg else dbapi_connection.thread_id()


def kill_on_next_write(storage: Any, server: Server) -> list[str]:
    """Kill the storage's own connection on the server just before its next INSERT/UPDATE runs: a connection
    lost in the middle of a transaction, for real. Returns the list the killed statement is appended to."""
    killed: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not killed and statement.lstrip().upper().startswith(("UPDATE", "INSERT")):
            killed.append(statement)
            server.kill(server.backend_id(conn.connection.dbapi_connection))

    event.listen(storage.engine, "before_cursor_execute", before)
    return killed


def _server(admin_url: str) -> Iterator[Server]:
    server = Server(admin_url, f"sweep_t_{uuid.uuid4().hex[:10]}")
    try:
        server.sql(f"CREATE DATABASE {server.database}")
    except Exception as exc:
        pytest.fail(
            f"these tests need the database server at {mask(admin_url)} (set SWEEP_TEST_POSTGRES / "
            f"SWEEP_TEST_MYSQL to another one): {exc}"
        )
    try:
        yield server
    finally:
        if server.is_pg:
            server.sql(f'ALTER DATABASE "{server.database}" ALLOW_CONNECTIONS true')
            server.sql(f'DROP DATABASE "{server.database}" WITH (FORCE)')
            for user in server.users:
                server.sql(f"DROP ROLE {user}")
        else:
            server.kill_all()
            server.sql(f"DROP DATABASE `{server.database}`")
            for user in server.users:
                server.sql(f"DROP USER '{user}'@'%'")


@pytest.fixture
def pg() -> Iterator[Server]:
    yield from _server(PG_ADMIN)


@pytest.fixture
def mysql() -> Iterator[Server]:
    yield from _server(MY_ADMIN)


def test_a_trial_that_fails_after_being_handed_back_stays_handed_back(home: Path) -> None:
    """A worker whose trial another worker judged dead and retried fails it quietly: the retry's record stands."""
    from sweep.run.trial import _fail
    from sweep.search.study import VOID, retry

    study = optuna.create_study(study_name="late", storage=open_storage(f"sqlite:///{home}/l.db"))
    top_up(study, 1)
    trial = pop_trial(study)
    assert retry(study, study._storage.get_trial(trial._trial_id), "no heartbeat for 900 s", 1) == trial.number
    _fail(study, trial, "RuntimeError: boom", {"seed": 0})  # no error: the worker goes on with its next trial
    first, again = study.get_trials()
    assert first.state == TrialState.FAIL and VOID in first.user_attrs
    assert "fail_reason" not in first.user_attrs and "seed" not in first.user_attrs
    assert again.state == TrialState.WAITING


def _open_and_create(url: str, name: str) -> str:
    study = optuna.create_study(study_name=name, storage=open_storage(url))
    return study.study_name


def test_processes_creating_one_sqlite_file_at_once_share_it(home: Path) -> None:
    """A new study.db appears whole (schema made aside, then linked into place): six processes opening it at
    once never meet half-made tables ("table … already exists"), and all their studies land in one file."""
    url = f"sqlite:///{home}/new/study.db"
    with mp.get_context("spawn").Pool(6) as pool:
        names = pool.starmap(_open_and_create, [(url, f"s{i}") for i in range(6)])
    stored = {s.study_name for s in optuna.get_all_study_summaries(open_storage(url), include_best_trial=False)}
    assert stored == set(names) == {f"s{i}" for i in range(6)}
    assert sorted(p.name for p in (home / "new").iterdir() if not p.name.startswith("study.db")) == []


def test_a_literal_query_password_goes_to_a_private_file_too(tmp_path: Path) -> None:
    from sweep.storage.urls import PASSWORD_FILE, for_workers

    url = "postgresql://alice:u-secret@db/x?sslmode=disable&password=q%26secret&application_name=s"
    handed = for_workers(url, tmp_path / "study")
    assert "secret" not in handed.replace(str(tmp_path), "")
    assert (tmp_path / "study" / f"{PASSWORD_FILE}-query").read_text() == "q&secret"
    assert (tmp_path / "study" / PASSWORD_FILE).read_text() == "u-secret"
    assert stat.S_IMODE((tmp_path / "study" / f"{PASSWORD_FILE}-query").stat().st_mode) == 0o600
    assert expand_url(handed) == "postgresql://alice:u-secret@db/x?sslmode=disable&password=q%26secret&application_name=s"
