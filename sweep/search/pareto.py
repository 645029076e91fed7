"""The Pareto front of a multi-objective study, one trial picked from it by a stated rule, and its hypervolume.

`--pick` rules (`sweep best`, `sweep final`; DEFAULT when none is given):
- `best:METRIC`: the front's best trial by one objective (`best:val_acc`: the most accurate; with
  `study.constraints` the front holds feasible trials only, so this is "the most accurate under the limits").
- `knee`: the front's trial closest (Euclidean) to the ideal point once each objective is min–max normalised over
  the front: the balanced compromise.
- `max:METRIC=LIMIT` / `min:METRIC=LIMIT`: the best primary metric among complete feasible trials whose METRIC
  (an objective, or a static metric measured for a constraint) is at most / at least LIMIT.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from sweep.schema import ConfigError
from sweep.search.objectives import feasible, static

DEFAULT = "best"  # best:<the primary metric>


def value_of(t: FrozenTrial, metric: str, names: Sequence[str]) -> float | None:
    """A complete trial's value of `metric`: one of its told values, or a static metric it measured."""
    if metric in names and t.values is not None:
        return t.values[names.index(metric)]
    return static(t).get(metric)


def dominates(a: Sequence[float], b: Sequence[float], minimize: Sequence[bool]) -> bool:
    """At least as good on every objective and better on one."""
    signed = [(x, y) if m else (-x, -y) for x, y, m in zip(a, b, minimize)]
    return all(x <= y for x, y in signed) and any(x < y for x, y in signed)


def front(trials: Sequence[FrozenTrial], minimize: Sequence[bool]) -> list[FrozenTrial]:
    """The complete, feasible trials no other such trial dominates, by number."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None and feasible(t)]
    return [t for t in done if not any(dominates(o.values, t.values, minimize) for o in done if o is not t)]


def pick(trials: Sequence[FrozenTrial], config: Mapping[str, Any], rule: str | None = None) -> FrozenTrial | None:
    """The trial `rule` picks (DEFAULT when None) from the complete trials of a study of `config`; None if none."""
    names = list(config["study"].get("metrics") or [config["study"]["metric"]])
    minimize = [d == "minimize" for d in config["study"].get("directions") or [config["study"]["direction"]]]
    rule = rule or DEFAULT
    kind, _, arg = rule.partition(":")
    on_front = front(trials, minimize)
    if kind == "best":
        metric = arg or names[0]
        _known(metric, names, rule, objectives_only=True)
        i = names.index(metric)
        return min(on_front, key=lambda t: ((t.values[i] if minimize[i] else -t.values[i]), t.number), default=None)
    if kind == "knee" and not arg:
        return _knee(on_front, minimize)
    if kind in ("max", "min") and "=" in arg:
        metric, _, text = arg.partition("=")
        _known(metric, names, rule, objectives_only=False, config=config)
        try:
            limit = float(text)
        except ValueError:
            raise ConfigError(f"--pick {rule}: the limit {text!r} is not a number") from None
        done = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None and feasible(t)]
        within = [t for t in done if (v := value_of(t, metric, names)) is not None
                  and (v <= limit if kind == "max" else v >= limit)]
        return min(within, key=lambda t: ((t.values[0] if minimize[0] else -t.values[0]), t.number), default=None)
    raise ConfigError(f"--pick {rule}: unknown rule; accepted: best:METRIC, knee, max:METRIC=LIMIT, "
                      f"min:METRIC=LIMIT (METRIC one of {', '.join(names)}); default {DEFAULT}:{names[0]}")


def _known(metric: str, names: Sequence[str], rule: str, objectives_only: bool,
           config: Mapping[str, Any] | None = None) -> None:
    allowed = list(names) + ([] if objectives_only or config is None else
                             [m for m in config["study"].get("constraints", {}) if m not in names])
    if metric not in allowed:
        raise ConfigError(f"--pick {rule}: {metric!r} is not measured in this study; accepted: {', '.join(allowed)}")


def _knee(on_front: Sequence[FrozenTrial], minimize: Sequence[bool]) -> FrozenTrial | None:
    if not on_front:
        return None
    columns = list(zip(*(t.values for t in on_front)))
    lows, highs = [min(c) for c in columns], [max(c) for c in columns]

    def distance(t: FrozenTrial) -> float:
        total = 0.0
        for v, lo, hi, m in zip(t.values, lows, highs, minimize):
            scaled = 0.0 if hi == lo else (v - lo) / (hi - lo)
            total += (scaled if m else 1 - scaled) ** 2  # 0 at the ideal end of each objective
        return math.sqrt(total)

    return min(on_front, key=lambda t: (distance(t), t.number))


def hypervolume_2d(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """The area the points dominate up to `reference`, both objectives minimised (negate a maximised one)."""
    inside = sorted((x, y) for x, y in points if x < reference[0] and y < reference[1])
    area, best_y = 0.0, reference[1]
    for x, y in inside:
        if y < best_y:
            area += (reference[0] - x) * (best_y - y)
            best_y = y
    return area
