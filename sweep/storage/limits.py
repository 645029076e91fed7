"""How many connections a database server still takes: what `sweep launch` checks its workers against before it
submits any, so that a study with more workers than the server allows is refused with the way out (the proxy)
instead of workers failing one by one with "too many clients"."""

from __future__ import annotations

from dataclasses import dataclass

import optuna
from sqlalchemy import text

from sweep.storage.optuna_private import engine_of
from sweep.storage.rdb import RetryingRDBStorage


@dataclass(frozen=True)
class Connections:
    """A server's connection limit and what is taken of it (this process's own connection included)."""

    server: str  # "PostgreSQL", "MySQL", "MariaDB"
    limit: int  # max_connections
    reserved: int  # kept for superusers (PostgreSQL's superuser_reserved_connections + reserved_connections)
    in_use: int  # client connections open now, the one asking included

    @property
    def free(self) -> int:
        return self.limit - self.reserved - self.in_use

    def arithmetic(self) -> str:
        reserved = f" − {self.reserved} reserved for superusers" if self.reserved else ""
        return (f"{self.server} max_connections {self.limit}{reserved} − {self.in_use} in use (this launcher's "
                f"included) = {self.free} free")


_PG = text(
    "SELECT current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int, "
    "coalesce(current_setting('reserved_connections', true), '0')::int, "  # PostgreSQL ≥ 16 only
    "(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
)


def server_connections(storage: optuna.storages.BaseStorage) -> Connections | None:
    """The connection limit of the PostgreSQL or MySQL/MariaDB server behind `storage` (one query on the storage's
    own connection), None for any other storage (SQLite, the journal, a grpc:// proxy: no server-side limit that
    grows with the workers)."""
    if not isinstance(storage, RetryingRDBStorage):
        return None
    engine = engine_of(storage)
    dialect = engine.dialect.name
    if dialect not in ("postgresql", "mysql", "mariadb"):
        return None
    with engine.connect() as conn:
        if dialect == "postgresql":
            limit, superuser, reserved, in_use = conn.execute(_PG).one()
            return Connections("PostgreSQL", limit, superuser + reserved, in_use)
        limit = conn.execute(text("SELECT @@max_connections")).scalar_one()
        in_use = conn.execute(text("SHOW GLOBAL STATUS LIKE 'Threads_connected'")).one()[1]
        server = "MariaDB" if getattr(engine.dialect, "is_mariadb", False) else "MySQL"
        return Connections(server, int(limit), 0, int(in_use))
