"""The schema: every section and key a study file may hold, assembled from the registries.

The schema is plain data (nested dicts of `Field`), so the error for any bad value can name the file, the
dotted key and what would have been accepted. Sections whose keys depend on a choice (`model.name`,
`data.dataset`, `sampler.name`, `pruner.name`, `executor.name`) take the extra keys of the chosen variant from
its registry, so a parameter given to a model that does not take it is an error rather than silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sweep.config.paths import copy_tree
from sweep.data import DATASETS
from sweep.data.features import FEATURES
from sweep.models import MODELS
from sweep.run.executors import DEFAULT as DEFAULT_EXECUTOR
from sweep.run.executors import EXECUTORS
from sweep.schema import Field, Variants, by_name, did_you_mean
from sweep.search.pruners import PRUNERS
from sweep.search.samplers import SAMPLERS

METRICS = {"val_acc": "maximize", "val_f1": "maximize", "val_loss": "minimize"}  # scored every epoch
# measured once per trial before its first epoch, on its device (sweep.run.measure): objectives or constraints
STATIC_METRICS = {"params_mb": "minimize", "latency_ms": "minimize", "macs": "minimize"}

FOLDS = {  # null: the dataset's standard protocol (UrbanSound8K 1–8 / 9 / 10, ESC-50 1–3 / 4 / 5, …)
    "train": Field(list, None, item=int, nullable=True),
    "val": Field(list, None, item=int, nullable=True),
    "test": Field(list, None, item=int, nullable=True),
}


def _schema() -> dict[str, Any]:
    return {
        "study": {
            "name": Field(str, None, nullable=True),
            "direction": Field(str, None, choices=("maximize", "minimize"), nullable=True),
            "metric": Field(str, "val_acc", choices=tuple(METRICS)),
            # several objectives (sweep.search.objectives): the first trained and scored per epoch, the rest static
            "metrics": Field(list, None, item=str, nullable=True),
            "directions": Field(list, None, item=str, nullable=True),  # null: each metric's own direction
            "constraints": Field(dict, {}),  # {static metric: {min: x, max: y}}: hard limits, Optuna's constraints
            "n_trials": Field(int, 20, low=1),
            "max_trials": Field(int, 100_000, low=1),  # the largest n_trials accepted (`study.check_budget`)
            "timeout": Field(float, None, low=0, nullable=True),
            "cv": Field(int, None, low=2, nullable=True),  # k-fold cross-validated trials (sweep.run.cv)
        },
        "storage": Field(str, None, nullable=True),
        "sampler": {
            "name": SAMPLERS.field("tpe"),
            "seed": Field(int, 0, nullable=True),
            "_variants": SAMPLERS.variants("name"),
        },
        "pruner": {
            "name": PRUNERS.field("median"),
            "_variants": PRUNERS.variants("name"),
        },
        "data": {
            "dataset": DATASETS.field("synthetic", by_name),
            "root": Field(str, None, nullable=True),
            "folds": FOLDS,
            "split_seed": Field(int, 0),  # divides a fold shared by val and test; fixed for a study, not per trial
            "cache": Field(bool, True),
            "cache_dir": Field(str, None, nullable=True),
            "cache_local": Field(str, None, nullable=True),
            "sample_rate": Field(int, 16000, low=1000),
            "clip_seconds": Field(float, 1.0, low=0.05),
            "_variants": DATASETS.variants("dataset", by_name),
        },
        "features": {
            "name": Field(str, "auto", choices=("auto", *FEATURES)),
            "n_mels": Field(int, 64, low=8),
            "n_fft": Field(int, 512, low=16),
            "hop_length": Field(int, 256, low=1),
            "f_min": Field(float, None, low=0, nullable=True),
            "f_max": Field(float, None, low=0, nullable=True),
        },
        "augment": {
            "strength": Field(float, 0.5, low=0.0, high=1.0),
            "specaugment": Field(bool, True),
            "n_masks": Field(int, 2, low=0),
            "freq_mask": Field(float, 0.15, low=0.0, high=1.0),
            "time_mask": Field(float, 0.2, low=0.0, high=1.0),
            "mixup": Field(bool, True),
            "mixup_alpha": Field(float, 0.4, low=0.0),
            "waveform": Field(bool, False),
            "chain": Field(list, [], nested=True),  # entries by name, each with its own p (sweep.data.augment)
            "mix": Field(list, [], item=str),  # label-mixing batch augmentations, one picked per mixed batch
            "mix_ratio": Field(float, 0.5, low=0.0, high=1.0),  # the share of batches `mix` mixes
            "epoch_mix": Field(int, 0, low=0),  # batches are mixed only after this epoch
            "mix_loss": Field(str, "ce", choices=("ce", "bce")),
        },
        "model": {
            "name": MODELS.field("audio_cnn", by_name),
            "pretrained": Field(bool, False),
            "init_from": Field(str, None, nullable=True),  # a sweep run of the same family: its body's weights
            "_variants": MODELS.variants("name", by_name),
        },
        "train": {
            "epochs": Field(int, 10, low=0),  # 0: no limit, only with patience (resolve._check_train)
            "patience": Field(int, None, low=1, nullable=True),
            "freeze_epochs": Field(int, 0, low=0),
            "batch_size": Field(int, 32, low=1),
            "accum_iter": Field(int, 1, low=1),
            "eval_batch_size": Field(int, 128, low=1),
            "lr": Field(float, 1e-3, low=0.0),
            "body_lr_mult": Field(float, 1.0, low=0.0),
            "optimizer": Field(str, "adamw", choices=("adam", "adamw", "sgd", "rmsprop")),
            "momentum": Field(float, 0.9, low=0.0, high=1.0),
            "weight_decay": Field(float, 0.01, low=0.0),
            "scheduler": Field(str, "cosine", choices=("cosine", "onecycle", "none")),
            "label_smoothing": Field(float, 0.0, low=0.0, high=1.0),
            "grad_clip": Field(float, None, low=0.0, nullable=True),
            "grad_clip_value": Field(float, None, low=0.0, nullable=True),  # > 0 (resolve._check_train)
            "ema": Field(float, None, low=0.0, high=1.0, nullable=True),  # in (0, 1) (resolve._check_train)
            "amp": Field(bool, True),
            "device": Field(str, "auto", choices=("auto", "cpu", "cuda")),
            "seed": Field(int, 0),
            "threads": Field(int, None, low=1, nullable=True),  # null: set once per study (worker.default_threads)
        },
        "search_space": Field(dict, {}),
        "executor": {
            "name": EXECUTORS.field(DEFAULT_EXECUTOR),
            "workers": Field(int, 2, low=1),
            "cpus_per_worker": Field(int, None, low=1, nullable=True),
            "timeout_min": Field(float, 24 * 60, low=1),
            "cluster": Field(str, None, nullable=True),
            "heartbeat_seconds": Field(float, 30.0, low=0.1),
            "stale_after_seconds": Field(float, 180.0, low=0.5),
            "max_retries": Field(int, 2, low=0),
            "max_replacements": Field(int, None, low=0, nullable=True),  # null: as many as `workers`
            "_variants": EXECUTORS.variants("name"),
        },
    }


SCHEMA: dict[str, Any] = {}


def schema() -> dict[str, Any]:
    """The schema, built on first use: every registry is complete by then, whatever imported this module."""
    if not SCHEMA:
        SCHEMA.update(_schema())
    return SCHEMA


def field_at(path: str, variant_of: Callable[[str], str | None]) -> Field:
    """The schema field a dotted path names, given the variants chosen; KeyError(message) if none."""
    node: Any = schema()
    parts = path.split(".")
    for i, part in enumerate(parts):
        here = ".".join(parts[:i])
        if isinstance(node, Field) and node.nested:
            return INSIDE
        if not isinstance(node, dict):
            raise KeyError(f"`{here}` is a value, not a section")
        fields = fields_of(node, here, variant_of)
        if part not in fields:
            raise KeyError(unknown_key(part, here, fields))
        node = fields[part]
    if isinstance(node, dict):
        raise KeyError(f"`{path}` is a section; name one of its keys: {', '.join(fields_of(node, path, variant_of))}")
    return node


# what a path inside a nested value (`model.blocks.2.res.0`) accepts here: anything; the value it is part of is
# checked whole by its entry's validation when the config is resolved (a search checks every value it can pick)
INSIDE = Field(object)


def nested_root(path: str, variant_of: Callable[[str], str | None]) -> tuple[str, Field] | None:
    """(the path of the nested value `path` reaches inside, its field), or None if it is not inside one."""
    parts = path.split(".")
    for i in range(1, len(parts)):
        try:
            node = field_at(".".join(parts[:i]), variant_of)
        except KeyError:  # a section (or no key at all: the caller's own check names it)
            continue
        if node.nested:
            return ".".join(parts[:i]), node
    return None


def fields_of(node: dict[str, Any], here: str, variant_of: Callable[[str], str | None]) -> dict[str, Any]:
    fields = {k: v for k, v in node.items() if k != "_variants"}
    variants: Variants | None = node.get("_variants")
    if variants is not None:
        name = variant_of(f"{here}.{variants.key}")
        if name in variants.names():
            fields.update(variants.params(name))
    return fields


def unknown_key(key: str, here: str, fields: Mapping[str, Any]) -> str:
    section = f"in section `{here}`" if here else "at the top level"
    return f"unknown key `{key}` {section}{did_you_mean(key, fields)}; accepted: {', '.join(fields)}"



def defaults_tree() -> dict[str, Any]:
    """The schema's defaults, without variant keys; used to look up discriminators not given."""

    def walk(node: dict[str, Any]) -> dict[str, Any]:
        return {
            k: walk(v) if isinstance(v, dict) else copy_tree(v.default) for k, v in node.items() if k != "_variants"
        }

    return walk(schema())

