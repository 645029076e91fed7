"""The study file's schema: loading, defaults, `--set` overrides, and one clear error for each bad input.

Every error test checks the three things the message promises: the file (or `--set` flag) it came from,
the dotted key, and what would have been accepted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sweep import models
from sweep.config import sections
from sweep.config.paths import parse_set
from sweep.config.resolve import load, resolve
from sweep.config.sections import schema
from sweep.config.yamlfile import dump_yaml, parse_yaml
from sweep.schema import ConfigError, Field
from sweep.search.strategy import make_pruner

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "search_spaces" / "demo.yaml"
MODELS = "ast, audio_cnn, blocks, eat_m, eat_s, resnet18, resnet34, resnet50, simple_cnn, vit"
DATASETS = "esc50, folder, hf, speechcommands, synthetic, urbansound8k"
TRAIN_KEYS = (
    "epochs, patience, freeze_epochs, batch_size, accum_iter, eval_batch_size, lr, body_lr_mult, optimizer, momentum, "
    "weight_decay, scheduler, label_smoothing, grad_clip, grad_clip_value, ema, amp, device, seed, threads"
)


def write(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(path: Path, overrides: list[tuple[str, object]] = ()) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(path, list(overrides))
    return info.value


def sets(*items: str) -> list[tuple[str, object]]:
    return [parse_set(item) for item in items]


@pytest.fixture
def two_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """A second model family, `tiny`, that takes `model.size` and not `model.width`; the schema is rebuilt."""
    tiny = models.ModelSpec({"size": Field(int, 4, low=1)}, lambda model, n_classes, shape: None)
    monkeypatch.setitem(models.MODELS._entries, "tiny", tiny)  # registered for this test only
    monkeypatch.setattr(sections, "SCHEMA", {})


# ---- files that load --------------------------------------------------------------------------------


def test_demo_study_loads_cleanly() -> None:
    config = load(DEMO)
    assert config["study"]["name"] == "demo"
    assert config["study"]["direction"] == "maximize"
    assert config["train"]["lr"] == pytest.approx(3.0e-3)
    assert config["model"] == {
        "name": "audio_cnn", "pretrained": False, "init_from": None, "width": 8, "depth": 2, "dropout": 0.1
    }
    assert config["pruner"]["n_warmup_steps"] == 2
    assert config["data"]["folds"] == {"train": [1, 2, 3], "val": [4], "test": [5]}
    assert list(config["search_space"]) == [
        "train.lr",
        "train.optimizer",
        "train.weight_decay",
        "model.width",
        "model.depth",
        "augment.strength",
    ]


def test_empty_file_fills_every_section_and_default(tmp_path: Path) -> None:
    config = load(write(tmp_path, ""))
    assert list(config) == [k for k in schema()]
    assert config["study"] == {
        "name": "study",
        "direction": "maximize",
        "metric": "val_acc",
        "metrics": None,
        "directions": ["maximize"],
        "constraints": {},
        "n_trials": 20,
        "max_trials": 100_000,
        "timeout": None,
        "cv": None,
    }
    # the keys of the chosen variants are filled too
    assert config["model"] == {
        "name": "audio_cnn", "pretrained": False, "init_from": None, "width": 16, "depth": 3, "dropout": 0.1
    }
    assert config["sampler"] == {
        "name": "tpe",
        "seed": 0,
        "n_startup_trials": 5,
        "multivariate": False,
        "constant_liar": True,
    }
    assert config["pruner"] == {"name": "median", "n_startup_trials": 5, "n_warmup_steps": 1, "interval_steps": 1}
    assert config["data"]["n_classes"] == 10 and config["data"]["clips_per_class"] == 40
    assert config["data"]["folds"] == {"train": [1, 2, 3], "val": [4], "test": [5]}
    assert config["train"]["optimizer"] == "adamw" and config["train"]["lr"] == 1e-3
    assert config["search_space"] == {} and config["storage"] is None


@pytest.mark.parametrize("name", ["median", "percentile"])
@pytest.mark.parametrize(("epochs", "warmup", "expected"), [(12, "default", 1), (12, None, 3), (4, None, 1),
                                                            (1, None, 1), (12, 2, 2), (4, 0, 0)])
def test_warmup_is_1_or_a_quarter_of_the_epochs_when_null(name: str, epochs: int, warmup: int | str | None,
                                                          expected: int) -> None:
    pruner = {"name": name} if warmup == "default" else {"name": name, "n_warmup_steps": warmup}
    config = resolve({"pruner": pruner, "train": {"epochs": epochs}}, "test")
    assert config["pruner"]["n_warmup_steps"] == (1 if warmup == "default" else warmup)  # null stays null
    assert make_pruner(config)._n_warmup_steps == expected


def test_defaults_are_not_shared_between_loads(tmp_path: Path) -> None:
    first = load(write(tmp_path, ""))
    first["data"]["folds"]["train"].append(9)
    first["search_space"]["x"] = 1
    second = load(write(tmp_path, ""))
    assert second["data"]["folds"]["train"] == [1, 2, 3]
    assert second["search_space"] == {}


def test_variant_keys_follow_the_chosen_variant(tmp_path: Path) -> None:
    config = load(write(tmp_path, "pruner: {name: hyperband}\nsampler: {name: qmc}\n"))
    assert config["pruner"] == {"name": "hyperband", "min_resource": 1, "max_resource": None, "reduction_factor": 3}
    assert config["sampler"] == {"name": "qmc", "seed": 0, "qmc_type": "sobol", "scramble": True}
    config = load(write(tmp_path, "pruner: {name: none}\nsampler: {name: random, seed: null}\n"))
    assert config["pruner"] == {"name": "none"}
    assert config["sampler"] == {"name": "random", "seed": None}


def test_given_values_are_kept_and_ints_become_floats(tmp_path: Path) -> None:
    text = "train: {lr: 1e-3, weight_decay: 0, epochs: 3, amp: false, grad_clip: null}\naugment: {strength: 1}\n"
    config = load(write(tmp_path, text))
    train = config["train"]
    assert train["lr"] == 0.001 and isinstance(train["lr"], float)  # YAML 1.2: `1e-3` is a number
    assert train["weight_decay"] == 0.0 and isinstance(train["weight_decay"], float)
    assert train["epochs"] == 3 and train["amp"] is False and train["grad_clip"] is None
    assert config["augment"]["strength"] == 1.0 and isinstance(config["augment"]["strength"], float)


def test_study_name_defaults_to_the_file_stem(tmp_path: Path) -> None:
    assert load(write(tmp_path, "study: {n_trials: 3}\n", name="esc50-cnn_v2.yaml"))["study"]["name"] == "esc50-cnn_v2"
    assert load(write(tmp_path, "study: {name: other}\n", name="file.yaml"))["study"]["name"] == "other"


@pytest.mark.parametrize(
    ("name", "text", "bad"),
    [
        ("my study.yaml", "", "my study"),
        ("ok.yaml", "study: {name: ../escape}\n", "../escape"),
        ("ok.yaml", "study: {name: _hidden}\n", "_hidden"),
        ("ok.yaml", "study: {name: ''}\n", ""),
    ],
)
def test_invalid_study_name(tmp_path: Path, name: str, text: str, bad: str) -> None:
    path = write(tmp_path, text, name=name)
    err = load_error(path)
    assert err.source == str(path) and err.key == "study.name"
    assert f"study name {bad!r} must start with a letter or digit" in str(err)
    assert "letters, digits, '_', '.', '-'" in str(err)


def test_metric_sets_the_direction(tmp_path: Path) -> None:
    config = load(write(tmp_path, "study: {metric: val_loss}\n"))
    assert config["study"]["direction"] == "minimize"
    config = load(write(tmp_path, "study: {metric: val_f1, direction: maximize}\n"))
    assert config["study"]["direction"] == "maximize"


# ---- files that do not load ---------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    err = load_error(tmp_path / "nope.yaml")
    assert str(err) == f"{tmp_path / 'nope.yaml'}: no such file"


def test_malformed_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "study:\n  n_trials: 3\ntrain:\n  lr: [1e-3, 2e-3\n  epochs: 3\n")
    err = load_error(path)
    assert str(err).startswith(f"{path}: not valid YAML at line 5, column ")
    path = write(tmp_path, "study:\n  name: x\n bad: 1\n")
    assert str(load_error(path)).startswith(f"{path}: not valid YAML at line 3, column 2: ")


@pytest.mark.parametrize(("text", "kind"), [("- study\n- train\n", "list"), ("just text\n", "str"), ("3\n", "int")])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    path = write(tmp_path, text)
    assert str(load_error(path)) == f"{path}: the top level must be a mapping of sections, got {kind}"


def test_unknown_section_suggests_and_lists_sections(tmp_path: Path) -> None:
    path = write(tmp_path, "trainer: {lr: 0.1}\n")
    err = load_error(path)
    assert err.source == str(path) and err.key == "trainer"
    assert str(err) == (
        f"{path}: `trainer`: unknown key `trainer` at the top level (did you mean 'train'?); accepted: study, "
        "storage, sampler, pruner, data, features, augment, model, train, search_space, executor"
    )


def test_unknown_key_suggests_and_lists_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  epoch: 3\n")
    err = load_error(path)
    assert err.key == "train.epoch"
    assert str(err) == (
        f"{path}: `train.epoch`: unknown key `epoch` in section `train` (did you mean 'epochs'?); "
        f"accepted: {TRAIN_KEYS}"
    )


def test_unknown_nested_key(tmp_path: Path) -> None:
    path = write(tmp_path, "data:\n  folds: {train: [1], dev: [2]}\n")
    err = load_error(path)
    assert err.key == "data.folds.dev"
    assert "unknown key `dev` in section `data.folds`; accepted: train, val, test" in str(err)


def test_unknown_key_without_a_close_match_has_no_suggestion(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "features: {zzz: 1}\n"))
    assert "did you mean" not in str(err)
    assert str(err).endswith("accepted: name, n_mels, n_fft, hop_length, f_min, f_max")


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("train: {epochs: '10'}", "train.epochs", "expected an integer >= 0, got '10' (str)"),
        ("train: {epochs: true}", "train.epochs", "expected an integer >= 0, got True (bool)"),
        ("train: {epochs: 2.5}", "train.epochs", "expected an integer >= 0, got 2.5 (float)"),
        ("train: {lr: fast}", "train.lr", "expected a number >= 0.0, got 'fast' (str)"),
        ("train: {lr: false}", "train.lr", "expected a number >= 0.0, got False (bool)"),
        ("augment: {mixup: 1}", "augment.mixup", "expected true or false, got 1 (int)"),
        ("augment: {mixup: 'yes please'}", "augment.mixup", "expected true or false, got 'yes please' (str)"),
        ("study: {name: 42}", "study.name", "expected a string (or null), got 42 (int)"),
        ("data: {folds: {train: 1}}", "data.folds.train", "expected a list of integers (or null), got 1 (int)"),
        ("data: {folds: {val: [4, '5']}}", "data.folds.val", "expected a list of integers (or null), got '5' (str)"),
        ("train: {optimizer: 3}", "train.optimizer", "expected one of adam, adamw, sgd, rmsprop, got 3 (int)"),
        ("search_space: [train.lr]", "search_space", "expected dict, got ['train.lr'] (list)"),
        ("train: {lr: null}", "train.lr", "expected a number >= 0.0, got null"),
        ("train: 3", "train", "expected a mapping of keys, got 3"),
        ("data: {folds: [1, 2]}", "data.folds", "expected a mapping of keys, got [1, 2]"),
    ],
)
def test_wrong_type(tmp_path: Path, text: str, key: str, message: str) -> None:
    path = write(tmp_path, text + "\n")
    err = load_error(path)
    assert (err.source, err.key) == (str(path), key)
    assert str(err) == f"{path}: `{key}`: {message}"


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("augment: {strength: 1.5}", "augment.strength", "expected a number in [0.0, 1.0], got 1.5"),
        ("augment: {strength: -0.1}", "augment.strength", "expected a number in [0.0, 1.0], got -0.1"),
        ("augment: {strength: .nan}", "augment.strength", "expected a number in [0.0, 1.0], got nan"),
        ("train: {lr: -1e-3}", "train.lr", "expected a number >= 0.0, got -0.001"),
        ("study: {n_trials: 0}", "study.n_trials", "expected an integer >= 1, got 0"),
        ("model: {depth: 9}", "model.depth", "expected an integer in [1, 8], got 9"),
        ("data: {n_classes: 11}", "data.n_classes", "expected an integer in [2, 10], got 11"),
        ("pruner: {name: percentile, percentile: 101}", "pruner.percentile", "expected a number in [0.0, 100.0]"),
        ("executor: {workers: 0}", "executor.workers", "expected an integer >= 1, got 0"),
        ("data: {sample_rate: 8}", "data.sample_rate", "expected an integer >= 1000, got 8"),
    ],
)
def test_out_of_range(tmp_path: Path, text: str, key: str, message: str) -> None:
    path = write(tmp_path, text + "\n")
    err = load_error(path)
    assert (err.source, err.key) == (str(path), key)
    assert str(err).startswith(f"{path}: `{key}`: {message}")


def test_bad_choice_lists_choices_and_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  optimizer: adam_w\n")
    err = load_error(path)
    assert str(err) == (
        f"{path}: `train.optimizer`: expected one of adam, adamw, sgd, rmsprop, got 'adam_w' (did you mean 'adamw'?)"
    )


@pytest.mark.parametrize(
    ("text", "key", "accepted"),
    [
        ("sampler: {name: bayes}", "sampler.name", "one of tpe, random, grid, cmaes, qmc, gp, nsga2, got 'bayes'"),
        ("pruner: {name: asha}", "pruner.name",
         "one of median, percentile, hyperband, successive_halving, wilcoxon, none"),
        ("model: {name: resnet}", "model.name", f"one of {MODELS}, got 'resnet' (did you mean 'resnet50'?)"),
        ("data: {dataset: esc-50}", "data.dataset", f"one of {DATASETS}, got 'esc-50' (did you mean 'esc50'?)"),
        ("study: {metric: accuracy}", "study.metric", "one of val_acc, val_f1, val_loss, got 'accuracy'"),
        ("executor: {name: k8s}", "executor.name", "one of debug, local"),
    ],
)
def test_unknown_registry_name(tmp_path: Path, text: str, key: str, accepted: str) -> None:
    path = write(tmp_path, text + "\n")
    err = load_error(path)
    assert (err.source, err.key) == (str(path), key)
    assert f"{path}: `{key}`: expected {accepted}" in str(err)


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        # the variant's own keys are present, so a wrong name must not read as "unknown key n_startup_trials"
        ("sampler: {name: tpee, n_startup_trials: 5}", "sampler.name", "got 'tpee' (did you mean 'tpe'?)"),
        ("pruner: {name: medain, n_warmup_steps: 2}", "pruner.name", "got 'medain' (did you mean 'median'?)"),
        ("model: {name: audiocnn, width: 8, depth: 2}", "model.name", "got 'audiocnn' (did you mean 'audio_cnn'?)"),
        ("model: {name: 3, width: 8}", "model.name", f"expected one of {MODELS}, got 3 (int)"),
        ("data: {dataset: synth, clips_per_class: 4}", "data.dataset", f"one of {DATASETS}, got 'synth'"),
    ],
)
def test_bad_variant_name_is_reported_before_its_keys(tmp_path: Path, text: str, key: str, message: str) -> None:
    path = write(tmp_path, text + "\n")
    err = load_error(path)
    assert (err.source, err.key) == (str(path), key)
    assert message in str(err)


@pytest.mark.parametrize(
    ("text", "key", "accepted"),
    [
        ("pruner: {name: none, n_warmup_steps: 2}", "pruner.n_warmup_steps", "accepted: name"),
        (
            "pruner: {name: hyperband, n_warmup_steps: 2}",
            "pruner.n_warmup_steps",
            "accepted: name, min_resource, max_resource, reduction_factor",
        ),
        ("sampler: {name: random, n_startup_trials: 3}", "sampler.n_startup_trials", "accepted: name, seed"),
        (
            "sampler: {name: tpe, qmc_type: halton}",
            "sampler.qmc_type",
            "accepted: name, seed, n_startup_trials, multivariate, constant_liar",
        ),
    ],
)
def test_key_of_another_variant(tmp_path: Path, text: str, key: str, accepted: str) -> None:
    path = write(tmp_path, text + "\n")
    err = load_error(path)
    assert (err.source, err.key) == (str(path), key)
    section, leaf = key.split(".")
    assert str(err).startswith(f"{path}: `{key}`: unknown key `{leaf}` in section `{section}`")
    assert str(err).endswith(accepted)


def test_model_key_misspelt(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "model: {widht: 8}\n"))
    assert err.key == "model.widht"
    assert "(did you mean 'width'?); accepted: name, pretrained, init_from, width, depth, dropout" in str(err)


def test_model_key_for_a_model_that_does_not_take_it(tmp_path: Path, two_models: None) -> None:
    path = write(tmp_path, "model: {name: tiny, width: 8}\n")
    err = load_error(path)
    assert (err.source, err.key) == (str(path), "model.width")
    assert (
        str(err)
        == f"{path}: `model.width`: unknown key `width` in section `model`; accepted: name, pretrained, init_from, size"
    )
    config = load(write(tmp_path, "model: {name: tiny}\n"))
    assert config["model"] == {"name": "tiny", "pretrained": False, "init_from": None, "size": 4}
    assert load(write(tmp_path, "model: {width: 8}\n"))["model"]["width"] == 8  # audio_cnn is still the default


def test_pretrained_needs_a_model_with_weights(tmp_path: Path) -> None:
    path = write(tmp_path, "model: {name: audio_cnn, pretrained: true}\n")
    err = load_error(path)
    assert (err.source, err.key) == (str(path), "model.pretrained")
    assert str(err) == (
        f"{path}: `model.pretrained`: model audio_cnn has no pretrained weights; set model.pretrained: false "
        "(models with weights: ast, resnet18, resnet34, resnet50, vit)"
    )


def test_metric_direction_mismatch(tmp_path: Path) -> None:
    path = write(tmp_path, "study: {metric: val_loss, direction: maximize}\n")
    err = load_error(path)
    assert str(err) == f"{path}: `study.direction`: metric val_loss must be minimized, not maximized"
    path = write(tmp_path, "study: {direction: minimize}\n")  # metric defaults to val_acc
    assert str(load_error(path)) == f"{path}: `study.direction`: metric val_acc must be maximized, not minimized"


@pytest.mark.parametrize(
    ("folds", "message"),
    [
        ("{train: [1, 2], val: [2], test: [5]}", "folds [2] are in both `train` and `val`"),
        ("{train: [1, 2, 3], val: [4], test: [3, 1]}", "folds [1, 3] are in both `train` and `test`"),
        ("{train: [], val: [4]}", "train and val need at least one fold each"),
        ("{val: []}", "train and val need at least one fold each"),
    ],
)
def test_bad_folds(tmp_path: Path, folds: str, message: str) -> None:
    path = write(tmp_path, f"data:\n  folds: {folds}\n")
    err = load_error(path)
    assert (err.source, err.key) == (str(path), "data.folds")
    assert str(err).startswith(f"{path}: `data.folds`: {message}")


def test_search_space_errors_name_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "search_space:\n  train.lr: {type: float, low: 1.0e-2, high: 1.0e-4}\n")
    err = load_error(path)
    assert (err.source, err.key) == (str(path), "search_space.train.lr")
    assert str(err) == f"{path}: `search_space.train.lr`: low (0.01) must be <= high (0.0001)"


# ---- --set overrides -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "key", "value"),
    [
        ("train.lr=3e-4", "train.lr", 0.0003),
        ("train.lr=1e-3", "train.lr", 0.001),
        ("train.lr=1E+2", "train.lr", 100.0),
        ("train.epochs=5", "train.epochs", 5),
        ("augment.mixup=false", "augment.mixup", False),
        ("train.grad_clip=null", "train.grad_clip", None),
        ("train.optimizer=sgd", "train.optimizer", "sgd"),
        ("data.folds.val=[4, 5]", "data.folds.val", [4, 5]),
        (" model.width =32", "model.width", 32),
        ("study.name=a=b", "study.name", "a=b"),
    ],
)
def test_parse_set_types_values_as_yaml(item: str, key: str, value: object) -> None:
    parsed = parse_set(item)
    assert parsed == (key, value)
    assert type(parsed[1]) is type(value)


@pytest.mark.parametrize("item", ["train.lr", "=3", " =3", ""])
def test_parse_set_needs_key_and_value(item: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_set(item)
    assert str(info.value) == f"--set expects KEY=VALUE with a dotted key, got {item!r}"


def test_parse_set_bad_yaml_value_names_the_flag() -> None:
    with pytest.raises(ConfigError) as info:
        parse_set("data.folds.val=[4, 5")
    assert str(info.value).startswith("--set data.folds.val=[4, 5: not valid YAML at line ")


def test_set_overrides_file_values_with_typed_values(tmp_path: Path) -> None:
    path = write(tmp_path, "train: {lr: 0.1, epochs: 2, optimizer: adam}\n")
    config = load(path, sets("train.lr=3e-4", "train.optimizer=sgd", "augment.mixup=false", "data.folds.val=[4]"))
    assert config["train"]["lr"] == 0.0003 and isinstance(config["train"]["lr"], float)
    assert config["train"]["optimizer"] == "sgd"
    assert config["train"]["epochs"] == 2  # untouched keys of the section stay
    assert config["augment"]["mixup"] is False
    assert config["data"]["folds"]["val"] == [4]


def test_set_creates_missing_sections(tmp_path: Path) -> None:
    config = load(write(tmp_path, "study: {n_trials: 3}\n"), sets("model.width=32", "pruner.name=none"))
    assert config["model"]["width"] == 32 and config["model"]["depth"] == 3
    assert config["pruner"] == {"name": "none"}


def test_set_can_switch_variant_and_set_its_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "pruner: {name: median}\n")
    config = load(path, sets("pruner.name=hyperband", "pruner.min_resource=2"))
    assert config["pruner"] == {"name": "hyperband", "min_resource": 2, "max_resource": None, "reduction_factor": 3}


def test_set_later_wins(tmp_path: Path) -> None:
    assert load(write(tmp_path, ""), sets("train.epochs=3", "train.epochs=4"))["train"]["epochs"] == 4


@pytest.mark.parametrize(
    ("item", "key", "message"),
    [
        (
            "train.lrr=1",
            "train.lrr",
            f"unknown key `lrr` in section `train` (did you mean 'lr'?); accepted: {TRAIN_KEYS}",
        ),
        ("trainer.lr=1", "trainer", "unknown key `trainer` at the top level (did you mean 'train'?)"),
        ("model.size=3", "model.size", "unknown key `size` in section `model`"),
        ("train.epochs=many", "train.epochs", "expected an integer >= 0, got 'many' (str)"),
        ("train.lr=-1", "train.lr", "expected a number >= 0.0, got -1.0"),
        ("train.optimizer=adam_w", "train.optimizer", "(did you mean 'adamw'?)"),
        ("model.name=resnet", "model.name", f"expected one of {MODELS}, got 'resnet'"),
    ],
)
def test_set_errors_name_the_flag(tmp_path: Path, item: str, key: str, message: str) -> None:
    path = write(tmp_path, "train: {epochs: 2}\nmodel: {width: 8}\n")
    err = load_error(path, sets(item))
    assert err.key == key
    assert err.source == f"--set {item.split('=')[0]}"
    assert str(err).startswith(f"--set {item.split('=')[0]}: `{key}`: ")
    assert message in str(err)
    assert str(path) not in str(err)


@pytest.mark.parametrize("item", ["search_space.train.lr=1", "search_space={}", "search_space.x=[1, 2]"])
def test_set_cannot_change_the_search_space(tmp_path: Path, item: str) -> None:
    err = load_error(write(tmp_path, "search_space: {train.lr: [0.1, 0.01]}\n"), sets(item))
    key = item.split("=")[0]
    assert err.key == key
    assert str(err) == f"`{key}`: the search space cannot be changed with --set; edit the YAML file"


def test_set_does_not_modify_the_raw_config() -> None:
    raw = {"train": {"lr": 0.1}}
    config = resolve(raw, "raw.yaml", [("train.lr", 0.2), ("model.width", 4)])
    assert raw == {"train": {"lr": 0.1}}
    assert config["train"]["lr"] == 0.2 and config["model"]["width"] == 4


def test_resolve_is_idempotent_on_its_own_output(tmp_path: Path) -> None:
    config = load(DEMO)
    again = resolve(parse_yaml(dump_yaml(config), "dumped.yaml"), "dumped.yaml")
    assert again == config


TRICKY_STRINGS = [
    "", "yes", "No", "ON", "off", "y", "n", "null", "Null", "~", "true", "FALSE", "1e-05", "123", "0x1F", "0o17",
    "1_000", "2026-11-23", "1:30", ".5", ".inf", "-.inf", ".nan", "+1", "-1", "-", "- a", "a: b", "a:b", "#x", "x #y",
    "@x", "`x", "!tag", "&a", "*a", "%x", "|", ">", "?", "[x]", "{x}", "a, b", "=", "<<", "'", '"', "\\", "tab\there",
    "line\nbreak", "cr\r", "nel\x85", "ls\u2028", "bom\ufeff", "bell\x07", "del\x7f", " lead", "trail ",
    "ünïcode", "emoji \U0001f600", "/data/esc50", "a/b.c-d_e+f", "_x", "resnet18", "e+5", "x" * 300,
]


def test_dump_yaml_reads_back_equal() -> None:
    """config.yaml is written by sweep's own emitter; every value must read back as it was, with PyYAML's
    safe loader (anyone's script) and sweep's (`sweep final`, `sweep predict`)."""
    floats = [0.0, -0.0, 0.1, 1.0, -2.5, 1e-05, 3e-4, 1e20, 1.5e300, 5e-324, 123456789.123, float("inf"), float("-inf")]
    tricky = {
        "strings": TRICKY_STRINGS,
        "keys": {s: i for i, s in enumerate(TRICKY_STRINGS[:40])},
        "numbers": {"floats": floats, "ints": [0, -5, 7, 10**20, -(10**20)], "bools": [True, False], "none": None},
        "empty": {"dict": {}, "list": [], "string": ""},
        "nested": [{"a": 1, "b": [1, "two", None]}, [1, [2, [3, {}]]], [], {}, {"deep": {"deeper": {"x": [[]]}}}],
        7: "int key",
        "k" * 2000: "a key longer than YAML's implicit keys may be",
        "lists": [[1, 2], ["a", "b: c"], [{"k": "v"}, {"k2": [{"k3": 1}]}]],
    }
    stage2 = [("model.init_from", None)]  # blocks_esc50.yaml warm-starts from a run of blocks_urban.yaml
    recipes = sorted((REPO / "search_spaces").glob("*.yaml"))
    configs = [tricky, *(load(path, stage2 if path.name == "blocks_esc50.yaml" else []) for path in recipes)]
    for config in configs:
        text = dump_yaml(config)
        assert yaml.safe_load(text) == config
        assert parse_yaml(text, "dumped.yaml") == config
    nan = yaml.safe_load(dump_yaml({"x": float("nan")}))["x"]
    assert nan != nan
    assert dump_yaml({}) == "{}\n"
    assert dump_yaml({"train": {"lr": 1e-05, "folds": [1, 2]}}) == "train:\n  lr: 1.0e-05\n  folds: [1, 2]\n"


def test_dump_yaml_refuses_what_yaml_cannot_hold() -> None:
    with pytest.raises(yaml.representer.RepresenterError, match="object"):
        dump_yaml({"train": {"lr": object()}})


# ---- the command line: every bad input exits 2 before anything starts ----------------------------------


def run_launch(tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SWEEP_STORAGE", "SWEEP_STUDIES_DIR")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "sweep", "launch", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_nothing_started(tmp_path: Path) -> None:
    assert not (tmp_path / "studies").exists()
    assert not list(tmp_path.rglob("*.db")) and not list(tmp_path.rglob("*.log"))


def test_cli_bad_key_exits_2_before_anything_starts(tmp_path: Path) -> None:
    write(tmp_path, "study: {n_trials: 2}\ntrain:\n  optimzer: adam\n", name="bad.yaml")
    result = run_launch(tmp_path, "bad.yaml", "--executor", "debug")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("sweep: error: bad.yaml: `train.optimzer`: unknown key `optimzer` in section")
    assert "(did you mean 'optimizer'?); accepted: epochs," in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert_nothing_started(tmp_path)


def test_cli_bad_set_exits_2(tmp_path: Path) -> None:
    write(tmp_path, "study: {n_trials: 2}\n", name="ok.yaml")
    result = run_launch(tmp_path, "ok.yaml", "--set", "train.lr=fast", "--executor", "debug")
    assert result.returncode == 2, result.stderr
    assert (
        result.stderr.strip() == "sweep: error: --set train.lr: `train.lr`: expected a number >= 0.0, got 'fast' (str)"
    )
    assert_nothing_started(tmp_path)


def test_cli_bad_search_space_exits_2(tmp_path: Path) -> None:
    write(tmp_path, "search_space:\n  train.lr: {type: float, low: 0, high: 0.1, log: true}\n", name="space.yaml")
    result = run_launch(tmp_path, "space.yaml", "--executor", "debug")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        "sweep: error: space.yaml: `search_space.train.lr`: log scale needs low > 0, got low=0"
    )
    assert_nothing_started(tmp_path)


@pytest.mark.parametrize(
    ("dataset", "folds"),
    [
        ("synthetic", {"train": [1, 2, 3], "val": [4], "test": [5]}),
        ("esc50", {"train": [1, 2, 3], "val": [4], "test": [5]}),
        ("urbansound8k", {"train": [1, 2, 3, 4, 5, 6, 7, 8], "val": [9], "test": [10]}),
        ("speechcommands", {"train": [1], "val": [2], "test": [3]}),
    ],
)
def test_folds_not_given_follow_the_datasets_protocol(tmp_path: Path, dataset: str, folds: dict) -> None:
    assert load(write(tmp_path, f"data: {{dataset: {dataset}}}\n"))["data"]["folds"] == folds
    given = load(write(tmp_path, f"data: {{dataset: {dataset}, folds: {{test: [99]}}}}\n"))["data"]["folds"]
    assert given == dict(folds, test=[99])


def test_val_and_test_may_share_a_fold(tmp_path: Path) -> None:
    config = load(write(tmp_path, "data: {dataset: esc50, folds: {train: [2, 3, 4, 5], val: [1], test: [1]}}\n"))
    assert config["data"]["folds"] == {"train": [2, 3, 4, 5], "val": [1], "test": [1]}


def test_freeze_epochs_must_leave_epochs_for_the_body(tmp_path: Path) -> None:
    path = write(tmp_path, "train: {epochs: 5, freeze_epochs: 5}\n")
    err = load_error(path)
    assert err.key == "train.freeze_epochs"
    assert "freeze_epochs (5) must be less than train.epochs (5)" in str(err)
    searched = write(
        tmp_path, "train: {epochs: 8}\nsearch_space:\n  train.freeze_epochs: {type: int, low: 1, high: 10}\n"
    )
    err = load_error(searched)
    assert (err.source, err.key) == (str(searched), "train.freeze_epochs")
    assert str(err).startswith(
        f"{searched}: `train.freeze_epochs`: when the search picks train.freeze_epochs=10: freeze_epochs (10) must be"
    )


def test_a_searched_input_kind_must_suit_the_model(tmp_path: Path) -> None:
    path = write(tmp_path, "model: {name: audio_cnn}\nsearch_space:\n  features.name: [logmel, waveform]\n")
    assert "when the search picks features.name=waveform: model audio_cnn does not read waveform input" in str(
        load_error(path)
    )


AUDIO = "data: {sample_rate: 8000, clip_seconds: 0.5}\n"  # Nyquist 4000 Hz, 4000 samples a clip
NYQUIST = "accepted: 0 <= f_min < f_max <= data.sample_rate/2 = 4000 Hz (f_max null: 4000 Hz)"


@pytest.mark.parametrize(
    ("features", "key", "message"),
    [
        ("{f_min: 5000}", "features.f_min",
         f"f_min 5000 Hz must be below f_max 4000 Hz (Nyquist: f_max is null); {NYQUIST}"),
        ("{f_min: 3000, f_max: 2000}", "features.f_min", f"f_min 3000 Hz must be below f_max 2000 Hz; {NYQUIST}"),
        ("{f_max: 6000}", "features.f_max", f"f_max 6000 Hz is above the Nyquist frequency; {NYQUIST}"),
        ("{name: fbank, f_max: 10}", "features.f_max",
         f"f_min 20 Hz (fbank's default) must be below f_max 10 Hz; {NYQUIST}"),
        ("{n_fft: 8192}", "features.n_fft", "n_fft 8192 is longer than the clip: a clip is data.clip_seconds 0.5 × "
         "data.sample_rate 8000 = 4000 samples; accepted: n_fft <= 4000"),
        ("{hop_length: 4001}", "features.hop_length", "hop_length 4001 is longer than the clip: a clip is "
         "data.clip_seconds 0.5 × data.sample_rate 8000 = 4000 samples; accepted: hop_length <= 4000"),
    ],
)
def test_impossible_spectrogram_settings_are_refused(tmp_path: Path, features: str, key: str, message: str) -> None:
    """What the mel and Kaldi front-ends cannot compute (every trial failed at its first batch) or compute as an
    empty or one-frame spectrogram is refused when the file is read, naming the key and the accepted range."""
    path = write(tmp_path, f"{AUDIO}features: {features}\n")
    err = load_error(path)
    assert (err.source, err.key, err.detail) == (str(path), key, message)


def test_spectrogram_limits_are_inclusive_and_skip_waveform_models(tmp_path: Path) -> None:
    edge = load(write(tmp_path, f"{AUDIO}features: {{f_min: 0, f_max: 4000, n_fft: 4000, hop_length: 4000}}\n"))
    assert edge["features"]["f_max"] == 4000.0
    # a raw-waveform model computes no spectrogram: its features keys mean nothing to it
    waveform = load(write(tmp_path, f"{AUDIO}model: {{name: eat_s}}\nfeatures: {{n_fft: 8192}}\n"))
    assert waveform["model"]["name"] == "eat_s"


def test_an_untrained_ast_needs_one_patch_of_mel_bins(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, f"{AUDIO}model: {{name: ast}}\nfeatures: {{n_mels: 8}}\n"))
    assert (err.key, err.detail) == (
        "features.n_mels",
        "model ast needs at least 16 mel bins, got 8; accepted: n_mels >= 16",
    )
    assert load(write(tmp_path, f"{AUDIO}model: {{name: ast}}\nfeatures: {{n_mels: 16}}\n"))["features"]["n_mels"] == 16


def test_search_values_beyond_nyquist_are_refused_before_a_trial_picks_them(tmp_path: Path) -> None:
    path = write(tmp_path, f"{AUDIO}search_space:\n  features.f_max: {{type: float, low: 2000, high: 8000}}\n")
    err = load_error(path)
    assert err.key == "features.f_max"
    assert err.detail.startswith("when the search picks features.f_max=8000.0: f_max 8000 Hz is above the Nyquist")


# ---- hostile YAML: alias bombs, recursive aliases, duplicate keys, other encodings -------------------

LAUGHS = "".join(  # "billion laughs": 9 levels of 9 aliases each, 10^9 nodes from 10 lines
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9) if prev else ', '.join(['lol'] * 9)}]\n"
    for prev, name in zip([None, *"abcdefgh"], "abcdefghi")
)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single `sweep: error:` line of a refused launch (exit 2, no traceback)."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_cli_yaml_bomb_exits_2_naming_the_file_and_line(tmp_path: Path) -> None:
    """Unbounded, this file is expanded into 10^9 nodes by the first copy of the config (85 s, then MemoryError):
    the timeout is the failure mode, the bound is what makes it return at once."""
    write(tmp_path, "study: {n_trials: 2}\n" + LAUGHS, name="bomb.yaml")
    line = one_error_line(run_launch(tmp_path, "bomb.yaml", "--executor", "debug", timeout=20))
    # b, c, d add 9·10 + 9·91 + 9·820 = 8,289 nodes; e's first alias of d (7,381 more) passes 10,000, on line 6
    assert line == (
        "sweep: error: bomb.yaml: line 6: alias *d takes the nodes added through aliases past 10,000 (a YAML bomb?); "
        "aliases may share a block a few times, not build a large document"
    )
    assert_nothing_started(tmp_path)


def test_an_alias_bomb_in_a_set_value_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        parse_set("train.lr={" + LAUGHS.strip().replace("\n", ", ") + "}")
    assert str(info.value).startswith("--set train.lr={a: &a [lol,")
    assert ": line 1: alias *d takes the nodes added through aliases past 10,000" in str(info.value)


def test_aliases_that_share_a_block_still_load(tmp_path: Path) -> None:
    """A block shared by aliases and a merge key overridden by keys of its own are YAML's intended use."""
    path = write(
        tmp_path,
        "train: &train {epochs: 3, lr: 0.01}\n"
        "search_space:\n"
        "  train.lr: &range {type: float, low: 0.001, high: 0.1, log: true}\n"
        "  train.weight_decay: {<<: *range, low: 0.0001, log: true}\n"
        "  augment.strength: {<<: *range, low: 0.0, high: 1.0, log: false}\n"
        "  model.width: {type: categorical, choices: &sizes [2, 4]}\n"
        "  model.depth: {type: categorical, choices: *sizes}\n",
    )
    config = load(path)
    assert config["train"]["epochs"] == 3 and config["train"]["lr"] == 0.01
    space = config["search_space"]
    assert space["train.weight_decay"] == {"type": "float", "low": 0.0001, "high": 0.1, "log": True}
    assert space["augment.strength"] == {"type": "float", "low": 0.0, "high": 1.0, "log": False}
    assert space["model.depth"]["choices"] == [2, 4]


def test_a_recursive_alias_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "study: {n_trials: 2}\ntrain:\n  lr: &loop [1, *loop]\n")
    assert str(load_error(path)) == (
        f"{path}: line 3: alias *loop is inside the block &loop it names; a recursive structure is not a config"
    )


def test_nesting_past_the_parsers_recursion_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "study: {n_trials: 2}\ntrain:\n  lr: " + "[" * 5000 + "]" * 5000 + "\n")
    assert str(load_error(path)) == f"{path}: line 3: nested too deeply to be a config"


@pytest.mark.parametrize(
    ("text", "key", "lines"),
    [
        ("train:\n  lr: 0.1\nstudy:\n  n_trials: 2\ntrain:\n  epochs: 1\n", "train", (5, 1)),
        ("study: {n_trials: 2}\ntrain:\n  epochs: 1\n  lr: 0.1\n  epochs: 2\n", "train.epochs", (5, 3)),
        ("search_space:\n  train.lr: {type: float, low: 0.1, high: 0.2}\n  train.lr: [0.1, 0.2]\n",
         "search_space.train.lr", (3, 2)),
        ("study: {n_trials: 2, name: a, n_trials: 3}\n", "study.n_trials", (1, 1)),
        ("data:\n  folds: {train: [1], val: [2]}\n  folds:\n    test: [3]\n", "data.folds", (3, 2)),
    ],
)
def test_duplicate_keys_are_refused_naming_both_lines(tmp_path: Path, text: str, key: str, lines: tuple) -> None:
    """PyYAML keeps the last of two equal keys: a second `train:` would silently drop the first section."""
    path = write(tmp_path, text)
    err = load_error(path)
    assert (err.source, err.key) == (str(path), key)
    assert str(err) == (
        f"{path}: `{key}`: line {lines[0]}: the key is given a second time (first at line {lines[1]}); "
        "YAML would keep only the last one: merge the two"
    )


def test_cli_duplicate_section_and_duplicate_set_value_exit_2(tmp_path: Path) -> None:
    write(tmp_path, "train:\n  lr: 0.1\nstudy:\n  n_trials: 2\ntrain:\n  epochs: 1\n", name="twice.yaml")
    line = one_error_line(run_launch(tmp_path, "twice.yaml", "--executor", "debug"))
    assert line == (
        "sweep: error: twice.yaml: `train`: line 5: the key is given a second time (first at line 1); "
        "YAML would keep only the last one: merge the two"
    )
    write(tmp_path, "study: {n_trials: 2}\n", name="ok.yaml")
    line = one_error_line(run_launch(tmp_path, "ok.yaml", "--set", "train={lr: 0.1, lr: 0.2}", "--executor", "debug"))
    assert line.startswith("sweep: error: --set train={lr: 0.1, lr: 0.2}: `lr`: line 1: the key is given a second")
    assert_nothing_started(tmp_path)


def test_cli_non_utf8_study_file_exits_2_naming_the_byte_offset(tmp_path: Path) -> None:
    (tmp_path / "latin1.yaml").write_bytes("study:\n  n_trials: 2\n# café au lait\n".encode("latin-1"))
    line = one_error_line(run_launch(tmp_path, "latin1.yaml", "--executor", "debug"))
    assert line == (
        "sweep: error: latin1.yaml: not UTF-8 text: byte 0xe9 at byte offset 26 (line 3) is not valid UTF-8; "
        "save the file as UTF-8"
    )
    (tmp_path / "utf16.yaml").write_text("study:\n  n_trials: 2\n", encoding="utf-16")
    line = one_error_line(run_launch(tmp_path, "utf16.yaml", "--executor", "debug"))
    assert line.startswith("sweep: error: utf16.yaml: not UTF-8 text (it starts with a UTF-16 byte-order mark): ")
    assert_nothing_started(tmp_path)


def test_utf8_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    (tmp_path / "bom.yaml").write_bytes("\ufeffstudy: {n_trials: 2, name: café}\n".encode())
    with pytest.raises(ConfigError, match="study name 'café' must start"):  # read as text: the name is the check
        load(tmp_path / "bom.yaml")
    (tmp_path / "bom.yaml").write_bytes("\ufeffstudy: {n_trials: 2}\n# café\n".encode())
    assert load(tmp_path / "bom.yaml")["study"]["n_trials"] == 2


# ---- the command line names the flag the user typed ----------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--study", "a/b"), "--study a/b: `study.name`: study name 'a/b' must start with a letter or digit"),
        (("--study", ""), "--study '': `study.name`: study name '' must start with a letter or digit"),
        (("--trials", "0"), "--trials 0: `study.n_trials`: expected an integer >= 1, got 0"),
        (("--workers", "0"), "--workers 0: `executor.workers`: expected an integer >= 1, got 0"),
        (("--set", "study.n_trials=5", "--trials", "-1"), "--trials -1: `study.n_trials`: expected an integer >= 1"),
        (("--set", "study.name=a/b"), "--set study.name: `study.name`: study name 'a/b' must start with a letter"),
    ],
)
def test_cli_flag_errors_name_the_flag_as_typed(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    write(tmp_path, "study: {n_trials: 2}\n", name="base.yaml")
    line = one_error_line(run_launch(tmp_path, "base.yaml", "--executor", "debug", *args))
    assert line.startswith(f"sweep: error: {message}")
    assert_nothing_started(tmp_path)


def test_set_switching_a_variant_drops_the_keys_only_the_old_one_takes(tmp_path: Path) -> None:
    path = write(tmp_path, "sampler: {name: tpe, seed: 3, n_startup_trials: 10}\n"
                           "pruner: {name: median, n_startup_trials: 2, n_warmup_steps: 1}\n")
    with pytest.raises(ConfigError, match="n_startup_trials"):  # without the switch: a key random does not take
        load(write(tmp_path, "sampler: {name: random, n_startup_trials: 10}\n", "plain.yaml"))
    config = load(path, sets("sampler.name=random", "pruner.name=percentile"))
    assert config["sampler"] == {"name": "random", "seed": 3}  # the shared key stays
    assert config["pruner"]["name"] == "percentile"
    assert config["pruner"]["n_startup_trials"] == 2  # percentile takes it too: kept, not reset
    assert config["pruner"]["n_warmup_steps"] == 1


def test_classic_recipes_switch_to_their_original_random_sampler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESC50_ROOT", "/nonexistent")  # resolving does not read the data
    for name in ("cnn", "resnet"):
        path = Path(__file__).parent.parent / "search_spaces" / f"{name}.yaml"
        assert "--set sampler.name=random" in path.read_text()  # the file says how
        assert load(path, sets("sampler.name=random"))["sampler"]["name"] == "random"
