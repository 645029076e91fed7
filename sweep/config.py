"""One YAML file = one study: the schema, loading, `--set` overrides and validation.

The schema is plain data (nested dicts of `Field`), so the error for any bad value can name the file, the
dotted key and what would have been accepted. Sections whose keys depend on a choice (`model.name`,
`data.dataset`, `sampler.name`, `pruner.name`) take the extra keys of the chosen variant from its
registry, so a parameter given to a model that does not take it is an error rather than silently ignored.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config problem, phrased for the person who wrote the file."""

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None) -> None:
        self.source, self.key, self.detail = source, key, message
        where = ": ".join(p for p in (source, f"`{key}`" if key else None) if p)
        super().__init__(f"{where}: {message}" if where else message)


@dataclass(frozen=True)
class Field:
    """A leaf of the schema: its type, default, and what values are accepted."""

    type: type
    default: Any = None
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    nullable: bool = False
    item: type | None = None  # element type when `type` is list

    def accepted(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list"}
        text = names.get(self.type, self.type.__name__)
        if self.type is list and self.item is not None:
            text = f"a list of {names.get(self.item, self.item.__name__).split(' ', 1)[-1]}s"
        if self.low is not None and self.high is not None:
            text += f" in [{self.low}, {self.high}]"
        elif self.low is not None:
            text += f" >= {self.low}"
        if self.nullable:
            text += " (or null)"
        return text

    def check(self, value: Any) -> Any:
        """Return the value converted to this field's type, or raise ValueError saying why not."""
        if value is None:
            if self.nullable:
                return None
            raise ValueError(f"expected {self.accepted()}, got null")
        value = _coerce(self.type, value, self.accepted())
        if self.type is list and self.item is not None:
            value = [_coerce(self.item, v, self.accepted()) for v in value]
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"expected {self.accepted()}, got {value!r}{_did_you_mean(value, self.choices)}")
        # written with `not` so that NaN, which compares false with everything, is out of range
        if self.low is not None and not value >= self.low or self.high is not None and not value <= self.high:
            raise ValueError(f"expected {self.accepted()}, got {value!r}")
        return value


def _coerce(kind: type, value: Any, accepted: str) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"expected {accepted}, got {value!r} (not a finite number)")
    if isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)):
        return value
    raise ValueError(f"expected {accepted}, got {value!r} ({type(value).__name__})")


def _did_you_mean(value: Any, options: Any) -> str:
    close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True)
class Variants:
    """A section whose extra keys depend on the value of its discriminator key."""

    key: str
    params: Callable[[str], dict[str, Field]]
    names: Callable[[], tuple[str, ...]]


# ---- the schema -------------------------------------------------------------------------------------

METRICS = {"val_acc": "maximize", "val_f1": "maximize", "val_loss": "minimize"}

FOLDS = {  # null: the dataset's standard protocol (UrbanSound8K 1–8 / 9 / 10, ESC-50 1–3 / 4 / 5, …)
    "train": Field(list, None, item=int, nullable=True),
    "val": Field(list, None, item=int, nullable=True),
    "test": Field(list, None, item=int, nullable=True),
}


def _schema() -> dict[str, Any]:
    from sweep import data, models, study

    return {
        "study": {
            "name": Field(str, None, nullable=True),
            "direction": Field(str, None, choices=("maximize", "minimize"), nullable=True),
            "metric": Field(str, "val_acc", choices=tuple(METRICS)),
            "n_trials": Field(int, 20, low=1),
            "max_trials": Field(int, 100_000, low=1),  # the largest n_trials accepted (`study.check_budget`)
            "timeout": Field(float, None, low=0, nullable=True),
        },
        "storage": Field(str, None, nullable=True),
        "sampler": {
            "name": Field(str, "tpe", choices=tuple(study.SAMPLERS)),
            "seed": Field(int, 0, nullable=True),
            "_variants": Variants("name", study.sampler_params, lambda: tuple(study.SAMPLERS)),
        },
        "pruner": {
            "name": Field(str, "median", choices=tuple(study.PRUNERS)),
            "_variants": Variants("name", study.pruner_params, lambda: tuple(study.PRUNERS)),
        },
        "data": {
            "dataset": Field(str, "synthetic", choices=tuple(sorted(data.DATASETS))),
            "root": Field(str, None, nullable=True),
            "folds": FOLDS,
            "split_seed": Field(int, 0),  # divides a fold shared by val and test; fixed for a study, not per trial
            "cache": Field(bool, True),
            "cache_dir": Field(str, None, nullable=True),
            "cache_local": Field(str, None, nullable=True),
            "sample_rate": Field(int, 16000, low=1000),
            "clip_seconds": Field(float, 1.0, low=0.05),
            "_variants": Variants("dataset", data.dataset_params, lambda: tuple(sorted(data.DATASETS))),
        },
        "features": {
            "name": Field(str, "auto", choices=("auto", *models.INPUTS)),
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
        },
        "model": {
            "name": Field(str, "audio_cnn", choices=tuple(sorted(models.MODELS))),
            "pretrained": Field(bool, False),
            "_variants": Variants("name", models.model_params, lambda: tuple(sorted(models.MODELS))),
        },
        "train": {
            "epochs": Field(int, 10, low=1),
            "freeze_epochs": Field(int, 0, low=0),
            "batch_size": Field(int, 32, low=1),
            "eval_batch_size": Field(int, 128, low=1),
            "lr": Field(float, 1e-3, low=0.0),
            "body_lr_mult": Field(float, 1.0, low=0.0),
            "optimizer": Field(str, "adamw", choices=("adam", "adamw", "sgd", "rmsprop")),
            "momentum": Field(float, 0.9, low=0.0, high=1.0),
            "weight_decay": Field(float, 0.01, low=0.0),
            "scheduler": Field(str, "cosine", choices=("cosine", "onecycle", "none")),
            "label_smoothing": Field(float, 0.0, low=0.0, high=1.0),
            "grad_clip": Field(float, None, low=0.0, nullable=True),
            "amp": Field(bool, True),
            "device": Field(str, "auto", choices=("auto", "cpu", "cuda")),
            "seed": Field(int, 0),
            "threads": Field(int, None, low=1, nullable=True),  # null: set once per study (worker.default_threads)
        },
        "search_space": Field(dict, {}),
        "executor": {
            "name": Field(str, "local", choices=("debug", "local", "slurm")),
            "workers": Field(int, 2, low=1),
            "cpus_per_worker": Field(int, None, low=1, nullable=True),
            "timeout_min": Field(float, 24 * 60, low=1),
            "cluster": Field(str, None, nullable=True),
            "heartbeat_seconds": Field(float, 30.0, low=0.1),
            "stale_after_seconds": Field(float, 180.0, low=0.5),
            "max_retries": Field(int, 2, low=0),
        },
    }


SCHEMA: dict[str, Any] = {}


def schema() -> dict[str, Any]:
    """The schema, built on first use (it reads the model/dataset/sampler registries)."""
    if not SCHEMA:
        SCHEMA.update(_schema())
    return SCHEMA


# ---- YAML: one loader for files, --set values and search spaces ---------------------------------------


ALIAS_NODES = 10_000  # nodes one document may add through aliases; a block shared a few times adds hundreds


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-3` as a float (YAML 1.2), not the string PyYAML's 1.1 rules give, and refuses
    what SafeLoader lets through: a key given twice (PyYAML keeps the last, so half a section vanishes
    silently), an alias inside the block it names (a recursive structure), and aliases that add more than
    ALIAS_NODES nodes. A "billion laughs" file is a few lines that alias into 10^9 nodes: PyYAML shares the
    aliased objects, and the first copy of the config (or validation) expands them until memory runs out.
    Aliases for sharing a block stay legal: the bound is counted on the composed nodes, before anything is
    built, so a bomb is refused after reading at most its own text."""

    def __init__(self, text: str, source: str) -> None:
        super().__init__(text)
        self.source = source
        self._aliased = 0  # nodes added through aliases so far
        self._sizes: dict[int, int] = {}  # id(node) → nodes it expands to, aliases included
        self._open: set[str] = set()  # anchors whose node is still being composed
        self._path: list[str] = []  # the keys above the node being composed, for error messages

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self._count_alias(event)
            return super().compose_node(parent, index)
        self._path.append(str(index.value) if isinstance(index, yaml.ScalarNode) else str(index))
        if event.anchor is not None:
            self._open.add(event.anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._open.discard(event.anchor)
            self._path.pop()

    def compose_mapping_node(self, anchor: str | None) -> yaml.MappingNode:
        node = super().compose_mapping_node(anchor)
        first: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` then keys of its own is how YAML overrides a shared block
            key = self.construct_object(key_node)
            try:
                earlier = first.setdefault(key, key_node)
            except TypeError:  # an unhashable key: SafeLoader refuses it when it builds the mapping
                continue
            if earlier is not key_node:
                raise ConfigError(
                    f"line {key_node.start_mark.line + 1}: the key is given a second time (first at line "
                    f"{earlier.start_mark.line + 1}); YAML would keep only the last one: merge the two",
                    source=self.source,
                    key=".".join([*self._path[1:], str(key)]),
                )
        return node

    def _count_alias(self, event: yaml.AliasEvent) -> None:
        line = event.start_mark.line + 1
        if event.anchor in self._open:
            raise ConfigError(
                f"line {line}: alias *{event.anchor} is inside the block &{event.anchor} it names; "
                "a recursive structure is not a config",
                source=self.source,
            )
        target = self.anchors.get(event.anchor)
        if target is None:
            return  # PyYAML's own error: found undefined alias
        self._aliased += self._size(target)
        if self._aliased > ALIAS_NODES:
            raise ConfigError(
                f"line {line}: alias *{event.anchor} takes the nodes added through aliases past {ALIAS_NODES:,} "
                "(a YAML bomb?); aliases may share a block a few times, not build a large document",
                source=self.source,
            )

    def _size(self, node: yaml.Node) -> int:
        """Nodes `node` expands to; memoised, so a chain of aliases costs its length, not its expansion."""
        known = self._sizes.get(id(node))
        if known is None:
            if isinstance(node, yaml.MappingNode):
                known = 1 + sum(self._size(k) + self._size(v) for k, v in node.value)
            elif isinstance(node, yaml.SequenceNode):
                known = 1 + sum(self._size(item) for item in node.value)
            else:
                known = 1
            self._sizes[id(node)] = known
        return known


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    """What `dump_yaml` falls back to: quotes a string such as `1e-3` that `_Loader` would read as a float."""


_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def parse_yaml(text: str, source: str) -> Any:
    """YAML text → plain data, or ConfigError naming `source` and the line (files, --set values, profiles)."""
    loader = _Loader(text, source)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"not valid YAML{where}: {problem}", source=source) from None
    except RecursionError:  # the parser recurses per level: thousands of `[` are a crash, not a config
        line = loader.get_mark().line + 1
        raise ConfigError(f"line {line}: nested too deeply to be a config", source=source) from None
    finally:
        loader.dispose()


def read_yaml(path: Path) -> Any:
    """A YAML file's data; ConfigError naming the file for text that is not UTF-8 or not valid YAML."""
    return parse_yaml(read_utf8(path), str(path))


def read_utf8(path: Path) -> str:
    """A text file the user wrote (study file, profile, metadata CSV) as UTF-8, a leading BOM dropped.

    Decoded here rather than by `open()`, whose default follows the locale and whose errors are a
    traceback with an offset into a buffer: a file in another encoding is an error naming the file and
    the byte offset and line of its first bad byte.
    """
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        utf16 = " (it starts with a UTF-16 byte-order mark)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise ConfigError(
            f"not UTF-8 text{utf16}: byte 0x{data[exc.start]:02x} at byte offset {exc.start} (line {line}) "
            "is not valid UTF-8; save the file as UTF-8",
            source=str(path),
        ) from None


def dump_yaml(config: Mapping[str, Any]) -> str:
    """Block YAML with flow lists of scalars, written here: every trial writes its config, and PyYAML's
    representer (Python even with libyaml's emitter) cost ~0.7 ms of a worker's CPU per trial, a fifth of what
    plain Optuna spends on a trial's storage calls. Reads back equal with `yaml.safe_load` and `parse_yaml`;
    a value of another type goes through PyYAML, which names it."""
    try:
        return "\n".join(_yaml_mapping(config, "")) + "\n" if config else "{}\n"
    except TypeError:
        return yaml.dump(dict(config), Dumper=_Dumper, sort_keys=False, default_flow_style=None)


_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_./+-]*\Z")  # no indicator, space, colon or leading digit or sign
_WORDS = {"yes", "no", "y", "n", "true", "false", "on", "off", "null"}  # plain, these read back as bool or None
_ESCAPE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\ufeff\ufffe\uffff]")  # breaks, controls


def _yaml_scalar(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return ".nan" if math.isnan(value) else ".inf" if value > 0 else "-.inf"
        text = repr(float(value))  # PyYAML's form: YAML 1.1 floats need a dot, so 1e-05 is 1.0e-05
        return text.replace("e", ".0e", 1) if "e" in text and "." not in text else text
    if isinstance(value, str):
        if _PLAIN.match(value) and value.lower() not in _WORDS:
            return value
        quoted = value.replace("\\", "\\\\").replace('"', '\\"')
        return '"' + _ESCAPE.sub(lambda m: f"\\u{ord(m.group()):04x}", quoted) + '"'
    raise TypeError(type(value).__name__)


def _yaml_inline(value: Any) -> str | None:
    """A scalar, `{}`, `[]` or a flow list of scalars on the key's line; None for a block."""
    if isinstance(value, (dict, list)):
        if not value:
            return "{}" if isinstance(value, dict) else "[]"
        if isinstance(value, dict) or any(isinstance(v, (dict, list)) for v in value):
            return None
        return "[" + ", ".join(_yaml_scalar(v) for v in value) + "]"
    return _yaml_scalar(value)


def _yaml_mapping(node: Mapping[str, Any], pad: str) -> list[str]:
    lines = []
    for key, value in node.items():
        if isinstance(key, str) and len(key) > 100:  # YAML's implicit keys end within 1024 characters
            raise TypeError("long key: PyYAML writes it as an explicit one")
        inline = _yaml_inline(value)
        lines.append(f"{pad}{_yaml_scalar(key)}:" + (f" {inline}" if inline is not None else ""))
        if inline is None:
            lines += _yaml_mapping(value, pad + "  ") if isinstance(value, dict) else _yaml_sequence(value, pad)
    return lines


def _yaml_sequence(items: list[Any], pad: str) -> list[str]:
    lines = []
    for item in items:
        inline = _yaml_inline(item)
        if inline is not None:
            lines.append(f"{pad}- {inline}")
            continue
        inner = _yaml_mapping(item, pad + "  ") if isinstance(item, dict) else _yaml_sequence(item, pad + "  ")
        lines += [f"{pad}- {inner[0][len(pad) + 2:]}", *inner[1:]]
    return lines


# ---- dotted paths ------------------------------------------------------------------------------------


def get_path(config: Mapping[str, Any], path: str) -> Any:
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(path)
        node = node[part]
    return node


def set_path(config: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = config
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = value


def parse_set(item: str) -> tuple[str, Any]:
    """`train.lr=3e-4` → ("train.lr", 0.0003): the value is typed as YAML would type it."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects KEY=VALUE with a dotted key, got {item!r}")
    return key, parse_yaml(text, f"--set {item}")


def field_at(path: str, variant_of: Callable[[str], str | None]) -> Field:
    """The schema field a dotted path names, given the variants chosen; KeyError(message) if none."""
    node: Any = schema()
    parts = path.split(".")
    for i, part in enumerate(parts):
        here = ".".join(parts[:i])
        if not isinstance(node, dict):
            raise KeyError(f"`{here}` is a value, not a section")
        fields = _fields(node, here, variant_of)
        if part not in fields:
            raise KeyError(_unknown(part, here, fields))
        node = fields[part]
    if isinstance(node, dict):
        raise KeyError(f"`{path}` is a section; name one of its keys: {', '.join(_fields(node, path, variant_of))}")
    return node


def _fields(node: dict[str, Any], here: str, variant_of: Callable[[str], str | None]) -> dict[str, Any]:
    fields = {k: v for k, v in node.items() if k != "_variants"}
    variants: Variants | None = node.get("_variants")
    if variants is not None:
        name = variant_of(f"{here}.{variants.key}")
        if name in variants.names():
            fields.update(variants.params(name))
    return fields


def _unknown(key: str, here: str, fields: Mapping[str, Any]) -> str:
    section = f"in section `{here}`" if here else "at the top level"
    return f"unknown key `{key}` {section}{_did_you_mean(key, fields)}; accepted: {', '.join(fields)}"


# ---- validation --------------------------------------------------------------------------------------


def copy_tree(node: Any) -> Any:
    """A copy of a config tree (dicts, lists, scalars), ~10× faster than copy.deepcopy: a worker copies its
    config a few times per trial, and every millisecond there is one per trial per worker."""
    if isinstance(node, dict):
        return {key: copy_tree(value) for key, value in node.items()}
    if isinstance(node, list):
        return [copy_tree(value) for value in node]
    if isinstance(node, (str, int, float, bool, type(None))):
        return node
    return copy.deepcopy(node)


def resolve(
    raw: Any, source: str, overrides: list[tuple[str, Any]] = (), labels: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """File contents + `--set` overrides → the complete, validated config with every default filled.

    An error in an overridden value names the override as typed: `labels` maps a key set by a flag of
    its own to that flag (`study.n_trials` → `--trials 0`); any other override is `--set KEY`.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"the top level must be a mapping of sections, got {type(raw).__name__}", source=source)
    merged = copy_tree(raw)
    origin = _origins(overrides, labels)
    for key, value in overrides:
        if key == "search_space" or key.startswith("search_space."):
            raise ConfigError("the search space cannot be changed with --set; edit the YAML file", key=key)
        set_path(merged, key, value)

    def where(path: str) -> str:  # an override at, above or below the path (`--set trainer.lr` → `trainer`)
        return next(
            (o for k, o in origin.items() if path == k or path.startswith(k + ".") or k.startswith(path + ".")), source
        )

    resolved = _resolve_tree(merged, where)
    if resolved["study"]["direction"] is None:
        resolved["study"]["direction"] = METRICS[resolved["study"]["metric"]]
    if resolved["study"]["direction"] != METRICS[resolved["study"]["metric"]]:
        metric = resolved["study"]["metric"]
        raise ConfigError(
            f"metric {metric} must be {METRICS[metric]}d, not {resolved['study']['direction']}d",
            source=where("study.direction"),
            key="study.direction",
        )
    folds = resolved["data"]["folds"]
    for a, b in (("train", "val"), ("train", "test")):
        shared = sorted(set(folds[a]) & set(folds[b]))
        if shared:
            raise ConfigError(
                f"folds {shared} are in both `{a}` and `{b}`; a fold belongs to one split "
                "(only `val` and `test` may share a fold: it is then divided between them by recording source)",
                source=where("data.folds"),
                key="data.folds",
            )
    if not folds["train"] or not folds["val"]:
        raise ConfigError("train and val need at least one fold each", source=where("data.folds"), key="data.folds")
    from sweep import space

    params = space.parse(resolved["search_space"], resolved, source=where("search_space"))
    for param in params:  # every value the search can pick must make a valid config with the rest of the file
        if any(space.is_discriminator(p) for p in param.when):
            continue  # checked under that variant, below
        dist = param.distribution
        for value in dist.choices if hasattr(dist, "choices") else (dist.low, dist.high):
            variant = copy_tree(merged)
            for cond_path, values in param.when.items():
                set_path(variant, cond_path, values[0])
            set_path(variant, param.path, value)
            try:
                _resolve_tree(variant, where)
            except ConfigError as exc:
                raise ConfigError(
                    f"when the search picks {param.path}={value}: {exc.detail}", source=exc.source, key=exc.key
                ) from None
    return resolved


def _resolve_tree(tree: dict[str, Any], where: Callable[[str], str]) -> dict[str, Any]:
    def variant_of(path: str) -> str | None:
        try:
            value = get_path(tree, path)
        except KeyError:
            value = get_path(defaults_tree(), path)
        return value if isinstance(value, str) else None

    resolved = _resolve_node(schema(), tree, "", where, variant_of)
    from sweep.data import DATASETS
    from sweep.models import MODELS

    folds = resolved["data"]["folds"]
    for split, default in DATASETS[resolved["data"]["dataset"]].folds.items():
        if folds[split] is None:
            folds[split] = list(default)
    model, spec = resolved["model"], MODELS[resolved["model"]["name"]]
    kind = resolved["features"]["name"]
    if kind != "auto" and kind not in spec.inputs:
        raise ConfigError(
            f"model {model['name']} does not read {kind} input; accepted: {', '.join(('auto', *spec.inputs))}",
            source=where("features.name"),
            key="features.name",
        )
    _check_features(resolved, spec.inputs[0] if kind == "auto" else kind, spec.min_mels, where)
    if spec.validate is not None:
        try:
            spec.validate(model)
        except ConfigError as exc:
            raise ConfigError(exc.detail, source=where(exc.key or "model"), key=exc.key) from None
    train = resolved["train"]
    if train["freeze_epochs"] >= train["epochs"]:
        raise ConfigError(
            f"freeze_epochs ({train['freeze_epochs']}) must be less than train.epochs ({train['epochs']}): "
            "the body is trained after the head-only epochs",
            source=where("train.freeze_epochs"),
            key="train.freeze_epochs",
        )
    if model["pretrained"] and not MODELS[model["name"]].pretrained:
        with_weights = sorted(n for n, spec in MODELS.items() if spec.pretrained) or ["none yet"]
        raise ConfigError(
            f"model {model['name']} has no pretrained weights; set model.pretrained: false "
            f"(models with weights: {', '.join(with_weights)})",
            source=where("model.pretrained"),
            key="model.pretrained",
        )
    return resolved


def _check_features(
    resolved: Mapping[str, Any], kind: str, min_mels: int | None, where: Callable[[str], str]
) -> None:
    """Spectrogram settings the clip cannot satisfy, refused here rather than by every trial at its first batch.

    The mel and Kaldi front-ends (sweep/data/features.py) need 0 <= f_min < f_max <= sample_rate/2 (null f_max
    is the Nyquist frequency; null f_min is 0 Hz for logmel, Kaldi's 20 Hz for fbank), a window (`n_fft`) no
    longer than the clip a model sees, and a hop no longer than it either (one frame is no spectrogram); an
    untrained model may need a least number of mel bins (AST: one 16-bin patch).
    """
    if kind == "waveform":
        return
    f, data = resolved["features"], resolved["data"]
    rate = data["sample_rate"]
    nyquist = rate / 2
    low = f["f_min"] if f["f_min"] is not None else 20.0 if kind == "fbank" else 0.0
    high = f["f_max"] if f["f_max"] is not None else nyquist
    accepted = f"accepted: 0 <= f_min < f_max <= data.sample_rate/2 = {nyquist:g} Hz (f_max null: {nyquist:g} Hz)"
    if high > nyquist:
        raise ConfigError(
            f"f_max {high:g} Hz is above the Nyquist frequency; {accepted}",
            source=where("features.f_max"),
            key="features.f_max",
        )
    if low >= high:
        key = "features.f_min" if f["f_min"] is not None else "features.f_max"
        shown = f"f_min {low:g} Hz" + (" (fbank's default)" if f["f_min"] is None else "")
        bound = f"f_max {high:g} Hz" + (" (Nyquist: f_max is null)" if f["f_max"] is None else "")
        raise ConfigError(f"{shown} must be below {bound}; {accepted}", source=where(key), key=key)
    model = resolved["model"]
    if min_mels is not None and not model["pretrained"] and f["n_mels"] < min_mels:
        raise ConfigError(
            f"model {model['name']} needs at least {min_mels} mel bins, got {f['n_mels']}; accepted: n_mels >= "
            f"{min_mels}",
            source=where("features.n_mels"),
            key="features.n_mels",
        )
    samples = round(data["clip_seconds"] * rate)
    clip = f"a clip is data.clip_seconds {data['clip_seconds']:g} × data.sample_rate {rate} = {samples} samples"
    for key in ("n_fft", "hop_length"):
        if f[key] > samples:
            raise ConfigError(
                f"{key} {f[key]} is longer than the clip: {clip}; accepted: {key} <= {samples}",
                source=where(f"features.{key}"),
                key=f"features.{key}",
            )


def _resolve_node(node: dict[str, Any], given: Any, here: str, where, variant_of) -> dict[str, Any]:
    if given is None:  # a section whose keys are all commented out
        given = {}
    if not isinstance(given, dict):
        raise ConfigError(f"expected a mapping of keys, got {given!r}", source=where(here), key=here or None)
    fields = _fields(node, here, variant_of)
    variants: Variants | None = node.get("_variants")
    if variants is not None and variants.key in given:  # a bad variant name first, not the keys it would take
        path = f"{here}.{variants.key}"
        try:
            fields[variants.key].check(given[variants.key])
        except ValueError as exc:
            raise ConfigError(str(exc), source=where(path), key=path) from None
    out: dict[str, Any] = {}
    for key in given:
        if key not in fields:
            path = f"{here}.{key}" if here else key
            raise ConfigError(_unknown(str(key), here, fields), source=where(path), key=path)
    for key, spec in fields.items():
        path = f"{here}.{key}" if here else key
        if isinstance(spec, dict):
            out[key] = _resolve_node(spec, given.get(key, {}), path, where, variant_of)
        elif key in given:
            try:
                out[key] = spec.check(given[key])
            except ValueError as exc:
                raise ConfigError(str(exc), source=where(path), key=path) from None
        else:
            out[key] = copy_tree(spec.default)
    return out


def defaults_tree() -> dict[str, Any]:
    """The schema's defaults, without variant keys; used to look up discriminators not given."""

    def walk(node: dict[str, Any]) -> dict[str, Any]:
        return {
            k: walk(v) if isinstance(v, dict) else copy_tree(v.default) for k, v in node.items() if k != "_variants"
        }

    return walk(schema())


def load(
    path: str | Path, overrides: list[tuple[str, Any]] = (), labels: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Read, override and validate one study file; the study name defaults to the file's stem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("no such file", source=str(path))
    raw = read_yaml(path)
    config = resolve(raw, str(path), overrides, labels)
    if config["study"]["name"] is None:
        config["study"]["name"] = path.stem
    check_study_name(config["study"]["name"], source=_origins(overrides, labels).get("study.name", str(path)))
    return config


def _origins(overrides: list[tuple[str, Any]], labels: Mapping[str, str] | None) -> dict[str, str]:
    """Overridden key → what the user typed to set it: its flag's label, else `--set KEY`."""
    return {key: (labels or {}).get(key, f"--set {key}") for key, _ in overrides}


def check_study_name(name: str, source: str | None = None, key: str | None = "study.name") -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ConfigError(
            f"study name {name!r} must start with a letter or digit and use only letters, digits, '_', '.', '-'",
            source=source,
            key=key,
        )
    return name
