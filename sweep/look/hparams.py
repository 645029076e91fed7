"""TensorBoard's HParams summary of a finished trial, so the HParams tab compares a study's trials side by side.

Each trial's `trials/N/tb/` is one TensorBoard run that already holds the trainer's per-epoch curves. When the
trial ends (complete or pruned) the worker adds to that same run a session-start record (the trial's params
and its state), the trial's value as the scalar `best/METRIC`, and a session-end record. No experiment record
is written on purpose: TensorBoard then builds the experiment from all sessions it finds — the union of their
params, conditional ones included, and every scalar tag as a metric — so trials never have to agree on one.

The records are built from TensorBoard's protobufs by hand because no library call writes them so: TensorBoard's
session-end writer (`tensorboard.plugins.hparams.summary`) imports TensorFlow, which sweep does not install, and
its TensorFlow-free `summary_v2.hparams_pb` builds only the session start and refuses a None param; torch's
`SummaryWriter.add_hparams` writes an experiment record per trial into a new run beside the curves' one, and
TensorBoard keeps one experiment record, the first it finds (`hparams/backend_context.py`), dropping the other
trials' conditional params.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

BEST_PREFIX = "best/"  # scalar tag of the trial's value: best/val_acc, best/val_loss, …


def write_summary(trial_dir: Path, params: Mapping[str, Any], state: str, started: float | None = None) -> None:
    """Add the HParams session of one finished trial to `trial_dir/tb`, reading its value from metrics.json."""
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
    events = [(_summary(metadata.SESSION_START_INFO_TAG, session_start_info=start), 0)]
    if record is not None:
        best = Summary(value=[Summary.Value(tag=BEST_PREFIX + record["metric"], simple_value=record["best_value"])])
        events.append((best, int(record["best_epoch"])))
    events.append((_summary(metadata.SESSION_END_INFO_TAG, session_end_info=end), 0))
    _write_events(trial_dir / "tb", events)


def _write_events(logdir: Path, summaries: list[tuple[Summary, int]]) -> None:
    """An event file of its own beside the trainer's, written in this thread: a SummaryWriter would start (and
    join) a writer thread for three records, per trial."""
    from tensorboard.compat.proto.event_pb2 import Event  # ~1 s: a worker without TensorBoard output skips it
    from tensorboard.summary.writer.record_writer import RecordWriter  # with Event, above

    logdir.mkdir(parents=True, exist_ok=True)
    now = time.time()
    name = f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.hparams"
    with open(logdir / name, "wb") as f:
        writer = RecordWriter(f)
        writer.write(Event(wall_time=now, file_version="brain.Event:2").SerializeToString())
        for summary, step in summaries:
            writer.write(Event(wall_time=now, step=step, summary=summary).SerializeToString())


def _summary(tag: str, **content: Any) -> Summary:
    data = plugin_data_pb2.HParamsPluginData(version=metadata.PLUGIN_DATA_VERSION, **content)
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data))])
