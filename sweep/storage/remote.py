"""``grpc://HOST:PORT`` storage URLs: a study behind `sweep storage-proxy` (Optuna's gRPC storage proxy), opened
as Optuna's `GrpcStorageProxy` with every call retried while the proxy is unreachable, and a wrong address told
within seconds instead of a hang.

What holds through the proxy, and where:

- The claim of a WAITING trial is a compare-and-set on the database: the worker's pop (`trials._pop_from`) asks the
  proxy to set a WAITING trial RUNNING, and the proxy runs sweep's `RetryingRDBStorage._claim` (a row lock, then
  WAITING → RUNNING or False), so two workers never run one trial and the budget stays exact.
- A database restart is retried on the proxy's side (its storage is a `RetryingRDBStorage`): a call waits, it does
  not fail. A proxy restart is retried here: every call that finds the proxy unreachable (gRPC's UNAVAILABLE) is
  tried again with backoff for `RETRY_S`, as a dropped database connection is. The one ambiguous case is the same
  as on a database: a write the proxy made whose answer was lost. A finished trial found already finished with
  what was being written is success; a claim found already RUNNING is logged and left to stale-trial recovery.
- Heartbeats and hand-backs are user attributes and state changes like any other: nothing special.

sweep's proxy also answers a few calls of its own (`EXTRAS`, JSON over the same port) that batch a trial's
writes as sweep's SQL storage does: the pop in one transaction, a trial's attributes in one write, the finish with
its closing attributes, the budget's WAITING trials in one insert; and a listing of finished trials (a pruner's,
every epoch) that reads only the trials finished since the last one, where Optuna's client re-reads every
unfinished trial of the study, the whole WAITING budget included. Optuna's protocol takes one call (and one
transaction) per attribute: 27 calls per trial instead of ~14 (benchmarks/RESULTS.md, issue 21 item 5). A proxy
that lacks them (Optuna's own `run_grpc_proxy_server`) is used through Optuna's calls alone.

The proxy has no authentication and no TLS: anyone who can reach its port can read and change every study in its
database. Bind it to an address only the cluster reaches.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import socket
import threading
import warnings
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import optuna
from optuna.distributions import distribution_to_json, json_to_distribution
from optuna.storages import GrpcStorageProxy
from optuna.trial import FrozenTrial, TrialState

from sweep.schema import ConfigError
from sweep.storage.optuna_private import trial_id_of
from sweep.storage.rdb import _already_written
from sweep.storage.retry import RETRY_S, _first_line, call_with_retry, retrying

_log = logging.getLogger("sweep.storage")  # one logger for the whole package

SCHEME = "grpc://"
DEFAULT_PORT = 13000  # Optuna's run_grpc_proxy_server default
CONNECT_TIMEOUT_S = 5.0  # how long opening waits for the proxy to answer before saying what to check
EXTRAS = "sweep.StorageProxyExtras"  # the service sweep's proxy adds beside Optuna's StorageService
EXTRA_CALLS = ("Ping", "Pop", "SetTrialUserAttrs", "Finish", "CreateWaitingTrials", "ReadFinished")
_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})/?$")

# Every storage call of GrpcStorageProxy (one RPC each, or the client cache's GetTrials): retried while the proxy
# is unreachable. `set_trial_state_values` is retried on its own (a retried finish may find itself written).
_RETRIED = (
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "set_trial_param",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number",
    "get_trial",
    "get_all_trials",
)


def _dumps(message: Any) -> bytes:
    return json.dumps(message).encode()


def parse(url: str) -> tuple[str, int]:
    """(host, port) of a ``grpc://HOST:PORT`` URL; anything else is a ConfigError saying what is accepted."""
    found = _HOST_PORT.match(url[len(SCHEME) :]) if url.startswith(SCHEME) else None
    port = int(found.group("port")) if found else 0
    if found is None or not 0 < port < 65536:
        raise ConfigError(
            f"storage URL {url} is not grpc://HOST:PORT (the address `sweep storage-proxy` prints, e.g. "
            f"grpc://login1:{DEFAULT_PORT}); the proxy holds the database's own URL and password, the workers "
            "only its address",
            key="storage",
        )
    return found.group("host").strip("[]"), port


class RetryingGrpcProxy(GrpcStorageProxy):
    """Optuna's gRPC proxy client whose every call waits through a proxy restart (gRPC's UNAVAILABLE, retried
    for `retry_s` like a dropped database connection; see `retry.is_transient`). Optuna's client fails the call
    at once, which would end a worker mid-trial whenever the proxy is restarted."""

    def __init__(self, *, host: str, port: int, retry_s: float = RETRY_S) -> None:
        self.retry_s = retry_s
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.url = SCHEME + self.address  # what retry messages name
        self.extras = False  # whether the proxy answers `EXTRAS` (set by `open_proxy`)
        self._closing: dict[int, dict[str, Any]] = {}  # trial id → attributes written when it finishes
        self._finished: dict[int, dict[str, Any]] = {}  # study id → the finished trials read so far (`ReadFinished`)
        self._finished_lock = threading.Lock()
        with warnings.catch_warnings():  # the proxy is "experimental" in Optuna 5.1: said once, in the README
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(host=host, port=port)
        self._extras_setup()

    def _extras_setup(self) -> None:
        import grpc  # imported by Optuna's client on first use too: not at sweep's start-up, for every command

        self._extras_channel = grpc.insecure_channel(self.address)
        self._extra = {
            name: self._extras_channel.unary_unary(
                f"/{EXTRAS}/{name}", request_serializer=_dumps, response_deserializer=json.loads
            )
            for name in EXTRA_CALLS
        }

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state.pop("_extras_channel", None)
        state.pop("_extra", None)
        state.pop("_finished_lock", None)
        state["_closing"], state["_finished"] = {}, {}
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._finished_lock = threading.Lock()
        self._extras_setup()

    def close(self) -> None:
        self._extras_channel.close()
        super().close()

    def _call(self, name: str, request: dict[str, Any]) -> Any:
        """One of sweep's own calls, retried as Optuna's are."""
        return call_with_retry(lambda n: self._once(name, request), name, self.retry_s, self.url)

    def _once(self, name: str, request: dict[str, Any]) -> Any:
        """One of sweep's own calls, once; the proxy's NOT_FOUND and FAILED_PRECONDITION are Optuna's KeyError and
        UpdateFinishedTrialError, as its client maps them."""
        import grpc

        try:
            return self._extra[name](request)[0]  # the proxy wraps every answer in a list (None included)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise KeyError(exc.details()) from exc
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise optuna.exceptions.UpdateFinishedTrialError(exc.details()) from exc
            raise

    def ping(self) -> bool:
        """Whether the proxy answers sweep's own calls (`sweep storage-proxy` does; Optuna's own proxy does not)."""
        import grpc

        try:
            self._extra["Ping"]({}, timeout=CONNECT_TIMEOUT_S)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return False
            raise
        return True

    # ---- what sweep's SQL storage batches (see sweep.storage.trials), one call to the proxy each ----

    def pop_waiting_trial_id(
        self, study_id: int, attrs: Callable[[int], Mapping[str, Any]] | None = None
    ) -> int | None:
        """The study's oldest WAITING trial claimed in one transaction on the proxy (`RetryingRDBStorage.
        pop_waiting_trial_id`); `attrs(number)` written right after, in one more call."""
        found = self._call("Pop", {"study_id": study_id})
        if found is None:
            return None
        trial_id, number = found
        if attrs is not None:
            self.set_trial_user_attrs(trial_id, attrs(number))
        return trial_id

    def set_trial_user_attrs(self, trial_id: int, attrs: Mapping[str, Any]) -> None:
        self._call("SetTrialUserAttrs", {"trial_id": trial_id, "attrs": dict(attrs)})

    def stage_closing_attrs(self, trial_id: int, attrs: Mapping[str, Any] | None) -> None:
        """Attributes to write in the call that finishes the trial (None: forget them); see `tell_with`."""
        if attrs is None:
            self._closing.pop(trial_id, None)
        else:
            self._closing[trial_id] = dict(attrs)

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        """Optuna's, except a listing of finished trials only (a pruner's): the proxy sends the trials finished
        since this client's last such listing, and the ids still unfinished then, to ask about next time."""
        wanted = tuple(states) if isinstance(states, Iterable) else None
        if not self.extras or not wanted or not all(TrialState(s).is_finished() for s in wanted):
            return self._retried_get_all_trials(study_id, deepcopy, states)
        with self._finished_lock:
            seen = self._finished.setdefault(study_id, {"last": -1, "unfinished": [], "trials": {}})
            answer = self._call("ReadFinished", {"study_id": study_id, "last": seen["last"],
                                                 "unfinished": seen["unfinished"]})
            for encoded in answer["trials"]:
                trial = trial_from_json(encoded)
                seen["trials"][trial.number] = trial
            seen["last"], seen["unfinished"] = answer["last"], answer["unfinished"]
            trials = sorted((t for t in seen["trials"].values() if t.state in wanted), key=lambda t: t.number)
        return copy.deepcopy(trials) if deepcopy else trials

    def create_waiting_trials(
        self, study_id: int, count: int, user_attrs: Mapping[str, Any], system_attrs: Mapping[str, Any]
    ) -> None:
        self._call("CreateWaitingTrials", {"study_id": study_id, "count": count, "user_attrs": dict(user_attrs),
                                           "system_attrs": dict(system_attrs)})

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        closing = self._closing.get(trial_id) if self.extras and state.is_finished() else None

        def attempt(n: int) -> bool:
            try:
                if closing is not None:  # the finish and the trial's closing attributes in one call
                    request = {"trial_id": trial_id, "state": state.name, "values": values, "attrs": closing}
                    done = self._once("Finish", request)
                else:
                    done = GrpcStorageProxy.set_trial_state_values(self, trial_id, state, values)
            except optuna.exceptions.UpdateFinishedTrialError:
                if n > 0 and state.is_finished() and _already_written(GrpcStorageProxy.get_trial(self, trial_id),
                                                                      state, values):
                    return True  # the proxy wrote it, its answer was lost with the connection
                raise
            if n > 0 and not done and state == TrialState.RUNNING:
                _log.warning(
                    "storage: the claim of trial id %d may have been made before the proxy's answer was lost; "
                    "if so it stays RUNNING without a worker until stale-trial recovery hands it back",
                    trial_id,
                )
            return done

        return call_with_retry(attempt, "set_trial_state_values", self.retry_s, self.url)


for _name in _RETRIED:
    setattr(RetryingGrpcProxy, "_retried_get_all_trials" if _name == "get_all_trials" else _name,
            retrying(GrpcStorageProxy, _name, "RetryingGrpcProxy"))


def trial_to_json(trial: FrozenTrial) -> dict[str, Any]:
    """A FrozenTrial as JSON (for `ReadFinished`): params in their internal repr, with their distributions."""
    return {
        "id": trial_id_of(trial), "number": trial.number, "state": trial.state.name, "values": trial.values,
        "start": trial.datetime_start and trial.datetime_start.isoformat(),
        "end": trial.datetime_complete and trial.datetime_complete.isoformat(),
        "params": {k: [d.to_internal_repr(trial.params[k]), distribution_to_json(d)]
                   for k, d in trial.distributions.items()},
        "user": trial.user_attrs, "system": trial.system_attrs, "steps": list(trial.intermediate_values.items()),
    }


def trial_from_json(encoded: Mapping[str, Any]) -> FrozenTrial:
    dists = {k: json_to_distribution(d) for k, (_, d) in encoded["params"].items()}
    return FrozenTrial(
        number=encoded["number"], state=TrialState[encoded["state"]], value=None, values=encoded["values"],
        datetime_start=encoded["start"] and datetime.fromisoformat(encoded["start"]),
        datetime_complete=encoded["end"] and datetime.fromisoformat(encoded["end"]),
        params={k: dists[k].to_external_repr(v) for k, (v, _) in encoded["params"].items()}, distributions=dists,
        user_attrs=encoded["user"], system_attrs=encoded["system"],
        intermediate_values={int(step): value for step, value in encoded["steps"]}, trial_id=encoded["id"],
    )


def _listening(host: str, port: int) -> str | None:
    """None if something accepts TCP connections at host:port, else why not (refused, no such host, timed out)."""
    try:
        with socket.create_connection((host, port), timeout=2.0):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def _why_not_ready(host: str, port: int, timeout: float) -> str:
    """Why no proxy answered: nothing listening, or something that does not speak gRPC (a database's port)."""
    reason = _listening(host, port)
    if reason is None:
        return (f"something listens at {host}:{port}, but it is not a gRPC storage proxy (no gRPC answer within "
                f"{timeout:.0f} s; a database's own port?); give the grpc:// address `sweep storage-proxy` printed")
    return (f"no storage proxy answers at {host}:{port} ({reason}); is `sweep storage-proxy` running there (it "
            f"prints the grpc:// address to use), is {host} reachable from this machine, and is port {port} open "
            "between them?")


def open_proxy(url: str, *, retry_s: float = RETRY_S, wait_s: float = 0.0) -> RetryingGrpcProxy:
    """The proxy at `url`, checked to answer as an Optuna storage proxy within `CONNECT_TIMEOUT_S` (or `wait_s`,
    longer, for a worker starting while the proxy restarts); nothing listening, or something else listening,
    is a ConfigError naming the address and what to check."""
    host, port = parse(url)
    timeout = max(wait_s, CONNECT_TIMEOUT_S)
    if wait_s <= 0 and _listening(host, port) is not None:  # refused, or no such host: no need to wait to say so
        raise ConfigError(f"cannot open storage {url}: {_why_not_ready(host, port, 0)}", key="storage")
    storage = RetryingGrpcProxy(host=host, port=port, retry_s=retry_s)
    try:
        storage.wait_server_ready(timeout=timeout)
    except ConnectionError:
        storage.close()
        raise ConfigError(f"cannot open storage {url}: {_why_not_ready(host, port, timeout)}", key="storage") from None
    try:
        GrpcStorageProxy.get_study_id_from_name(storage, "")  # any cheap call: KeyError from a real proxy
    except KeyError:
        storage.extras = storage.ping()
    except Exception as exc:
        storage.close()
        raise ConfigError(
            f"cannot open storage {url}: what listens at {host}:{port} is not an Optuna storage proxy "
            f"({_first_line(exc)}); check the port `sweep storage-proxy` printed",
            key="storage",
        ) from None
    return storage

