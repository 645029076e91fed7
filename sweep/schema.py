"""The bottom layer: what a config key accepts (`Field`), the error that names it (`ConfigError`), and the one
`Registry` every extension point uses (models, datasets, features, samplers, pruners, executors).

It imports nothing from sweep, so every layer above can declare its keys here and `sweep.config` can
assemble the whole schema from the registries without an import circle.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar


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
    # a value a dotted path may reach inside (`model.blocks.2.res.0`: a list index, a mapping key); what is set
    # there is checked with the whole value, by its entry's validation, when the config is resolved
    nested: bool = False

    def accepted(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
                 object: "a value"}
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
            raise ValueError(f"expected {self.accepted()}, got {value!r}{did_you_mean(value, self.choices)}")
        # written with `not` so that NaN, which compares false with everything, is out of range
        if self.low is not None and not value >= self.low or self.high is not None and not value <= self.high:
            raise ValueError(f"expected {self.accepted()}, got {value!r}")
        return value


def _coerce(kind: type, value: Any, accepted: str) -> Any:
    if kind is object:
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"expected {accepted}, got {value!r} (not a finite number)")
    if isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)):
        return value
    raise ValueError(f"expected {accepted}, got {value!r} ({type(value).__name__})")


def did_you_mean(value: Any, options: Any) -> str:
    close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_fields(fields: Mapping[str, Field], given: Mapping[Any, Any], source: str, accepted: str) -> dict[str, Any]:
    """A flat section (a cluster profile, say) checked against its fields, defaults filled; an unknown key or a
    bad value is a ConfigError naming `source` and the key. `accepted`: how an unknown key's error lists them."""
    for key in given:
        if key not in fields:
            raise ConfigError(f"unknown {accepted} key; accepted: {', '.join(fields)}", source=source, key=str(key))
    out = {}
    for key, field in fields.items():
        try:
            out[key] = field.check(given[key]) if key in given else field.default
        except ValueError as exc:
            raise ConfigError(str(exc), source=source, key=key) from None
    return out


def check_study_name(name: str, source: str | None = None, key: str | None = "study.name") -> str:
    """A study name becomes a folder and a database name: letters, digits, `_`, `.` and `-`, no leading sign."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ConfigError(
            f"study name {name!r} must start with a letter or digit and use only letters, digits, '_', '.', '-'",
            source=source,
            key=key,
        )
    return name


class Entry(Protocol):
    """What every registered entry declares: the config keys it takes beside its section's own."""

    params: Mapping[str, Field]


E = TypeVar("E", bound=Entry)
B = TypeVar("B")


@dataclass(frozen=True)
class Spec(Generic[B]):
    """An entry that is its builder and nothing more (a sampler, a pruner, a feature front-end); families with
    more to declare (a model's inputs, a dataset's folds, an executor's checks) have a spec class of their own."""

    params: Mapping[str, Field]
    build: B
    doc: str = ""


class Registry(Generic[E]):
    """Name → entry for one extension point, in registration order.

    An entry is a small frozen dataclass of the extension point's own shape (a model family's builder and
    inputs, an executor's checks and outcomes, …); all of them declare `params`, the keys a config may give
    when it picks that name, which is how the config schema rejects a key the chosen entry does not take.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind  # "model", "dataset", …: how errors name an entry
        self._entries: dict[str, E] = {}

    def add(self, name: str, entry: E) -> E:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def __getitem__(self, name: str) -> E:
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}{did_you_mean(name, self._entries)}; accepted: {', '.join(self)}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def items(self) -> Iterator[tuple[str, E]]:
        return iter(self._entries.items())

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def params(self, name: str) -> Mapping[str, Field]:
        return self[name].params

    def variants(self, key: str, order: Callable[[tuple[str, ...]], tuple[str, ...]] = tuple) -> Variants:
        """The section keys chosen by `key` (`model.name`, …): this registry's entries and their params."""
        return Variants(key, self.params, lambda: order(self.names()))

    def field(self, default: str, order: Callable[[tuple[str, ...]], tuple[str, ...]] = tuple, **kw: Any) -> Field:
        """The discriminator field that picks one of the entries (its choices listed in `order`)."""
        return Field(str, default, choices=order(self.names()), **kw)


def by_name(names: tuple[str, ...]) -> tuple[str, ...]:
    """Alphabetical order, for registries listed that way in errors and docs (models, datasets)."""
    return tuple(sorted(names))


@dataclass(frozen=True)
class Variants:
    """A section whose extra keys depend on the value of its discriminator key."""

    key: str
    params: Callable[[str], Mapping[str, Field]]
    names: Callable[[], tuple[str, ...]]
