"""TensorBoard's HParams summary of a finished trial, so the HParams tab compares a study's trials side by side.

Each trial's `trials/N/tb/` is one TensorBoard run that already holds the trainer's per-epoch curves. When the
trial ends (complete or pruned) the worker adds to that same run a session-start record (the trial's params
and its state), the trial's value as the scalar `best/METRIC`, and a session-end record. No experiment record
is written on purpose: TensorBoard then builds the experiment from all sessions it finds — the union of their
params, conditional ones included, and every scalar tag as a metric — so trials never have to agree on one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

BEST_PREFIX = "best/"  # scalar tag of the trial's value: best/val_acc, best/val_loss, …


def write_summary(trial_dir: Path, params: Mapping[str, Any], state: str, started: float | None = None) -> None:
    """Add the HParams session of one finished trial to `trial_dir/tb`, reading its value from metrics.json."""
    from torch.utils.tensorboard import SummaryWriter

    start = plugin_data_pb2.SessionStartInfo(start_time_secs=started or time.time())
    for name, value in {**params, "state": state}.items():
        slot = start.hparams[name]
        if isinstance(value, bool):
            slot.bool_value = value
        elif isinstance(value, (int, float)):
            slot.number_value = float(value)
        else:  # strings, and None among a categorical's choices
            slot.string_value = str(value)
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
    metrics = trial_dir / "metrics.json"
    record = json.loads(metrics.read_text()) if metrics.exists() else None
    with SummaryWriter(str(trial_dir / "tb")) as writer:
        writer.file_writer.add_summary(_summary(metadata.SESSION_START_INFO_TAG, session_start_info=start))
        if record is not None:
            writer.add_scalar(BEST_PREFIX + record["metric"], record["best_value"], int(record["best_epoch"]))
        writer.file_writer.add_summary(_summary(metadata.SESSION_END_INFO_TAG, session_end_info=end))


def _summary(tag: str, **content: Any) -> Summary:
    data = plugin_data_pb2.HParamsPluginData(version=metadata.PLUGIN_DATA_VERSION, **content)
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data))])
