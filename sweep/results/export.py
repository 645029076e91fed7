"""The best trial as a config: base config + best params, no search space, runnable as is."""

from __future__ import annotations

from pathlib import Path

import optuna

from sweep.config.resolve import resolve
from sweep.config.typed import typed
from sweep.config.yamlfile import dump_yaml
from sweep.look import status
from sweep.schema import ConfigError
from sweep.search import space
from sweep.search.objectives import primary, static
from sweep.search.study import stored_config


def picked(top: optuna.trial.FrozenTrial, rule: str | None) -> str:
    """The static values of a picked trial, and the rule that picked it, for the lines that name it."""
    values = "".join(f", {k}={v:.4g}" for k, v in static(top).items())
    return values + (f" (--pick {rule})" if rule else "")


def best_config(study: optuna.Study, rule: str | None = None) -> tuple[optuna.trial.FrozenTrial, dict]:
    """The best trial (`rule`: the `--pick` rule, `sweep.search.pareto`) and its config."""
    top = status.best(study, rule)
    if top is None and rule is not None and status.tally(study.get_trials(deepcopy=False))["complete"]:
        raise ConfigError(f"--pick {rule}: no complete trial of study {study.study_name!r} meets it")
    if top is None:
        n = status.tally(study.get_trials(deepcopy=False))
        raise ConfigError(
            f"study {study.study_name!r} has no completed trial yet "
            f"({n['pruned']} pruned, {n['fail']} failed, {n['running']} running)"
        )
    config = space.apply(stored_config(study), top.params)
    config["study"].update(name=f"{study.study_name}-best", n_trials=1)
    return top, resolve(config, f"best trial of {study.study_name}")


def write_best(study: optuna.Study, path: Path, rule: str | None = None) -> optuna.trial.FrozenTrial:
    top, config = best_config(study, rule)
    metric = typed(config).study.metric
    header = (
        f"# Best trial {top.number} of study {study.study_name}: {metric}={primary(top):.6g}{picked(top, rule)} "
        f"at epoch {top.user_attrs.get('best_epoch', '?')}.\n"
        "# The study's base config with the trial's params applied; run it with `sweep launch`.\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + dump_yaml(config))
    return top
