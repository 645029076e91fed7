"""What a study optimises: one metric (`study.metric`) or several (`study.metrics`), and where a trial's values are.

With `study.metrics: [val_acc, params_mb, latency_ms]` the first metric is the primary one, trained and scored
every epoch; the others are static, measured once per trial before its first epoch (`sweep.run.measure`), so
they are known when pruning starts (`sweep.search.dominance`). The Optuna study has one direction per metric.

Optuna keeps no intermediate values for a multi-objective trial (`Trial.report` raises), and TPE reads a pruned
trial's intermediate values through `study.direction`, which a multi-objective study does not have: the primary
metric's curve is the user attribute `CURVE` instead, and every view reads a curve through `curve()`. The static
values are the user attribute `STATIC`, written before the first epoch, so a pruned trial keeps them too.
Constraints (`study.constraints`) are Optuna's own, set on the trial with `Trial.set_constraint` (which every
constrained sampler and `Study.best_trials` read) as soon as the static values are measured.

This module reads configs and trials only (no torch): `sweep status` and the report import it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from sweep.schema import ConfigError

CURVE = "sweep_curve"  # {epoch (a string, JSON): primary metric} of a multi-objective trial
STATIC = "sweep_objectives"  # {static metric: value}, measured before the first epoch
# pruners that judge a multi-objective trial (sweep's dominance rule); the others need `Trial.report`
MO_PRUNERS = ("median", "percentile", "none")
SINGLE_SAMPLERS = ("cmaes",)  # Optuna's CMA-ES raises in a multi-objective study


def check(
    study: dict[str, Any], given: Callable[[str], bool], pruner: str, sampler: str, where: Callable[[str], str]
) -> None:
    """Validate `study.metrics/directions/constraints` and fill them in: `study.metric` and `study.direction`
    become the primary metric's, so everything that trains one metric trains the primary.

    `given(key)`: whether the file (or a --set) gave that key, as opposed to its default."""
    from sweep.config.sections import METRICS, STATIC_METRICS

    known = {**METRICS, **STATIC_METRICS}
    metrics, directions = study["metrics"], study["directions"]

    def refuse(message: str, key: str) -> None:
        raise ConfigError(message, source=where(key), key=key)

    if metrics is None:
        if directions not in (None, [study["direction"]]):
            refuse("directions need several metrics: set study.metrics (one metric: study.direction)",
                   "study.directions")
        study["directions"] = [study["direction"]]
    else:
        if len(metrics) < 2:
            refuse(f"study.metrics takes two or more metrics, got {metrics}; one metric: study.metric",
                   "study.metrics")
        for name in metrics:
            if name not in known:
                refuse(f"sweep cannot compute metric {name!r}; accepted: {', '.join(known)}", "study.metrics")
        if len(set(metrics)) < len(metrics):
            refuse(f"a metric is named twice in {metrics}", "study.metrics")
        if metrics[0] not in METRICS:
            refuse(f"the first metric is the one trained and scored each epoch: one of {', '.join(METRICS)}, got "
                   f"{metrics[0]!r} (static metrics, {', '.join(STATIC_METRICS)}, come after it)", "study.metrics")
        for name in metrics[1:]:
            if name in METRICS:
                refuse(f"only the first metric is scored each epoch; {name!r} cannot be another objective "
                       f"(accepted after the first: {', '.join(STATIC_METRICS)})", "study.metrics")
        if directions is None:
            directions = [known[m] for m in metrics]
        if len(directions) != len(metrics):
            refuse(f"{len(directions)} directions for {len(metrics)} metrics; give one per metric, in order, or "
                   "leave study.directions out", "study.directions")
        for name, direction in zip(metrics, directions):
            if direction != known[name]:
                refuse(f"metric {name} must be {known[name]}d, not {direction}d", "study.directions")
        for key, own in (("study.metric", metrics[0]), ("study.direction", directions[0])):
            if given(key) and study[key.split(".")[1]] != own:  # a resolved config holds the primary's: fine
                refuse(f"give either {key} (one objective) or study.metrics/study.directions (several), not both",
                       key)
        if pruner not in MO_PRUNERS:
            refuse(f"pruner {pruner} needs a single objective; with several, accepted: {', '.join(MO_PRUNERS)} "
                   "(sweep's dominance rule, see README)", "pruner.name")
        if sampler in SINGLE_SAMPLERS:
            refuse(f"sampler {sampler} takes a single objective; with several: tpe, nsga2, gp, random, qmc, grid",
                   "sampler.name")
        study.update(metric=metrics[0], direction=directions[0], directions=list(directions))
    for name, limits in study["constraints"].items():
        key = f"study.constraints.{name}"
        if name in METRICS:
            refuse(f"{name} is known only when training ends; a constraint needs a static metric "
                   f"({', '.join(STATIC_METRICS)}); to pick under a limit of {name}, use `sweep best --pick`", key)
        if name not in STATIC_METRICS:
            refuse(f"no constraint on unknown metric {name!r}; accepted: {', '.join(STATIC_METRICS)}", key)
        if not isinstance(limits, dict) or not limits or set(limits) - {"min", "max"}:
            refuse(f"expected {{min: X}}, {{max: Y}} or both, got {limits!r}", key)
        for bound, value in limits.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                refuse(f"{bound} must be a number, got {value!r}", f"{key}.{bound}")


def static_metrics(config: Mapping[str, Any]) -> list[str]:
    """The static metrics a trial of `config` measures: its static objectives, then its constrained ones."""
    study = config["study"]
    names = [m for m in (study.get("metrics") or [])[1:]]
    return names + [m for m in study.get("constraints", {}) if m not in names]


def constraint_values(config: Mapping[str, Any], measured: Mapping[str, float]) -> dict[str, float]:
    """Optuna's constraint values (<= 0: satisfied), one per limit: `params_mb.max` = measured - max."""
    out = {}
    for name, limits in config["study"].get("constraints", {}).items():
        if "max" in limits:
            out[f"{name}.max"] = measured[name] - limits["max"]
        if "min" in limits:
            out[f"{name}.min"] = limits["min"] - measured[name]
    return out


def is_multi(study: optuna.Study) -> bool:
    return len(study.directions) > 1


def maximizes_primary(study: optuna.Study) -> bool:
    return study.directions[0] == optuna.study.StudyDirection.MAXIMIZE


def curve(t: FrozenTrial) -> dict[int, float]:
    """The primary metric per epoch: Optuna's intermediate values, or (several objectives) sweep's own."""
    if t.intermediate_values:
        return t.intermediate_values
    return {int(step): value for step, value in t.user_attrs.get(CURVE, {}).items()}


def primary(t: FrozenTrial) -> float | None:
    """The trial's value of the primary metric as Optuna holds it (`FrozenTrial.value` raises with several)."""
    return t.values[0] if t.values else None


def static(t: FrozenTrial) -> dict[str, float]:
    return dict(t.user_attrs.get(STATIC, {}))


def objective_names(config: Mapping[str, Any]) -> list[str]:
    return list(config["study"].get("metrics") or [config["study"]["metric"]])


def feasible(t: FrozenTrial) -> bool:
    return all(v <= 0 for v in t.constraints.values())


def told_values(config: Mapping[str, Any], best: float, measured: Mapping[str, float]) -> Sequence[float]:
    """What a complete trial is told: its best epoch's primary value, then each static objective."""
    return [best, *(measured[m] for m in objective_names(config)[1:])]
