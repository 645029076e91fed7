"""`sweep launch FILE --warm-start STUDY[,STUDY…]`: the finished trials of earlier studies seed a new one.

Optuna's `add_trials` takes the identical space only, and a trial stored with other distributions than the
study's sends multivariate TPE and CMA-ES back to random sampling (their search space is the intersection of
the trials' distributions). So every seeded trial is stored with the NEW space's distributions, and each old
param is brought into that space by one rule (`fit`, `convert`; README "Warm starts"):

- a value inside the new distribution is kept;
- a number outside a changed range is clipped to the nearer bound when it lies within `NEAR` (10 %) of the
  range's width from it (log scale: of the width in log space), and moved to the nearest point of a new
  `step`; farther out the trial is skipped: its evidence is about a region the new study excludes, and a clipped
  point that far off would tell the sampler the bound scored what somewhere else scored;
- a choice no longer offered: skipped (no nearby choice exists);
- a param of the new space the old trial lacks: filled from the old study's own config when it was fixed there
  (the old study searched less, its trials still say where they stood), else skipped;
- a param the old trial has and the new space does not draw: dropped when its value is the one the new study
  fixes, else skipped (it trained something the new study cannot reproduce).

Everything is checked and converted before the new study exists (`plan`), so a bad source leaves nothing
behind; `seed` then writes the trials. Seeded trials carry `SEEDED` (provenance) and `RULE` (what was changed):
they do not count toward the budget (`sweep.search.study.counts`) and are never the study's best.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from sweep.config.paths import get_path
from sweep.config.resolve import load
from sweep.schema import ConfigError, check_study_name
from sweep.search import space
from sweep.search.study import SEEDED, load_existing, stored_config
from sweep.search.study import SEEDED_RULE as RULE
from sweep.storage import mask, open_storage, resolve_storage, studies_dir

SOURCES_ATTR = "warm_start"  # the study's own record of the sources it was seeded from
NEAR = 0.10  # how far outside a new range (a share of its width) a value is still clipped rather than skipped
FLAG = "--warm-start"


@dataclass(frozen=True)
class Source:
    """One study to seed from: its name and the (unexpanded) URL of its storage."""

    name: str
    url: str
    given: str  # as typed (its password masked), for messages

    @property
    def label(self) -> str:
        return f"{self.name}@{mask(self.url)}"


@dataclass
class Plan:
    """What one source gives: the trials to add, and why the others were left out."""

    source: Source
    trials: list[FrozenTrial] = field(default_factory=list)
    rules: Counter = field(default_factory=Counter)  # "kept", "clipped", "filled", "dropped" → trials
    skipped: Counter = field(default_factory=Counter)  # reason → trials
    finished: int = 0
    differs: list[str] = field(default_factory=list)  # fixed settings its trials ran with that this study changes

    def line(self) -> str:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.rules.items()))
        text = f"warm start from {self.source.label}: seeded {len(self.trials)}" + (f" ({kinds})" if kinds else "")
        text += f" of its {self.finished} complete trials"
        if self.skipped:
            text += f", skipped {sum(self.skipped.values())} (" + ", ".join(
                f"{why}: {n}" for why, n in self.skipped.most_common()) + ")"
        if self.differs:
            text += "; note: its trials ran with " + ", ".join(self.differs[:5]) + (
                f" and {len(self.differs) - 5} more" if len(self.differs) > 5 else "")
        return text


class Skip(Exception):
    """A trial that cannot be brought into the new space; its message is the reason, counted per source."""


# ---- the sources -------------------------------------------------------------------------------------


def parse_sources(text: str, cli_storage: str | None, config: Mapping[str, Any]) -> list[Source]:
    """STUDY[,STUDY…]: a name (in the storage the new study's own name would resolve to: --storage,
    $SWEEP_STORAGE, the file's storage:, else studies/NAME/study.db), NAME@URL, or a study's YAML file."""
    sources = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            raise ConfigError(f"{FLAG} {text!r}: an empty study name; accepted: NAME, NAME@URL or a study's "
                              "YAML file, separated by commas")
        path = Path(item)
        if path.suffix in (".yaml", ".yml"):
            if not path.is_file():
                raise ConfigError(f"{FLAG} {item}: no such file")
            loaded = load(path)
            name = loaded["study"]["name"]
            sources.append(Source(name, resolve_storage(name, cli_storage, loaded), item))
        elif "@" in item:
            name, url = item.split("@", 1)
            if "://" not in url:  # not echoed: it may hold a password
                raise ConfigError(f"{FLAG} {name}@…: what follows the '@' is not a storage URL; accepted: "
                                  "NAME@sqlite:///PATH, NAME@postgresql://…, NAME@mysql://…, NAME@journal:///PATH")
            url = resolve_storage(name, url)
            sources.append(Source(check_study_name(name, key=None), url, f"{name}@{mask(url)}"))
        else:
            name = check_study_name(item, key=None)
            sources.append(Source(name, resolve_storage(name, cli_storage, config), item))
    return sources


def _open_source(source: Source) -> optuna.Study:
    """The source study, read only; a missing one is refused listing the studies its storage holds."""
    scheme = next((s for s in ("sqlite:///", "journal:///") if source.url.startswith(s)), None)
    if scheme and not Path(source.url[len(scheme):]).exists():  # opening a file storage would create it
        held = sorted(p.parent.name for p in studies_dir().glob("*/study.db"))
        raise ConfigError(f"{FLAG} {source.given}: no study named {source.name!r}: {source.url[len(scheme):]} "
                          f"does not exist (studies under {studies_dir()}: {', '.join(held) or 'none'}; or give "
                          "NAME@URL for another storage)")
    try:
        return load_existing(source.name, open_storage(source.url), source.url)
    except ConfigError as exc:
        raise ConfigError(f"{FLAG} {source.given}: {exc.detail}") from None


def _objectives(study_section: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a study's values mean: its metric and direction, and its `metrics` where it has some."""
    return study_section.get("metric"), study_section.get("direction"), study_section.get("metrics") or None


def check_target(name: str, storage: optuna.storages.BaseStorage, url: str) -> None:
    """A warm start seeds a new study: one that already holds trials would mix two studies' bookkeeping."""
    if name not in {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}:
        return
    held = len(optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False))
    if held:
        raise ConfigError(
            f"{FLAG}: study {name!r} already exists in {mask(url)} with {held} trials; a warm start seeds a new "
            "study only: use a new study name (--study NAME), or launch without --warm-start to resume it"
        )


# ---- the rule ----------------------------------------------------------------------------------------


def fit(path: str, value: Any, dist: BaseDistribution) -> tuple[Any, str | None]:
    """`value` brought into `dist`: (value, None) when it is inside, (moved value, "PATH OLD → NEW") when it was
    clipped or moved to the step grid; `Skip` when the rule leaves it out."""
    if isinstance(dist, CategoricalDistribution):
        if any(value == c and type(value) is type(c) for c in dist.choices):
            return value, None
        raise Skip(f"{path} choice not offered")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise Skip(f"{path} not a number")
    if dist.log and value <= 0:
        raise Skip(f"{path} outside the new range")
    scale = math.log if dist.log else float
    low, high, at = scale(dist.low), scale(dist.high), scale(value)
    out = max(low - at, at - high, 0.0)
    if out > NEAR * (high - low):
        raise Skip(f"{path} outside the new range")
    moved: float = dist.low if at < low else dist.high if at > high else value
    step = dist.step
    if step is not None:
        k = min(max(round((moved - dist.low) / step), 0), math.floor((dist.high - dist.low) / step + 1e-9))
        moved = dist.low + k * step
    moved = int(round(moved)) if isinstance(dist, IntDistribution) else float(moved)
    if moved == value:  # an int stored as a float (or back) is the same point
        return moved, None
    return moved, f"{path} {value:g} → {moved:g}"


def _fixed(config: Mapping[str, Any], path: str) -> Any:
    """A study's fixed value at `path`: not searched there, and a key of its config; else `Skip`."""
    if path in (config.get("search_space") or {}):
        raise Skip(f"{path} missing")  # searched there, but not drawn for this trial (a condition)
    try:
        return get_path(config, path)
    except KeyError:
        raise Skip(f"{path} missing") from None


def convert(
    trial: FrozenTrial, params: Sequence[space.Param], new: Mapping[str, Any], old: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """The old trial's params in the new space (drawn as the new space draws them, conditions included), and
    what was changed ("clipped: …", "filled: …", "dropped: …"); `Skip` with the reason otherwise."""
    left, drawn, changes = dict(trial.params), {}, []
    for param in params:
        if not param.active(new, drawn):
            continue
        if param.path in left:
            value = left.pop(param.path)
        else:
            value = _fixed(old, param.path)
            changes.append(f"filled: {param.path} {value!r} (its study's fixed value)")
        drawn[param.path], moved = fit(param.path, value, param.distribution)
        if moved:
            changes.append(f"clipped: {moved}")
    for path, value in left.items():
        try:
            fixed = get_path(new, path)
        except KeyError:
            raise Skip(f"{path} not in this study") from None
        if fixed != value:
            raise Skip(f"{path} differs from this study's fixed value")
        changes.append(f"dropped: {path} {value!r} (this study's fixed value)")
    return drawn, changes


# ---- plan, then seed ---------------------------------------------------------------------------------


def plan(config: Mapping[str, Any], sources: Sequence[Source]) -> list[Plan]:
    """Read every source and convert its complete trials; raises before anything is written."""
    params = space.parse(config["search_space"], config)
    plans = []
    for source in sources:
        study = _open_source(source)
        old = stored_config(study)
        was, now = _objectives(old.get("study", {})), _objectives(config["study"])
        if was != now:
            raise ConfigError(
                f"{FLAG} {source.given}: study {source.name!r} optimizes {_says(was)}, this study {_says(now)}; a warm "
                "start needs the same metric and direction (its values would not mean the same here)"
            )
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        result = Plan(source, finished=len(done), differs=_differences(old, config))
        for t in done:
            try:
                trial = seeded(t, params, config, old, f"{source.label}#{t.number}")
            except Skip as why:
                result.skipped[str(why)] += 1
                continue
            for kind in {c.split(":", 1)[0] for c in trial.user_attrs[RULE].split("; ")}:
                result.rules[kind] += 1
            result.trials.append(trial)
        plans.append(result)
    return plans


def seeded(
    trial: FrozenTrial, params: Sequence[space.Param], new: Mapping[str, Any], old: Mapping[str, Any], origin: str
) -> FrozenTrial:
    """The trial to add for one complete old trial (`convert`), in the new space's distributions, with its values,
    its learning curve (the pruner compares new trials with it) and its provenance; `Skip` when the rule says so."""
    drawn, changes = convert(trial, params, new, old)
    distributions = {p.path: p.distribution for p in params}
    return optuna.trial.create_trial(
        params=drawn,
        distributions={k: distributions[k] for k in drawn},
        values=trial.values,
        intermediate_values=dict(trial.intermediate_values),
        user_attrs={SEEDED: origin, RULE: "; ".join(changes) or "kept"},
        state=TrialState.COMPLETE,
    )


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Settings a trial trains with that neither study searches and the two fix differently ("train.epochs=10
    (this study: 20)"): the seeded values were measured under them, which the rule cannot see."""
    searched = set(old.get("search_space") or {}) | set(new.get("search_space") or {})

    def leaves(tree: Any, prefix: str) -> dict[str, Any]:
        if not isinstance(tree, Mapping) or not tree:
            return {prefix: tree}
        return {k: v for key, sub in tree.items() for k, v in leaves(sub, f"{prefix}.{key}").items()}

    was, now = ({k: v for s in space.TRIAL_SECTIONS for k, v in leaves(c.get(s, {}), s).items()} for c in (old, new))
    keys = sorted(k for k in set(was) & set(now) if k not in searched and k != "train.threads" and was[k] != now[k])
    return [f"{k}={was[k]!r} (this study: {now[k]!r})" for k in keys]


def _says(objectives: tuple[Any, ...]) -> str:
    metric, direction, metrics = objectives
    return f"{direction} {metric}" + (f" (study.metrics {metrics!r})" if metrics else "")


def seed(study: optuna.Study, plans: Sequence[Plan]) -> int:
    """Write the planned trials into the new study, print one line per source; returns the trials seeded."""
    study.set_user_attr(SOURCES_ATTR, [p.source.label for p in plans])
    for p in plans:
        if not p.finished:
            print(f"warning: warm start from {p.source.label}: it has no complete trial, nothing to seed",
                  file=sys.stderr, flush=True)
        study.add_trials(p.trials)
        print(p.line(), flush=True)
    return sum(len(p.trials) for p in plans)

