"""A PostgreSQL server of one's own, started in a temporary folder on a free port and removed afterwards: for a
benchmark or test that needs settings the shared server must not get (a connection limit of 40, or of 400).

The binaries are the installed PostgreSQL's (/usr/lib/postgresql/VERSION/bin, or PG_BIN). initdb refuses to run as
root, so as root the server runs as the `postgres` user (runuser), in a folder it owns. Trust authentication on
127.0.0.1 only.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def pg_bin() -> Path | None:
    """The folder of the newest installed PostgreSQL's initdb and pg_ctl (PG_BIN overrides), None without one."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def own_postgres(max_connections: int, **settings: str) -> Iterator[str]:
    """A running server with this `max_connections` (and any other settings); yields its admin URL
    (postgresql://postgres@127.0.0.1:PORT/postgres). Stopped (immediate) and deleted on exit."""
    binaries = pg_bin()
    if binaries is None:
        raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl) under /usr/lib/postgresql/*/bin; "
                           "install postgresql or set PG_BIN")
    root = os.geteuid() == 0
    home = Path(tempfile.mkdtemp(prefix="sweep-pg-"))
    data = home / "data"
    if root:
        user = pwd.getpwnam("postgres")
        os.chown(home, user.pw_uid, user.pw_gid)

    def run(*cmd: str) -> None:
        full = ["runuser", "-u", "postgres", "--", *cmd] if root else list(cmd)
        subprocess.run(full, check=True, capture_output=True, text=True, timeout=120)

    port = free_port()
    options = {"max_connections": str(max_connections), "listen_addresses": "127.0.0.1", "port": str(port),
               "unix_socket_directories": str(home), "fsync": "off", "shared_buffers": "64MB", **settings}
    try:
        run(str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        with open(data / "postgresql.conf", "a") as conf:
            conf.writelines(f"{key} = '{value}'\n" for key, value in options.items())
        run(str(binaries / "pg_ctl"), "-D", str(data), "-l", str(home / "log"), "-w", "-t", "60", "start")
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            run(str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(home, ignore_errors=True)
