"""The resolved config as frozen, typed sections: code reads `cfg.train.lr`, and a misspelt key is an
AttributeError the first time a test runs that line (tests/test_architecture.py also checks every `cfg.x.y`
in sweep/ against the schema without running it), not a KeyError in a worker hours into a study.

The classes are generated from the resolved config itself, which holds exactly the schema's keys for the chosen
variants (`model` of `vit` has `patch`, of `audio_cnn` `width`), so they cannot drift from it; this module
imports nothing from sweep, so every layer may use it. A section is also a read-only Mapping, so code that
takes a section as a mapping (a model family's builder, `dict(cfg.model)`) works on either form. The plain
dict `resolve` returns stays what is written to YAML, stored in the study and overridden by dotted paths.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Iterator, Mapping
from typing import Any


class Section(Mapping):
    """Base of the generated section classes: frozen attributes, readable as a mapping too."""

    __slots__ = ()

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def __iter__(self) -> Iterator[str]:
        return (f.name for f in dataclasses.fields(self))

    def __len__(self) -> int:
        return len(dataclasses.fields(self))


_CLASSES: dict[tuple[str, tuple[str, ...]], type[Section]] = {}


def _section_class(here: str, keys: tuple[str, ...]) -> type[Section]:
    known = _CLASSES.get((here, keys))
    if known is None:
        name = "".join(part.title().replace("_", "") for part in here.split(".")) + "Config" if here else "Config"
        known = dataclasses.make_dataclass(name, keys, bases=(Section,), frozen=True, slots=True)
        _CLASSES[(here, keys)] = known
    return known


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return types.MappingProxyType({k: _freeze(v) for k, v in value.items()})
    return value


# the schema's nested sections (tests/test_architecture.py checks this against it); everything else is a value
SECTIONS = frozenset(
    {"study", "sampler", "pruner", "data", "data.folds", "features", "augment", "model", "train", "executor"}
)


def typed(config: Mapping[str, Any]) -> Section:
    """A resolved config (or one already typed: returned as is) as frozen sections."""
    if isinstance(config, Section):
        return config

    def build(given: Mapping[str, Any], here: str) -> Section:
        values = {}
        for key, value in given.items():
            path = f"{here}.{key}" if here else key
            values[key] = build(value, path) if path in SECTIONS and isinstance(value, Mapping) else _freeze(value)
        return _section_class(here, tuple(values))(**values)

    return build(config, "")
