"""The `search_space` section: dotted config paths → Optuna distributions, with conditions.

Each entry's name is the dotted config path it sets, and that is also the Optuna parameter name, so a
trial's params read as config overrides (`train.lr`, `model.depth`) and `best.yaml` is base + params.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from sweep.config.paths import copy_tree, get_path, set_path
from sweep.config.sections import field_at, schema
from sweep.schema import ConfigError, Field

# What a trial may change; study, storage, sampler, pruner and executor belong to the whole study.
TRIAL_SECTIONS = ("data", "features", "augment", "model", "train")

KEYS = {
    "float": {"type", "low", "high", "log", "step", "when"},
    "int": {"type", "low", "high", "log", "step", "when"},
    "categorical": {"type", "choices", "when"},
}


@dataclass(frozen=True)
class Param:
    """One searched config path: its distribution and the values other paths must hold for it to apply."""

    path: str
    distribution: BaseDistribution
    when: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def active(self, config: Mapping[str, Any], drawn: Mapping[str, Any] | None = None) -> bool:
        """Whether the param is drawn: its conditions' paths read from `drawn` (the params drawn so far, by
        dotted path) where they are there, else from `config`."""
        drawn = drawn or {}
        return all((drawn[p] if p in drawn else get_path(config, p)) in values for p, values in self.when.items())


def parse(section: Mapping[str, Any], base: Mapping[str, Any], source: str = "search_space") -> list[Param]:
    """Validate the search space against the base config; return params in the order they must be drawn."""
    if not isinstance(section, Mapping):
        raise ConfigError(
            "expected a mapping of dotted config paths to distributions", source=source, key="search_space"
        )
    params = {path: _parse_entry(path, spec, source) for path, spec in section.items()}
    for param in params.values():
        _check_target(param, params, base, source)
    return _ordered(params, source)


def _parse_entry(path: Any, spec: Any, source: str) -> Param:
    key = f"search_space.{path}"
    if isinstance(spec, list):
        spec = {"type": "categorical", "choices": spec}
    if not isinstance(spec, Mapping) or spec.get("type") not in KEYS:
        raise ConfigError(
            "expected a list of choices, or a mapping with `type: float|int|categorical` "
            "(float/int take low, high, log, step; categorical takes choices; any takes when)",
            source=source,
            key=key,
        )
    kind = spec["type"]
    unknown = set(spec) - KEYS[kind]
    if unknown:
        raise ConfigError(
            f"unknown key(s) {sorted(unknown)} for a {kind} entry; accepted: {sorted(KEYS[kind])}",
            source=source,
            key=key,
        )
    when = _parse_when(spec.get("when", {}), source, key)
    try:
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise ValueError("`choices` must be a non-empty list")
            bad = [c for c in choices if not (c is None or isinstance(c, (bool, int, float, str)))]
            if bad:
                raise ValueError(f"choices must be numbers, strings, booleans or null, got {bad[0]!r}")
            return Param(str(path), CategoricalDistribution(choices), when)
        for bound in ("low", "high"):
            value = spec.get(bound)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"`{bound}` must be a number, got {value!r}")
        low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
        if not isinstance(log, bool):
            raise ValueError(f"`log` must be true or false, got {log!r}")
        if low > high:
            raise ValueError(f"low ({low}) must be <= high ({high})")
        if log and low <= 0:
            raise ValueError(f"log scale needs low > 0, got low={low}")
        if log and step is not None:
            raise ValueError("`step` cannot be combined with `log: true`")
        if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
            raise ValueError(f"`step` must be a positive number, got {step!r}")
        if kind == "int":
            if not all(isinstance(v, int) for v in (low, high)) or (step is not None and not isinstance(step, int)):
                raise ValueError("an int entry needs integer low, high and step")
            return Param(str(path), IntDistribution(low, high, log=log, step=step or 1), when)
        return Param(str(path), FloatDistribution(float(low), float(high), log=log, step=step), when)
    except ValueError as exc:
        raise ConfigError(str(exc), source=source, key=key) from None


def _parse_when(when: Any, source: str, key: str) -> dict[str, tuple[Any, ...]]:
    if not isinstance(when, Mapping):
        raise ConfigError(
            "`when` must map dotted config paths to a value or a list of values", source=source, key=f"{key}.when"
        )
    return {str(p): tuple(v) if isinstance(v, list) else (v,) for p, v in when.items()}


def _check_target(param: Param, params: Mapping[str, Param], base: Mapping[str, Any], source: str) -> None:
    """The path must be a config leaf for every variant this param can be active under."""
    key = f"search_space.{param.path}"
    section = param.path.split(".", 1)[0]
    if section in schema() and section not in TRIAL_SECTIONS:
        raise ConfigError(
            f"`{section}` is set once per study and cannot be searched; searchable sections: "
            + ", ".join(TRIAL_SECTIONS),
            source=source,
            key=key,
        )
    for cond_path, values in param.when.items():
        try:
            cond_field = field_at(cond_path, lambda p: _variant(p, base))
        except KeyError as exc:
            raise ConfigError(f"condition on {exc.args[0]}", source=source, key=f"{key}.when") from None
        for value in values:
            try:
                cond_field.check(value)
            except ValueError as exc:
                raise ConfigError(f"condition {cond_path}: {exc}", source=source, key=f"{key}.when") from None
    for combo in _variant_combos(param, params, base):
        try:
            target = field_at(param.path, lambda p, combo=combo: combo.get(p, _variant(p, base)))
        except KeyError as exc:
            chosen = ", ".join(f"{p}={v}" for p, v in combo.items())
            hint = f" when {chosen}; add a `when:` condition" if chosen else ""
            raise ConfigError(f"not a config key: {exc.args[0]}{hint}", source=source, key=key) from None
        _check_values(param, target, source, key)


def _variant(path: str, base: Mapping[str, Any]) -> str | None:
    value = get_path(base, path)
    return value if isinstance(value, str) else None


def _variant_combos(param: Param, params: Mapping[str, Param], base: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each assignment of the discriminators (model.name, data.dataset, …) under which `param` is active."""
    section = param.path.split(".", 1)[0]
    discriminators = [p for p in params if p != param.path and is_discriminator(p) and p.startswith(section + ".")]
    combos: list[dict[str, Any]] = [{}]
    for d in discriminators:
        choices = params[d].distribution.choices if isinstance(params[d].distribution, CategoricalDistribution) else ()
        allowed = param.when.get(d)
        combos = [dict(c, **{d: v}) for c in combos for v in choices if allowed is None or v in allowed]
    return combos


def is_discriminator(path: str) -> bool:
    """True for the keys that choose a section's variant: model.name, data.dataset, sampler.name, …"""
    section = path.split(".", 1)[0]
    node = schema().get(section)
    variants = node.get("_variants") if isinstance(node, dict) else None
    return variants is not None and path == f"{section}.{variants.key}"


def _check_values(param: Param, target: Field, source: str, key: str) -> None:
    dist = param.distribution
    if isinstance(dist, CategoricalDistribution):
        values: tuple[Any, ...] = dist.choices
    elif isinstance(dist, IntDistribution):
        values = (dist.low, dist.high)
    else:
        if target.type not in (float, object):  # object: a value inside a nested one, checked with it
            raise ConfigError(
                f"a float distribution cannot set this key, which takes {target.accepted()}", source=source, key=key
            )
        values = (dist.low, dist.high)
    for value in values:
        try:
            target.check(value)
        except ValueError as exc:
            raise ConfigError(f"value {value!r} does not fit `{param.path}`: {exc}", source=source, key=key) from None


def _ordered(params: Mapping[str, Param], source: str) -> list[Param]:
    """Draw each param after the params its condition reads."""
    done: list[Param] = []
    visiting: set[str] = set()

    def visit(path: str) -> None:
        if any(p.path == path for p in done):
            return
        if path in visiting:
            raise ConfigError("conditions form a cycle", source=source, key=f"search_space.{path}.when")
        visiting.add(path)
        for dep in params[path].when:
            if dep in params:
                visit(dep)
        visiting.discard(path)
        done.append(params[path])

    for path in params:
        visit(path)
    return done


def suggest(trial: optuna.Trial, params: list[Param], base: Mapping[str, Any]) -> dict[str, Any]:
    """Draw the active params for one trial; returns {dotted path: value}."""
    drawn: dict[str, Any] = {}
    for param in params:
        if param.active(base, drawn):
            drawn[param.path] = _draw(trial, param.path, param.distribution)
    return drawn


def _draw(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


def apply(base: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """Base config with params set and the search space dropped: a config a single run takes as is.

    A param that picks a section's variant (model.name, …) drops the base's keys that the picked variant does
    not take (the base is resolved, so it holds every key of its own variant).
    """
    config = copy_tree(dict(base))
    for path, value in params.items():
        if is_discriminator(path):
            section = path.split(".", 1)[0]
            variants = schema()[section]["_variants"]
            if value in variants.names() and isinstance(config.get(section), dict):
                keep = set(schema()[section]) | set(variants.params(value))
                config[section] = {k: v for k, v in config[section].items() if k in keep}
        set_path(config, path, value)
    config["search_space"] = {}
    return config
