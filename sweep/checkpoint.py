"""Loading checkpoints, the one place: as weights only, so nothing in a checkpoint file runs.

A checkpoint is a pickle, and a pickle may name any function to call while it is read (`__reduce__`):
`torch.load(weights_only=False)` of a file someone else could write (a shared study folder, a folder a study
database points at) runs their code. sweep's own checkpoints (`loop.save`: model, optimizer, scaler and
scheduler state dicts of every optimizer and scheduler sweep makes, the history rows, the class names) hold
only tensors, numbers, strings, lists, dicts and tuples, which `weights_only=True` reads with no allow-listed
globals at all (tests/test_checkpoints.py trains every optimizer × scheduler and loads the result here).
Anything else in a file is refused, naming the file and what it asked for.

Which folders a retried trial may resume from is decided here too (`resume_source`): only a trial folder of
the same study, since the folder comes from a trial attribute anyone with write access to the study database
can set.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from sweep.schema import ConfigError

CHECKPOINT = "checkpoint.pt"


class CheckpointError(ConfigError):
    """A checkpoint that is not one sweep wrote (refused by the weights-only loader), or not readable."""


def load_checkpoint(path: Path, map_location: Any = "cpu", *, mmap: bool = False) -> dict[str, Any]:
    """A checkpoint sweep wrote (`loop.save`), read as weights only; anything else is a `CheckpointError`
    naming the file. `mmap` maps the tensors instead of reading them: checking a file costs little then."""
    state = load_weights(path, map_location, mmap=mmap)
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not a sweep checkpoint (no model state in it)")
    return state


def load_weights(path: Path, map_location: Any = "cpu", *, mmap: bool = False) -> Any:
    """Any torch file read as weights only (sweep's checkpoints, torchvision's pretrained state dicts)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        names = _unsafe_globals(path) or re.findall(r"GLOBAL (\S+) was not an allowed", str(exc))
        if not names:  # garbage, not an attack: no object was asked for
            why = _WHY.search(str(exc))
            raise CheckpointError(f"{path}: not a readable checkpoint ({why.group(1) if why else exc})") from None
        raise CheckpointError(
            f"{path}: refused: it asks for {', '.join(names)} (the checkpoints and weights sweep reads hold only "
            "tensors, numbers and strings). It was not loaded, so nothing in it ran; if you did not write it, "
            "someone else did"
        ) from None
    except (OSError, RuntimeError, EOFError, ValueError) as exc:  # truncated, not a zip file, unreadable
        raise CheckpointError(f"{path}: not a readable checkpoint ({str(exc).splitlines()[0][:200]})") from None


_WHY = re.compile(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n|$)")  # the unpickler's own reason


def _unsafe_globals(path: Path) -> list[str]:
    """What the file asks the unpickler to import, read from its opcodes without running them."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint: the opcodes cannot be listed this way
        return []


def resume_source(previous: str | None, trials_dir: Path, out_dir: Path) -> tuple[Path | None, str | None]:
    """(the folder a retried trial resumes from, None) or (None, why it is refused); (None, None): nothing to do.

    `previous` (the `sweep_resume_from` attribute) must be a folder directly inside the study's `trials_dir`,
    with every symlink followed (a link out of it is refused), and its checkpoint must load as weights only.
    """
    if not previous or not (Path(previous) / CHECKPOINT).exists():
        return None, None  # the predecessor died before its first epoch: start from epoch 0, as it did
    root = trials_dir.resolve()
    folder, ckpt = Path(previous).resolve(), (Path(previous) / CHECKPOINT).resolve()
    if folder.parent != root or ckpt.parent != folder:
        seen = f" (it leads to {ckpt.parent})" if ckpt.parent != Path(previous) else ""
        return None, f"resume source {previous}{seen} is not a trial folder of this study ({root}/N)"
    if folder == out_dir.resolve():
        return None, None  # its own folder: the checkpoint is already where the trainer looks
    try:
        load_checkpoint(ckpt, mmap=True)
    except CheckpointError as exc:
        return None, str(exc)
    return folder, None
