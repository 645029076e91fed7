"""The journal storage (journal:///PATH, a shared file system without a database server): Optuna's, with a
trial's records written in one append."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import TrialState


class SweepJournalStorage(optuna.storages.JournalStorage):
    """Optuna's journal storage, plus writing several records of one trial in one locked, fsynced append.

    The records are the journal's own (one attribute each, as every reader of the file expects)."""

    def __init__(self, backend: Any) -> None:
        self._closing: dict[int, dict[str, Any]] = {}
        super().__init__(backend)

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._closing = {}

    def set_trial_user_attrs(self, trial_id: int, attrs: Mapping[str, Any]) -> None:
        self._append([self._attr_log(trial_id, key, value) for key, value in attrs.items()])

    def stage_closing_attrs(self, trial_id: int, attrs: Mapping[str, Any] | None) -> None:
        """Attributes to append with the record that finishes the trial (None: forget them); see `tell_with`."""
        if attrs is None:
            self._closing.pop(trial_id, None)
        else:
            self._closing[trial_id] = dict(attrs)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        from datetime import timezone

        from optuna.storages.journal._storage import JournalOperation

        closing = self._closing.get(trial_id) if state.is_finished() else None
        if not closing:
            return super().set_trial_state_values(trial_id, state, values)
        now = datetime.now(tz=timezone.utc).isoformat(timespec="microseconds")
        finish = {"trial_id": trial_id, "state": state, "values": values, "datetime_complete": now}
        attr_logs = [self._attr_log(trial_id, key, value) for key, value in closing.items()]
        self._append([*attr_logs, self._log(JournalOperation.SET_TRIAL_STATE_VALUES, finish)])
        return True

    def _attr_log(self, trial_id: int, key: str, value: Any) -> dict[str, Any]:
        from optuna.storages.journal._storage import JournalOperation

        return self._log(JournalOperation.SET_TRIAL_USER_ATTR, {"trial_id": trial_id, "user_attr": {key: value}})

    def _log(self, op_code: int, fields: dict[str, Any]) -> dict[str, Any]:
        return {"op_code": op_code, "worker_id": self._replay_result.worker_id, **fields}

    def _append(self, logs: list[dict[str, Any]]) -> None:
        """One append, then replay. If the trial finished meanwhile, each record of this batch raises
        UpdateFinishedTrialError on replay: all are read here, so none surfaces later in an unrelated call."""
        with self._thread_lock:
            self._backend.append_logs(logs)
            failed = None
            for _ in logs:
                try:
                    self._sync_with_backend()
                    break
                except optuna.exceptions.UpdateFinishedTrialError as exc:
                    failed = failed or exc
            if failed is not None:
                raise failed
