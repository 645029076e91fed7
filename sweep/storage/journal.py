"""The journal storage (journal:///PATH, a shared file system without a database server): Optuna's, with a
trial's records written in as few appends as its readers allow."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import optuna
from optuna.distributions import distribution_to_json, json_to_distribution
from optuna.trial import TrialState

from sweep.storage.optuna_private import (
    JournalOperation,
    journal_lock,
    journal_log_storage,
    journal_replay,
    journal_worker_id,
)


class SweepJournalStorage(optuna.storages.JournalStorage):
    """Optuna's journal storage, plus writing several records of one trial in one locked, fsynced append.

    Each append takes the file's lock and an fsync: on a cluster's network file system that is the cost of a
    write, and plain Optuna pays it for every attribute and every param. The records are the journal's own (one
    attribute or param each, as every reader of the file expects); only their grouping into appends differs.
    """

    def __init__(self, backend: Any) -> None:
        self._closing: dict[int, dict[str, Any]] = {}
        self._held: dict[int, list[dict[str, Any]]] = {}  # trial id → records not yet appended (`hold`)
        super().__init__(backend)

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._closing, self._held = {}, {}

    def set_trial_user_attrs(self, trial_id: int, attrs: Mapping[str, Any]) -> None:
        held = self._held.pop(trial_id, [])
        self._append([*held, *(self._attr_log(trial_id, key, value) for key, value in attrs.items())])

    def hold(self, trial_id: int, attrs: Mapping[str, Any]) -> None:
        """Keep these attributes of a trial this worker just claimed, and its params as they are drawn, for one
        append at `flush` (the worker's, after drawing; at the latest, the trial's next other write). Until
        then this process reads the trial with them (`get_trial`); no other process sees them.

        A claim must be appended and replayed on its own (another worker may have won the trial, and its
        records would then land on that worker's trial); everything after it may go together."""
        self._held[trial_id] = [self._attr_log(trial_id, key, value) for key, value in attrs.items()]

    def flush(self, trial_id: int) -> None:
        held = self._held.pop(trial_id, None)
        if held:
            self._append(held)

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float, distribution: Any) -> None:
        if trial_id not in self._held:
            return super().set_trial_param(trial_id, param_name, param_value_internal, distribution)

        fields = {"trial_id": trial_id, "param_name": param_name, "param_value_internal": param_value_internal,
                  "distribution": distribution_to_json(distribution)}
        self._held[trial_id].append(self._log(JournalOperation.SET_TRIAL_PARAM, fields))

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        self.flush(trial_id)
        super().set_trial_intermediate_value(trial_id, step, intermediate_value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self.flush(trial_id)
        super().set_trial_user_attr(trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self.flush(trial_id)
        super().set_trial_system_attr(trial_id, key, value)

    def get_trial(self, trial_id: int) -> optuna.trial.FrozenTrial:
        """The trial with what is held of it (`optuna.Trial` reads its trial when created, right after the claim)."""
        trial = super().get_trial(trial_id)
        held = self._held.get(trial_id)
        if not held:
            return trial

        trial = copy.copy(trial)  # the replayed trial is shared: new dicts for what the overlay changes
        trial.user_attrs, trial.params = dict(trial.user_attrs), dict(trial.params)
        trial.distributions = dict(trial.distributions)
        for log in held:
            if "user_attr" in log:
                trial.user_attrs.update(log["user_attr"])
            else:
                distribution = json_to_distribution(log["distribution"])
                trial.distributions[log["param_name"]] = distribution
                trial.params[log["param_name"]] = distribution.to_external_repr(log["param_value_internal"])
        return trial

    def stage_closing_attrs(self, trial_id: int, attrs: Mapping[str, Any] | None) -> None:
        """Attributes to append with the record that finishes the trial (None: forget them); see `tell_with`."""
        if attrs is None:
            self._closing.pop(trial_id, None)
        else:
            self._closing[trial_id] = dict(attrs)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        closing = self._closing.get(trial_id) if state.is_finished() else None
        if not closing:
            self.flush(trial_id)
            return super().set_trial_state_values(trial_id, state, values)
        now = datetime.now(tz=timezone.utc).isoformat(timespec="microseconds")
        finish = {"trial_id": trial_id, "state": state, "values": values, "datetime_complete": now}
        attr_logs = [self._attr_log(trial_id, key, value) for key, value in closing.items()]
        held = self._held.pop(trial_id, [])  # what is held goes first, in the same append
        self._append([*held, *attr_logs, self._log(JournalOperation.SET_TRIAL_STATE_VALUES, finish)])
        return True

    def create_waiting_trials(
        self, study_id: int, count: int, user_attrs: Mapping[str, Any], system_attrs: Mapping[str, Any]
    ) -> None:
        """`count` WAITING trials with these attributes: the records `enqueue_trial` appends one lock and fsync
        each, appended together. The journal numbers trials as it replays them, so they are consecutive."""
        fields = {"study_id": study_id, "state": TrialState.WAITING, "value": None, "values": None,
                  "datetime_start": None, "distributions": {}, "params": {}, "user_attrs": dict(user_attrs),
                  "system_attrs": dict(system_attrs), "intermediate_values": {}}
        with journal_lock(self):
            journal_log_storage(self).append_logs([self._log(JournalOperation.CREATE_TRIAL, fields)] * count)
            journal_replay(self)

    def _attr_log(self, trial_id: int, key: str, value: Any) -> dict[str, Any]:
        return self._log(JournalOperation.SET_TRIAL_USER_ATTR, {"trial_id": trial_id, "user_attr": {key: value}})

    def _log(self, op_code: int, fields: dict[str, Any]) -> dict[str, Any]:
        return {"op_code": op_code, "worker_id": journal_worker_id(self), **fields}

    def _append(self, logs: list[dict[str, Any]]) -> None:
        """One append, then replay. A record of this worker that cannot apply raises on replay (the trial finished
        meanwhile: UpdateFinishedTrialError for each; a param whose distribution differs from the study's:
        ValueError). All are replayed here, so none surfaces later in an unrelated call; the first is raised."""
        with journal_lock(self):
            journal_log_storage(self).append_logs(logs)
            failed = None
            for _ in logs:
                try:
                    journal_replay(self)
                    break
                except (optuna.exceptions.UpdateFinishedTrialError, ValueError) as exc:
                    failed = failed or exc
            if failed is not None:
                raise failed
