"""A study file → the complete config a trial runs: `--set` overrides applied, every default filled, every
value checked against the schema and against the rest of the file (folds, features, the search space)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sweep.config.paths import copy_tree, get_path, set_path
from sweep.config.sections import METRICS, defaults_tree, fields_of, nested_root, schema, unknown_key
from sweep.config.typed import typed
from sweep.config.yamlfile import read_yaml
from sweep.data import DATASETS, augment
from sweep.data.features import input_shape
from sweep.models import MODELS, warmstart
from sweep.run import measure
from sweep.schema import ConfigError, Variants, check_study_name
from sweep.search import objectives, space


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
        _switch_variant(merged, key, value)
        try:
            _set(merged, key, value)
        except ConfigError as exc:  # an index past a list's end
            raise ConfigError(exc.detail, source=origin[key], key=key) from None

    def where(path: str) -> str:  # an override at, above or below the path (`--set trainer.lr` → `trainer`)
        return next(
            (o for k, o in origin.items() if path == k or path.startswith(k + ".") or k.startswith(path + ".")), source
        )

    resolved = _resolve_tree(merged, where)
    if resolved["study"]["direction"] is None:
        resolved["study"]["direction"] = METRICS[resolved["study"]["metric"]]
    objectives.check(resolved["study"], lambda key: _given(merged, key), resolved["pruner"]["name"],
                     resolved["sampler"]["name"], where)
    if "macs" in objectives.static_metrics(resolved):
        try:
            measure.check_macs(resolved)
        except ConfigError as exc:
            raise ConfigError(exc.detail, source=where("study.metrics"), key=exc.key) from None
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
    _check_cv(resolved, where)
    params = space.parse(resolved["search_space"], resolved, source=where("search_space"))
    for param in params:  # every value the search can pick must make a valid config with the rest of the file
        if any(space.is_discriminator(p) for p in param.when):
            continue  # checked under that variant, below
        dist = param.distribution
        for value in dist.choices if hasattr(dist, "choices") else (dist.low, dist.high):
            variant = copy_tree(merged)
            try:
                for cond_path, values in param.when.items():
                    _set(variant, cond_path, values[0])
                _set(variant, param.path, value)
                _resolve_tree(variant, where)
            except ConfigError as exc:
                raise ConfigError(
                    f"when the search picks {param.path}={value}: {exc.detail}",
                    source=exc.source or where("search_space"),
                    key=exc.key,
                ) from None
    return resolved


def _given(tree: dict[str, Any], path: str) -> bool:
    try:
        get_path(tree, path)
    except KeyError:
        return False
    return True


def _switch_variant(tree: dict[str, Any], path: str, value: Any) -> None:
    """`--set sampler.name=random` on a file written for TPE: the file's keys that only the old variant takes
    (`sampler.n_startup_trials`) go with it, so switching a variant from the command line needs nothing else.
    A key both take, or one the new variant also takes, stays."""
    section, _, key = path.rpartition(".")
    node: Any = schema()
    for part in section.split(".") if section else ():
        node = node.get(part) if isinstance(node, dict) else None
    variants: Variants | None = node.get("_variants") if isinstance(node, dict) else None
    given = tree.get(section) if "." not in section else None
    if variants is None or variants.key != key or not isinstance(given, dict):
        return
    old = given.get(key, get_path(defaults_tree(), path))
    if old == value or old not in variants.names() or value not in variants.names():
        return
    for name in set(variants.params(old)) - set(variants.params(value)):
        given.pop(name, None)


def _set(tree: dict[str, Any], path: str, value: Any) -> None:
    """set_path, after giving a nested value the path reaches inside (`model.blocks.2.res.0`) its default when
    the file leaves it out, so the path indexes the list the run would have."""
    def variant_of(p: str) -> str | None:
        try:
            found = get_path(tree, p)
        except KeyError:
            found = get_path(defaults_tree(), p)
        return found if isinstance(found, str) else None

    root = nested_root(path, variant_of)
    if root is not None:
        try:
            get_path(tree, root[0])
        except KeyError:
            set_path(tree, root[0], copy_tree(root[1].default))
    set_path(tree, path, value)


def _resolve_tree(tree: dict[str, Any], where: Callable[[str], str]) -> dict[str, Any]:
    def variant_of(path: str) -> str | None:
        try:
            value = get_path(tree, path)
        except KeyError:
            value = get_path(defaults_tree(), path)
        return value if isinstance(value, str) else None

    resolved = _resolve_node(schema(), tree, "", where, variant_of)
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
    if spec.fits is not None:  # a dry forward on one clip's features: shapes that do not fit, refused here
        try:
            spec.fits(model, input_shape(resolved))
        except ConfigError as exc:
            raise ConfigError(exc.detail, source=where(exc.key or "model"), key=exc.key) from None
    try:
        augment.check(resolved)
    except ConfigError as exc:
        raise ConfigError(exc.detail, source=where(exc.key or "augment"), key=exc.key) from None
    if model["init_from"] is not None:  # stored absolute: a worker elsewhere reads the same run
        model["init_from"] = str(Path(model["init_from"]).expanduser().resolve())
        try:
            warmstart.check(spec.build(typed(resolved).model, 2, input_shape(resolved)), model["init_from"],
                            model["name"])
        except ConfigError as exc:
            raise ConfigError(exc.detail, source=where("model.init_from"), key="model.init_from") from None
    _check_train(resolved, where)
    if model["pretrained"] and not MODELS[model["name"]].pretrained:
        with_weights = sorted(n for n, spec in MODELS.items() if spec.pretrained) or ["none yet"]
        raise ConfigError(
            f"model {model['name']} has no pretrained weights; set model.pretrained: false "
            f"(models with weights: {', '.join(with_weights)})",
            source=where("model.pretrained"),
            key="model.pretrained",
        )
    return resolved


def _check_cv(resolved: Mapping[str, Any], where: Callable[[str], str]) -> None:
    """`study.cv` against the folds, and the Wilcoxon pruner against `study.cv` (sweep.run.cv): refused here,
    before any trial. Cross-validation rotates whole folds, so a fold divided between val and test cannot take
    part, and k splits need k search folds."""
    k, folds = resolved["study"]["cv"], resolved["data"]["folds"]
    search = sorted(set(folds["train"]) | set(folds["val"]))
    if resolved["pruner"]["name"] == "wilcoxon" and k is None:
        raise ConfigError("wilcoxon compares trials fold by fold and needs study.cv (an integer >= 2); accepted "
                          "without study.cv: median, percentile, hyperband, successive_halving, none",
                          source=where("pruner.name"), key="pruner.name")
    if k is None:
        return
    if resolved["study"].get("metrics"):  # a trial's folds report through trial.report, which Optuna refuses there
        raise ConfigError("cross-validated trials take one metric for now; accepted with study.cv: study.metric "
                          "(and study.metrics: null)", source=where("study.cv"), key="study.cv")
    shared = sorted(set(folds["val"]) & set(folds["test"]))
    if shared:
        raise ConfigError(f"cross-validation rotates whole folds, and folds {shared} are divided between val and "
                          "test; accepted with study.cv: data.folds.val and data.folds.test with no fold in common",
                          source=where("study.cv"), key="study.cv")
    if k > len(search):
        raise ConfigError(f"{k} splits need at least {k} search folds (data.folds.train + data.folds.val) and there "
                          f"are {len(search)}: {search}; accepted: 2 <= study.cv <= {len(search)}",
                          source=where("study.cv"), key="study.cv")


def _check_train(resolved: Mapping[str, Any], where: Callable[[str], str]) -> None:
    """What `train` keys accept together: `epochs: 0` (no limit) only with `patience` and a schedule that needs
    no length; the bounds a Field cannot say (open intervals); label smoothing only for the cross-entropy."""
    train = resolved["train"]

    def refuse(key: str, message: str) -> None:
        raise ConfigError(message, source=where(key), key=key)

    if train["epochs"] == 0 and train["patience"] is None:
        refuse("train.epochs", "0 (no epoch limit) needs train.patience to end the run; accepted: an integer >= 1, "
               "or 0 with train.patience set")
    if train["epochs"] == 0 and train["scheduler"] != "none":
        refuse("train.scheduler", f"{train['scheduler']} runs over train.epochs, which 0 leaves open; accepted "
               "with train.epochs 0: none (or set train.epochs >= 1)")
    if train["epochs"] and train["freeze_epochs"] >= train["epochs"]:
        refuse("train.freeze_epochs", f"freeze_epochs ({train['freeze_epochs']}) must be less than train.epochs "
               f"({train['epochs']}): the body is trained after the head-only epochs")
    if train["grad_clip_value"] is not None and train["grad_clip_value"] <= 0:
        refuse("train.grad_clip_value", f"expected a number > 0 (or null: off), got {train['grad_clip_value']!r}")
    if train["ema"] is not None and not 0 < train["ema"] < 1:
        refuse("train.ema", f"expected a decay in (0, 1), e.g. 0.995 (or null: off), got {train['ema']!r}")
    if resolved["augment"]["mix_loss"] == "bce" and train["label_smoothing"] > 0:
        refuse("train.label_smoothing", "applies to augment.mix_loss: ce only; accepted with bce: 0.0")


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
    fields = fields_of(node, here, variant_of)
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
            raise ConfigError(unknown_key(str(key), here, fields), source=where(path), key=path)
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
