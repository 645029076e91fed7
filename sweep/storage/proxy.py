"""`sweep storage-proxy`: Optuna's gRPC storage proxy in front of a study's SQL storage, so that hundreds of workers
share a handful of database connections (the proxy's threads) instead of one or more each.

The storage behind it is opened the sweep way (`open_storage`: `RetryingRDBStorage`, so a database restart is
retried here, and the calls a worker makes every epoch in SQLAlchemy Core), under Optuna's trial cache (as Optuna's
documentation asks: without it every listing re-reads the whole study). Its SQL pool holds one connection per
thread of the proxy and no more.

Which storages it serves: PostgreSQL and MySQL/MariaDB, the reason it exists; SQLite too (one process, the proxy,
then writes the file, which must be on a disk local to the proxy's machine: a cluster without a database server
can run it on the machine that holds the file). Not the journal: Optuna's JournalStorage ties a claimed trial
to the thread that claimed it, and the proxy answers each call from any of its threads (Optuna issue 6084).
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import IO, Any

import grpc  # this module is the proxy command's alone
import optuna
from optuna.trial import TrialState

from sweep.schema import ConfigError
from sweep.storage.cache import worker_cache
from sweep.storage.opening import open_storage
from sweep.storage.optuna_private import proxy_server, uncached
from sweep.storage.rdb import RetryingRDBStorage
from sweep.storage.remote import DEFAULT_PORT, EXTRAS, SCHEME, trial_to_json
from sweep.storage.urls import mask

THREADS = 8  # calls served at once, and database connections held: a handful, whatever the number of workers
STOP_GRACE_S = 10.0  # calls in flight when asked to stop get this long to finish; the workers retry the rest


def check_backend(url: str) -> None:
    """Refuse a storage the proxy cannot serve, saying what to use instead."""
    if url.startswith(SCHEME):
        raise ConfigError(f"{url} is a storage proxy already: run `sweep storage-proxy` on the database's own URL "
                          "(postgresql://…, mysql+pymysql://…)", key="storage")
    if url.startswith("journal:///"):
        raise ConfigError(
            f"{mask(url)}: the journal cannot be served through the gRPC proxy (Optuna's JournalStorage ties a "
            "claimed trial to the thread that claimed it; the proxy answers from any of its threads, Optuna issue "
            "6084); give the workers the journal file itself, or put the study in PostgreSQL or MySQL",
            key="storage",
        )


def extras(backend: RetryingRDBStorage) -> grpc.GenericRpcHandler:
    """sweep's own calls (`remote.EXTRAS`), served beside Optuna's: what `RetryingRDBStorage` batches into one
    transaction (the pop, a trial's attributes, the finish with its closing attributes, the budget's WAITING
    trials), so a trial through the proxy costs the database what it costs a worker connected directly."""

    def pop(request: dict[str, Any]) -> list[int] | None:
        numbers: list[int] = []
        trial_id = backend.pop_waiting_trial_id(request["study_id"], lambda n: numbers.append(n) or {})
        return None if trial_id is None else [trial_id, numbers[-1]]

    def finish(request: dict[str, Any]) -> bool:
        trial_id = request["trial_id"]
        backend.stage_closing_attrs(trial_id, request["attrs"])
        try:
            return backend.set_trial_state_values(trial_id, TrialState[request["state"]], request["values"])
        finally:
            backend.stage_closing_attrs(trial_id, None)

    def read_finished(request: dict[str, Any]) -> dict[str, Any]:
        # the ids still unfinished first, then the finished trials: a trial finishing in between is sent now and
        # asked about again next time (read twice, stored once), never missed
        last, unfinished = backend.unfinished_trial_ids(request["study_id"])
        trials = backend.read_finished(request["study_id"], request["unfinished"], request["last"], ())
        return {"trials": [trial_to_json(t) for t in trials], "last": last, "unfinished": unfinished}

    calls: dict[str, Callable[[dict[str, Any]], Any]] = {
        "ReadFinished": read_finished,
        "Ping": lambda request: True,
        "Pop": pop,
        "SetTrialUserAttrs": lambda r: backend.set_trial_user_attrs(r["trial_id"], r["attrs"]),
        "Finish": finish,
        "CreateWaitingTrials": lambda r: backend.create_waiting_trials(
            r["study_id"], r["count"], r["user_attrs"], r["system_attrs"]),
    }

    def handler(call: Callable[[dict[str, Any]], Any]) -> Any:
        def serve_one(request: dict[str, Any], context: grpc.ServicerContext) -> Any:
            try:
                return [call(request)]  # in a list: grpc takes a handler's None for "no answer"
            except KeyError as exc:  # Optuna's client maps these two codes back, and so does sweep's
                context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            except optuna.exceptions.UpdateFinishedTrialError as exc:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))

        return grpc.unary_unary_rpc_method_handler(
            serve_one, request_deserializer=json.loads, response_serializer=lambda m: json.dumps(m).encode()
        )

    return grpc.method_handlers_generic_handler(EXTRAS, {name: handler(call) for name, call in calls.items()})


def public_url(host: str, port: int) -> str:
    """The grpc:// URL workers should be given: this machine's name where the proxy listens on every address."""
    shown = socket.gethostname() if host in ("", "0.0.0.0", "::", "[::]") else host
    return f"{SCHEME}[{shown}]:{port}" if ":" in shown else f"{SCHEME}{shown}:{port}"


def serve(
    url: str, host: str = "127.0.0.1", port: int = DEFAULT_PORT, threads: int = THREADS,
    out: IO[str] = sys.stdout, stop: threading.Event | None = None, ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the storage at `url` on host:port until SIGINT or SIGTERM (or `stop` is set); prints the grpc:// URL.

    Stopping lets the calls in flight finish (up to `STOP_GRACE_S`); a worker whose call is cut retries it until
    a proxy answers again, so the proxy can be restarted under a running study."""
    check_backend(url)
    storage = worker_cache(open_storage(url, connections=threads))
    try:
        server, bound = proxy_server(storage, host, port, threads)
    except RuntimeError:  # grpcio ≥ 1.5x raises where older ones returned port 0
        bound = 0
    else:
        server.add_generic_rpc_handlers((extras(uncached(storage)),))
    if bound == 0:
        raise ConfigError(f"cannot listen on {host}:{port}: the port is in use or the address is not this "
                          "machine's; pick another with --port (0: any free port) or --host")
    stop = stop or threading.Event()
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            handlers[signum] = signal.signal(signum, lambda *_: stop.set())
    server.start()
    try:
        given = public_url(host, bound)
        print(f"storage proxy for {mask(url)} listening on {host}:{bound} ({threads} threads, at most {threads} "
              f"database connections)", file=out, flush=True)
        print(f"give the workers: --storage {given}   (Ctrl-C stops the proxy)", file=out, flush=True)
        if ready is not None:
            ready(given)
        while not stop.wait(1.0):  # a timed wait: the signal handler runs between waits
            pass
        print("storage proxy stopping: letting the calls in flight finish", file=out, flush=True)
    finally:
        server.stop(STOP_GRACE_S).wait()
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
