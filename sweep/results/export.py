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
from sweep.search.study import stored_config


def best_config(study: optuna.Study) -> tuple[optuna.trial.FrozenTrial, dict]:
    top = status.best(study)
    if top is None:
        n = status.tally(study.get_trials(deepcopy=False))
        raise ConfigError(
            f"study {study.study_name!r} has no completed trial yet "
            f"({n['pruned']} pruned, {n['fail']} failed, {n['running']} running)"
        )
    config = space.apply(stored_config(study), top.params)
    config["study"].update(name=f"{study.study_name}-best", n_trials=1)
    return top, resolve(config, f"best trial of {study.study_name}")


def write_best(study: optuna.Study, path: Path) -> optuna.trial.FrozenTrial:
    top, config = best_config(study)
    metric = typed(config).study.metric
    header = (
        f"# Best trial {top.number} of study {study.study_name}: {metric}={top.value:.6g} "
        f"at epoch {top.user_attrs.get('best_epoch', '?')}.\n"
        "# The study's base config with the trial's params applied; run it with `sweep launch`.\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + dump_yaml(config))
    return top
