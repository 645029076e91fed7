"""`sweep dashboard` and `sweep tensorboard`: the two live views of a study, served until Ctrl-C.

Both bind 127.0.0.1 unless told otherwise: optuna-dashboard can rename, delete and tell trials, so exposing
it is a decision, not a default (reach it from a laptop with `ssh -L 8080:127.0.0.1:8080 login-node`).
The dashboard is given the storage object sweep itself opened, so it reads every storage sweep writes —
SQLite, PostgreSQL, MySQL/MariaDB and the journal file — while workers keep writing, and a URL with a
`${VAR}` password works the same as for `launch`. A port that is taken is a clear error before anything
starts (the socket is bound first, then served: no race with another process between a check and a bind).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import IO, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna

from sweep.schema import ConfigError
from sweep.storage import studies_dir


class _Server(ThreadingMixIn, WSGIServer):
    """One thread per request: the dashboard's page polls several API routes at once."""

    daemon_threads = True


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    """The dashboard polls every few seconds; a line per request would bury the URL."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def bind_dashboard(storage: optuna.storages.BaseStorage, host: str, port: int) -> WSGIServer:
    """optuna-dashboard's WSGI app on a bound socket; ConfigError when the port or host cannot be had."""
    from optuna_dashboard import wsgi  # ~7 s to import: only `sweep dashboard` serves it

    app = wsgi(storage)
    server_class = _IPv6Server if ":" in host else _Server
    return _bind(host, port, lambda: make_server(host, port, app, server_class, _QuietHandler))


def dashboard(
    storage: optuna.storages.BaseStorage, study: str, host: str, port: int, out: IO[str] = sys.stdout
) -> None:
    """Serve the dashboard, print the study's page, and block until Ctrl-C."""
    server = bind_dashboard(storage, host, port)
    study_id = storage.get_study_id_from_name(study)
    url = f"http://{_url_host(host)}:{server.server_port}/dashboard/studies/{study_id}"
    print(f"optuna-dashboard for study {study} at {url}", file=out, flush=True)
    _warn_if_exposed(host, "anyone who reaches it can change or delete the study", out)
    print("Ctrl-C stops it.", file=out, flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def tensorboard_logdir(study: str) -> Path:
    """studies/STUDY/trials: one TensorBoard run per trial (`N/tb`), with its curves and HParams session."""
    logdir = studies_dir() / study / "trials"
    if not logdir.is_dir():
        held = sorted(p.parent.name for p in studies_dir().glob("*/trials") if p.is_dir())
        raise ConfigError(
            f"no trial folders for study {study!r} under {studies_dir()} (studies with trials there: "
            f"{', '.join(held) or 'none'}); run `sweep tensorboard` where the study's files are, or set "
            "SWEEP_STUDIES_DIR"
        )
    return logdir


def tensorboard(study: str, host: str, port: int, out: IO[str] = sys.stdout) -> None:
    """Serve TensorBoard on the study's trial folders, print its URL, and block until Ctrl-C."""
    from tensorboard import program  # ~1.7 s to import: only `sweep tensorboard` serves it

    logdir = tensorboard_logdir(study)
    board = program.TensorBoard()
    # load_fast=false: TensorBoard's own Python reader, no separate data-server process to start or fail.
    board.configure(logdir=str(logdir), host=host, port=port, load_fast="false")
    try:
        url = board.launch()
    except program.TensorBoardPortInUseError:
        raise _port_error(host, port) from None
    except program.TensorBoardServerException as exc:
        raise ConfigError(f"cannot start TensorBoard on {host}:{port}: {exc.msg}") from None
    print(f"TensorBoard for study {study} ({logdir}) at {url}", file=out, flush=True)
    _warn_if_exposed(host, "anyone who reaches it can read the study's curves", out)
    print("Ctrl-C stops it.", file=out, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def _bind(host: str, port: int, bind: Callable[[], WSGIServer]) -> WSGIServer:
    try:
        return bind()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise _port_error(host, port) from None
        if exc.errno == errno.EACCES:
            raise ConfigError(f"port {port} needs root privileges; pick one above 1023 with --port") from None
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; check --host") from None


def _port_error(host: str, port: int) -> ConfigError:
    return ConfigError(
        f"port {port} on {host} is already in use (another dashboard or TensorBoard?); pick another with --port"
    )


def _url_host(host: str) -> str:
    """Where a browser on this machine finds a server bound to HOST."""
    if host in ("", "0.0.0.0", "::"):
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host


def _warn_if_exposed(host: str, risk: str, out: IO[str]) -> None:
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        print(f"warning: listening on {host}, not only this machine: {risk}", file=out, flush=True)
