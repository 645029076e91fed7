"""`model.init_from`: a warm start from another sweep run's weights (a pretrain → fine-tune chain).

PATH is a trial folder (studies/S/trials/N), a final run folder (studies/S/final/seed-0) or a checkpoint.pt
of any sweep run whose model is the same family. The body (every tensor outside the model's `head`) is loaded;
the head too when the run's classes are the same (names, in order), else it is left new, so a different
dataset or class count gets a head of its own. A tensor of another shape is fitted by the family's `adapt`
where it has one (EAT's position embedding, interpolated to another clip length: EAT's `ext_pretrained`).
The checkpoint is read as weights only (sweep/checkpoint.py).
Every way PATH can be wrong (missing, not a sweep run, another family, tensors of other shapes) is refused when
the config is resolved, before any trial, naming the key, the path and what would be accepted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from sweep.checkpoint import CHECKPOINT, CheckpointError, load_checkpoint
from sweep.config.yamlfile import read_yaml
from sweep.models.registry import MODELS
from sweep.schema import ConfigError

KEY = "model.init_from"
ACCEPTED = "accepted: a trial folder, a final run folder or a checkpoint.pt of a sweep run"


def checkpoint_of(path: str) -> Path:
    """The checkpoint file PATH names (the folder's checkpoint.pt, or the file itself)."""
    given = Path(path)
    if not given.exists():
        raise ConfigError(f"{path}: no such file or folder; {ACCEPTED}", key=KEY)
    ckpt = given / CHECKPOINT if given.is_dir() else given
    if not ckpt.is_file():
        raise ConfigError(f"{path}: a folder without {CHECKPOINT}, so not a sweep run; {ACCEPTED}", key=KEY)
    return ckpt


def family_of(ckpt: Path, state: Mapping[str, Any]) -> str:
    """The model family a checkpoint was trained as: its own record, else the run's config.yaml beside it."""
    if isinstance(state.get("model_name"), str):
        return state["model_name"]
    beside = ckpt.parent / "config.yaml"
    config = read_yaml(beside) if beside.is_file() else None
    name = config.get("model", {}).get("name") if isinstance(config, dict) else None
    if not isinstance(name, str):
        raise ConfigError(
            f"{ckpt}: no model family recorded in it and no config.yaml naming one beside it; {ACCEPTED}", key=KEY
        )
    return name


def read(path: str, family: str) -> dict[str, Any]:
    """The checkpoint PATH names, checked to be a sweep run of `family`; ConfigError naming the key if not."""
    ckpt = checkpoint_of(path)
    try:
        state = load_checkpoint(ckpt, mmap=True)
    except CheckpointError as exc:
        raise ConfigError(f"{exc}; {ACCEPTED}", key=KEY) from None
    other = family_of(ckpt, state)
    if other != family:
        raise ConfigError(
            f"{path} is a run of model {other}, and this model is {family}: a warm start needs a run of the same "
            "family (its weights are loaded by name)",
            key=KEY,
        )
    return state


def head_keys(model: torch.nn.Module) -> set[str]:
    """The state-dict keys of the model's head (found by identity, so a head that is also a named inner module
    counts under both names)."""
    ids = {id(t) for t in model.head.state_dict(keep_vars=True).values()}
    return {k for k, t in model.state_dict(keep_vars=True).items() if id(t) in ids}


def fitted(model: torch.nn.Module, weights: Mapping[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    """The saved weights with each tensor of another shape than the model's fitted by the family's `adapt`
    where it can; the others are left as saved (and refused by `mismatches`)."""
    adapt, out = MODELS[family].adapt, dict(weights)
    if adapt is None:
        return out
    for key, tensor in model.state_dict().items():
        if key in weights and weights[key].shape != tensor.shape:
            new = adapt(key, weights[key], tensor)
            if new is not None and new.shape == tensor.shape:
                out[key] = new
    return out


def mismatches(model: torch.nn.Module, weights: Mapping[str, torch.Tensor], path: str) -> list[str]:
    """What in the body does not match the checkpoint: tensors missing on either side or of other shapes."""
    head, own = head_keys(model), model.state_dict()
    problems = []
    for key, tensor in own.items():
        if key in head:
            continue
        if key not in weights:
            problems.append(f"{key} is not in {path}")
        elif weights[key].shape != tensor.shape:
            problems.append(f"{key}: {list(weights[key].shape)} in {path}, {list(tensor.shape)} in this model")
    problems += [f"{key} of {path} is not in this model" for key in weights if key not in own and key not in head]
    return problems


def check(model: torch.nn.Module, path: str, family: str) -> None:
    """Refuse PATH unless it is a sweep run of `family` whose body fits `model` tensor for tensor."""
    problems = mismatches(model, fitted(model, read(path, family)["model"], family), path)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ConfigError(
            f"the body's tensors do not fit: {shown}. Accepted: a run of the same architecture (the head may differ)",
            key=KEY,
        )


def load(model: torch.nn.Module, path: str, family: str, classes: Sequence[str]) -> bool:
    """Load PATH's body into `model` (its head too when the classes are the same); returns whether the head was
    loaded. Shapes were checked when the config was resolved; a mismatch here is still an error naming them."""
    state = read(path, family)
    check(model, path, family)
    own, head, saved = model.state_dict(), head_keys(model), fitted(model, state["model"], family)
    keep_head = list(state.get("classes") or []) == list(classes) and all(
        k in saved and saved[k].shape == own[k].shape for k in head
    )
    model.load_state_dict({k: v for k, v in saved.items() if k in own and (keep_head or k not in head)}, strict=False)
    return keep_head
