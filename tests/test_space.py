"""The `search_space` section: entries → Optuna distributions, their checks against the config, conditions,
the order params are drawn in, and drawing / applying a trial's params."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from sweep import models
from sweep.config import sections
from sweep.config.resolve import load, resolve
from sweep.config.yamlfile import parse_yaml
from sweep.schema import ConfigError, Field
from sweep.search import space
from sweep.search.space import Param

REPO = Path(__file__).resolve().parents[1]
SOURCE = "space.yaml"


def base(text: str = "") -> dict[str, Any]:
    """A resolved config without a search space, from YAML text."""
    return resolve(parse_yaml(text, SOURCE), SOURCE)


def parse(text: str, base_text: str = "") -> list[Param]:
    return space.parse(parse_yaml(text, SOURCE), base(base_text), source=SOURCE)


def parse_error(text: str, base_text: str = "") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text, base_text)
    return info.value


def one(text: str) -> Param:
    (param,) = parse(text)
    return param


@pytest.fixture
def two_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """A second model family, `tiny`, that takes `model.size` and not `model.width`; the schema is rebuilt."""
    tiny = models.ModelSpec({"size": Field(int, 4, low=1)}, lambda model, n_classes, shape: None)
    monkeypatch.setitem(models.MODELS._entries, "tiny", tiny)  # registered for this test only
    monkeypatch.setattr(sections, "SCHEMA", {})


# ---- entries → distributions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "distribution"),
    [
        ("train.lr: {type: float, low: 1e-4, high: 1e-2, log: true}", FloatDistribution(1e-4, 1e-2, log=True)),
        ("train.lr: {type: float, low: 0, high: 1}", FloatDistribution(0.0, 1.0)),
        ("augment.strength: {type: float, low: 0, high: 1, step: 0.25}", FloatDistribution(0.0, 1.0, step=0.25)),
        ("train.batch_size: {type: int, low: 16, high: 64, step: 16}", IntDistribution(16, 64, step=16)),
        ("train.batch_size: {type: int, low: 8, high: 256, log: true}", IntDistribution(8, 256, log=True)),
        ("model.depth: {type: int, low: 1, high: 4}", IntDistribution(1, 4)),
        ("model.depth: {type: int, low: 2, high: 2}", IntDistribution(2, 2)),
        ("train.lr: {type: int, low: 1, high: 3}", IntDistribution(1, 3)),  # ints are numbers too
        ("train.optimizer: {type: categorical, choices: [adam, sgd]}", CategoricalDistribution(("adam", "sgd"))),
        ("train.optimizer: [adam, sgd]", CategoricalDistribution(("adam", "sgd"))),
        ("model.width: [8, 16, 32]", CategoricalDistribution((8, 16, 32))),
        ("augment.mixup: [true, false]", CategoricalDistribution((True, False))),
        ("train.grad_clip: [null, 1.0]", CategoricalDistribution((None, 1.0))),
        ("train.lr: [1e-3, 3e-4]", CategoricalDistribution((0.001, 0.0003))),
    ],
)
def test_entry_maps_to_distribution(text: str, distribution: Any) -> None:
    param = one(text)
    assert param.path == text.split(":", 1)[0]
    assert param.distribution == distribution
    assert type(param.distribution) is type(distribution)
    assert param.when == {}


def test_float_bounds_become_floats() -> None:
    dist = one("train.lr: {type: float, low: 0, high: 1}").distribution
    assert isinstance(dist.low, float) and isinstance(dist.high, float)
    assert dist.log is False and dist.step is None


def test_when_values_become_tuples() -> None:
    params = parse(
        "train.momentum: {type: float, low: 0.5, high: 0.99, when: {train.optimizer: sgd}}\n"
        "train.weight_decay: {type: float, low: 0, high: 0.1, when: {train.optimizer: [adam, adamw]}}\n"
    )
    assert {p.path: p.when for p in params} == {
        "train.momentum": {"train.optimizer": ("sgd",)},
        "train.weight_decay": {"train.optimizer": ("adam", "adamw")},
    }


def test_empty_search_space() -> None:
    assert parse("{}") == []


def test_demo_search_space_parses() -> None:
    config = load(REPO / "search_spaces" / "demo.yaml")
    params = space.parse(config["search_space"], config)
    assert [p.path for p in params] == list(config["search_space"])
    by_path = {p.path: p.distribution for p in params}
    assert by_path["train.lr"] == FloatDistribution(1e-4, 3e-2, log=True)
    assert by_path["model.depth"] == IntDistribution(1, 3)
    assert by_path["train.optimizer"] == CategoricalDistribution(("adamw", "sgd"))


# ---- entries that are refused ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train.lr: {type: float, low: 0.1, high: 0.01}", "low (0.1) must be <= high (0.01)"),
        ("model.depth: {type: int, low: 4, high: 2}", "low (4) must be <= high (2)"),
        ("train.lr: {type: float, low: 0, high: 0.1, log: true}", "log scale needs low > 0, got low=0"),
        ("train.lr: {type: float, low: -1, high: 0.1, log: true}", "log scale needs low > 0, got low=-1"),
        ("model.width: {type: int, low: 0, high: 8, log: true}", "log scale needs low > 0, got low=0"),
        ("train.lr: {type: float, low: 1e-4, high: 0.1, log: true, step: 1e-4}", "`step` cannot be combined with"),
        ("model.width: {type: int, low: 1, high: 8, log: true, step: 1}", "`step` cannot be combined with"),
        ("train.lr: {type: float, low: 0, high: 1, step: 0}", "`step` must be a positive number, got 0"),
        ("train.lr: {type: float, low: 0, high: 1, step: -0.1}", "`step` must be a positive number, got -0.1"),
        ("model.width: {type: int, low: 8, high: 64, step: 0}", "`step` must be a positive number, got 0"),
        ("model.width: {type: int, low: 8, high: 64, step: -8}", "`step` must be a positive number, got -8"),
        ("model.width: {type: int, low: 8, high: 64, step: true}", "`step` must be a positive number, got True"),
        ("model.width: {type: int, low: 8, high: 64, step: 0.5}", "an int entry needs integer low, high and step"),
        ("model.width: {type: int, low: 1.5, high: 8}", "an int entry needs integer low, high and step"),
        ("train.lr: {type: float, low: a, high: 1}", "`low` must be a number, got 'a'"),
        ("train.lr: {type: float, low: 0}", "`high` must be a number, got None"),
        ("train.lr: {type: float, low: false, high: 1}", "`low` must be a number, got False"),
        ("train.lr: {type: float, low: 0, high: 1, log: 1}", "`log` must be true or false, got 1"),
        ("train.optimizer: []", "`choices` must be a non-empty list"),
        ("train.optimizer: {type: categorical, choices: []}", "`choices` must be a non-empty list"),
        ("train.optimizer: {type: categorical}", "`choices` must be a non-empty list"),
        ("train.optimizer: {type: categorical, choices: sgd}", "`choices` must be a non-empty list"),
        ("model.width: [[8, 16], 32]", "choices must be numbers, strings, booleans or null, got [8, 16]"),
        ("model.width: [8, {a: 1}]", "choices must be numbers, strings, booleans or null, got {'a': 1}"),
    ],
)
def test_bad_entry(text: str, message: str) -> None:
    err = parse_error(text)
    assert (err.source, err.key) == (SOURCE, f"search_space.{text.split(':', 1)[0]}")
    assert str(err).startswith(f"{SOURCE}: `{err.key}`: {message}")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "train.lr: {type: float, low: 0, high: 1, lg: true}",
            "unknown key(s) ['lg'] for a float entry; accepted: ['high', 'log', 'low', 'step', 'type', 'when']",
        ),
        (
            "train.optimizer: {type: categorical, choices: [adam], low: 1}",
            "unknown key(s) ['low'] for a categorical entry; accepted: ['choices', 'type', 'when']",
        ),
        (
            "model.depth: {type: int, low: 1, high: 3, choices: [1], if: x}",
            "unknown key(s) ['choices', 'if'] for a int entry; "
            "accepted: ['high', 'log', 'low', 'step', 'type', 'when']",
        ),
    ],
)
def test_unknown_entry_keys(text: str, message: str) -> None:
    assert str(parse_error(text)) == f"{SOURCE}: `search_space.{text.split(':', 1)[0]}`: {message}"


@pytest.mark.parametrize(
    "text",
    [
        "train.lr: 0.1",
        "train.lr: {low: 0, high: 1}",
        "train.lr: {type: double, low: 0, high: 1}",
        "train.lr: null",
    ],
)
def test_entry_without_a_known_type(text: str) -> None:
    err = parse_error(text)
    assert err.key == "search_space.train.lr"
    assert "a list of choices, or a mapping with `type: float|int|categorical`" in str(err)


def test_search_space_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError) as info:
        space.parse(["train.lr"], base(), source=SOURCE)
    assert (info.value.source, info.value.key) == (SOURCE, "search_space")
    assert "expected a mapping of dotted config paths to distributions" in str(info.value)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("train.lrr", "not a config key: unknown key `lrr` in section `train` (did you mean 'lr'?); accepted: epochs,"),
        ("trainer.lr", "not a config key: unknown key `trainer` at the top level (did you mean 'train'?)"),
        ("train", "not a config key: `train` is a section; name one of its keys: epochs, patience, freeze_epochs,"),
        ("train.lr.value", "not a config key: `train.lr` is a value, not a section"),
        ("model.size",
         "not a config key: unknown key `size` in section `model`; accepted: name, pretrained, init_from, width,"),
    ],
)
def test_path_that_is_not_a_config_key(path: str, message: str) -> None:
    err = parse_error(f"{path}: [1, 2]")
    assert (err.source, err.key) == (SOURCE, f"search_space.{path}")
    assert str(err).startswith(f"{SOURCE}: `search_space.{path}`: {message}")


@pytest.mark.parametrize(
    "path", ["sampler.name", "pruner.name", "pruner.n_warmup_steps", "study.n_trials", "executor.workers", "storage"]
)
def test_study_level_keys_cannot_be_searched(path: str) -> None:
    err = parse_error(f"{path}: [1, 2]")
    assert err.key == f"search_space.{path}"
    section = path.split(".")[0]
    assert f"`{section}` is set once per study and cannot be searched; searchable sections: data," in str(err)


def test_variant_key_follows_the_base_variant(two_models: None) -> None:
    assert parse("model.size: [1, 2]", "model: {name: tiny}")[0].path == "model.size"
    err = parse_error("model.width: [8, 16]", "model: {name: tiny}")
    assert "unknown key `width` in section `model`; accepted: name, pretrained, init_from, size" in str(err)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "train.epochs: {type: float, low: 1, high: 10}",
            "a float distribution cannot set this key, which takes an integer >= 0",
        ),
        (
            "model.depth: {type: float, low: 1, high: 3, step: 1}",
            "a float distribution cannot set this key, which takes an integer in [1, 8]",
        ),
        (
            "train.optimizer: {type: float, low: 0, high: 1}",
            "a float distribution cannot set this key, which takes one of adam, adamw, sgd, rmsprop",
        ),
        (
            "train.optimizer: [adam, nadam]",
            "value 'nadam' does not fit `train.optimizer`: expected one of adam, adamw, sgd, rmsprop, got 'nadam' "
            "(did you mean 'adam'?)",
        ),
        (
            "model.depth: {type: int, low: 1, high: 12}",
            "value 12 does not fit `model.depth`: expected an integer in [1, 8]",
        ),
        ("augment.strength: {type: float, low: 0.5, high: 2}", "value 2.0 does not fit `augment.strength`: expected a"),
        ("augment.mixup: [true, 1]", "value 1 does not fit `augment.mixup`: expected true or false, got 1 (int)"),
        ("train.amp: {type: int, low: 0, high: 1}", "value 0 does not fit `train.amp`: expected true or false"),
        ("train.epochs: [5, ten]", "value 'ten' does not fit `train.epochs`: expected an integer >= 0"),
        ("train.lr: [0.1, null]", "value None does not fit `train.lr`: expected a number >= 0.0, got null"),
        ("model.name: [audio_cnn, resnet]", "value 'resnet' does not fit `model.name`: expected one of ast,"),
    ],
)
def test_values_must_fit_the_key(text: str, message: str) -> None:
    err = parse_error(text)
    assert (err.source, err.key) == (SOURCE, f"search_space.{text.split(':', 1)[0]}")
    assert str(err).startswith(f"{SOURCE}: `{err.key}`: {message}")


# ---- conditions --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "message"),
    [
        (
            "{train.optimiser: sgd}",
            "condition on unknown key `optimiser` in section `train` (did you mean 'optimizer'?)",
        ),
        ("{trian.optimizer: sgd}", "condition on unknown key `trian` at the top level (did you mean 'train'?)"),
        ("{train: sgd}", "condition on `train` is a section; name one of its keys"),
        ("{train.optimizer: sgdd}", "condition train.optimizer: expected one of adam, adamw, sgd, rmsprop, got 'sgdd'"),
        ("{train.optimizer: [sgd, nadam]}", "condition train.optimizer: expected one of adam, adamw, sgd, rmsprop"),
        ("{augment.mixup: maybe}", "condition augment.mixup: expected true or false, got 'maybe' (str)"),
        ("[train.optimizer]", "`when` must map dotted config paths to a value or a list of values"),
        ("sgd", "`when` must map dotted config paths to a value or a list of values"),
    ],
)
def test_bad_condition(when: str, message: str) -> None:
    err = parse_error(f"train.momentum: {{type: float, low: 0.5, high: 0.99, when: {when}}}")
    assert (err.source, err.key) == (SOURCE, "search_space.train.momentum.when")
    assert str(err).startswith(f"{SOURCE}: `search_space.train.momentum.when`: {message}")


def test_condition_on_a_key_of_the_base_variant(two_models: None) -> None:
    text = "train.lr: {type: float, low: 0.001, high: 0.01, when: {model.size: 4}}"
    assert parse(text, "model: {name: tiny}")[0].when == {"model.size": (4,)}
    err = parse_error(text, "model: {name: audio_cnn}")
    assert err.key == "search_space.train.lr.when"
    assert "condition on unknown key `size` in section `model`" in str(err)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (
            "train.optimizer: {type: categorical, choices: [adam, sgd], when: {train.momentum: 0.9}}\n"
            "train.momentum: {type: float, low: 0.5, high: 0.99, when: {train.optimizer: sgd}}\n",
            "search_space.train.optimizer.when",
        ),
        (
            "train.optimizer: {type: categorical, choices: [adam, sgd], when: {train.optimizer: sgd}}\n",
            "search_space.train.optimizer.when",
        ),
        (
            "model.depth: {type: int, low: 1, high: 3, when: {model.width: 8}}\n"
            "model.width: {type: categorical, choices: [8, 16], when: {train.optimizer: sgd}}\n"
            "train.optimizer: {type: categorical, choices: [adam, sgd], when: {model.depth: 2}}\n",
            "search_space.model.depth.when",
        ),
    ],
)
def test_condition_cycle(text: str, key: str) -> None:
    err = parse_error(text)
    assert (err.source, err.key) == (SOURCE, key)
    assert str(err) == f"{SOURCE}: `{key}`: conditions form a cycle"


def test_params_are_drawn_after_the_params_their_condition_reads() -> None:
    params = parse(
        "train.lr: {type: float, low: 1e-4, high: 1e-2, log: true}\n"
        "model.depth: {type: int, low: 1, high: 3, when: {model.width: 16}}\n"
        "model.width: {type: categorical, choices: [8, 16], when: {train.optimizer: sgd}}\n"
        "train.momentum: {type: float, low: 0.5, high: 0.99, when: {train.optimizer: sgd}}\n"
        "train.optimizer: [adam, sgd]\n"
        "augment.strength: {type: float, low: 0, high: 1}\n"
    )
    assert [p.path for p in params] == [
        "train.lr",
        "train.optimizer",
        "model.width",
        "model.depth",
        "train.momentum",
        "augment.strength",
    ]


def test_condition_on_an_unsearched_key_does_not_reorder() -> None:
    params = parse(
        "train.momentum: {type: float, low: 0.5, high: 0.99, when: {train.optimizer: sgd}}\n"
        "train.lr: {type: float, low: 1e-4, high: 1e-2}\n"
    )
    assert [p.path for p in params] == ["train.momentum", "train.lr"]


# ---- discriminators: a searched model.name / pruner.name must suit the rest -------------------------------


@pytest.mark.parametrize("path", ["model.name", "data.dataset", "sampler.name", "pruner.name", "executor.name"])
def test_is_discriminator(path: str) -> None:
    assert space.is_discriminator(path)


@pytest.mark.parametrize(
    "path", ["study.name", "features.name", "model.width", "model", "train.optimizer", "storage"]
)
def test_is_not_discriminator(path: str) -> None:
    assert not space.is_discriminator(path)


def test_variant_key_searched_with_its_discriminator_needs_a_condition(two_models: None) -> None:
    err = parse_error("model.name: [audio_cnn, tiny]\nmodel.depth: {type: int, low: 1, high: 3}\n")
    assert (err.source, err.key) == (SOURCE, "search_space.model.depth")
    assert str(err).startswith(
        f"{SOURCE}: `search_space.model.depth`: not a config key: unknown key `depth` in "
        "section `model`; accepted: name, pretrained, init_from, size"
    )
    assert str(err).endswith(" when model.name=tiny; add a `when:` condition")
    ok = parse(
        "model.depth: {type: int, low: 1, high: 3, when: {model.name: audio_cnn}}\nmodel.name: [audio_cnn, tiny]\n"
    )
    assert [p.path for p in ok] == ["model.name", "model.depth"]


def test_condition_must_exclude_every_variant_without_the_key(two_models: None) -> None:
    err = parse_error(
        "model.name: [audio_cnn, tiny]\n"
        "model.depth: {type: int, low: 1, high: 3, when: {model.name: [audio_cnn, tiny]}}\n"
    )
    assert str(err).endswith(
        "accepted: name, pretrained, init_from, size when model.name=tiny; add a `when:` condition"
    )


def test_searched_discriminator_checked_against_the_file(tmp_path: Path, two_models: None) -> None:
    path = tmp_path / "study.yaml"
    path.write_text("model: {name: audio_cnn, width: 8}\nsearch_space:\n  model.name: [audio_cnn, tiny]\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    err = info.value
    assert (err.source, err.key) == (str(path), "model.width")
    assert str(err).startswith(
        f"{path}: `model.width`: when the search picks model.name=tiny: unknown key "
        "`width` in section `model`; accepted: name, pretrained, init_from, size"
    )
    path.write_text("model: {name: audio_cnn}\nsearch_space:\n  model.name: [audio_cnn, tiny]\n")
    assert load(path)["search_space"] == {"model.name": ["audio_cnn", "tiny"]}


def test_model_key_searched_over_two_models_needs_a_condition(two_models: None) -> None:
    err = parse_error("model.name: [audio_cnn, tiny]\nmodel.width: [8, 16]\n")
    assert err.key == "search_space.model.width"
    assert str(err).endswith(
        "unknown key `width` in section `model`; accepted: name, pretrained, init_from, size when model.name=tiny; "
        "add a `when:` condition"
    )
    err = parse_error("model.name: [audio_cnn, tiny]\nmodel.size: {type: int, low: 1, high: 4}\n")
    assert "when model.name=audio_cnn; add a `when:` condition" in str(err)
    params = parse(
        "model.width: {type: categorical, choices: [8, 16], when: {model.name: audio_cnn}}\n"
        "model.size: {type: int, low: 1, high: 4, when: {model.name: tiny}}\n"
        "model.name: [audio_cnn, tiny]\n"
    )
    assert [p.path for p in params] == ["model.name", "model.width", "model.size"]


def test_searched_model_checked_against_the_file(tmp_path: Path, two_models: None) -> None:
    path = tmp_path / "study.yaml"
    path.write_text("model: {width: 8}\nsearch_space:\n  model.name: [audio_cnn, tiny]\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert (info.value.source, info.value.key) == (str(path), "model.width")
    assert str(info.value) == (
        f"{path}: `model.width`: when the search picks model.name=tiny: unknown key `width` in section `model`; "
        "accepted: name, pretrained, init_from, size"
    )


def test_two_models_draw_apply_and_revalidate(two_models: None) -> None:
    config = base("model: {name: audio_cnn}")
    params = parse(
        "model.name: [audio_cnn, tiny]\n"
        "model.width: {type: categorical, choices: [8, 16], when: {model.name: audio_cnn}}\n"
        "model.size: {type: int, low: 1, high: 4, when: {model.name: tiny}}\n"
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(20):
        trial = study.ask()
        drawn = space.suggest(trial, params, config)
        name = drawn["model.name"]
        seen.add(name)
        assert set(drawn) == {"model.name", "model.width" if name == "audio_cnn" else "model.size"}
        model = resolve(space.apply(config, drawn), "trial")["model"]
        if name == "tiny":
            assert model == {"name": "tiny", "pretrained": False, "init_from": None, "size": drawn["model.size"]}
        else:
            assert model["width"] == drawn["model.width"]
        study.tell(trial, 0.0)
    assert seen == {"audio_cnn", "tiny"}


# ---- suggest / apply -------------------------------------------------------------------------------------

SPACE = """\
train.momentum: {type: float, low: 0.5, high: 0.99, when: {train.optimizer: sgd}}
train.optimizer: [adam, sgd]
train.lr: {type: float, low: 1e-4, high: 1e-2, log: true}
train.batch_size: {type: int, low: 16, high: 64, step: 16}
model.depth: {type: int, low: 1, high: 4}
augment.strength: {type: float, low: 0, high: 1, step: 0.25}
"""


def test_suggest_draws_only_active_params_within_bounds() -> None:
    config = base("train: {optimizer: adamw, momentum: 0.1}")
    params = parse(SPACE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    optimizers = set()
    for _ in range(40):
        trial = study.ask()
        drawn = space.suggest(trial, params, config)
        assert drawn == trial.params  # what it drew is what Optuna recorded, nothing more
        optimizer = drawn["train.optimizer"]
        optimizers.add(optimizer)
        assert ("train.momentum" in drawn) == (optimizer == "sgd")
        if optimizer == "sgd":
            assert 0.5 <= drawn["train.momentum"] <= 0.99
        assert 1e-4 <= drawn["train.lr"] <= 1e-2
        assert drawn["train.batch_size"] in (16, 32, 48, 64)
        assert drawn["model.depth"] in (1, 2, 3, 4)
        assert drawn["augment.strength"] in (0.0, 0.25, 0.5, 0.75, 1.0)
        study.tell(trial, drawn["train.lr"])
    assert optimizers == {"adam", "sgd"}
    assert config["train"]["optimizer"] == "adamw" and config["train"]["momentum"] == 0.1  # base untouched


def test_suggest_condition_on_an_unsearched_key_reads_the_base() -> None:
    params = parse("train.momentum: {type: float, low: 0.5, high: 0.99, when: {train.optimizer: [sgd, rmsprop]}}")
    study = optuna.create_study()
    drawn = space.suggest(study.ask(), params, base("train: {optimizer: rmsprop}"))
    assert list(drawn) == ["train.momentum"]
    trial = study.ask()
    assert space.suggest(trial, params, base("train: {optimizer: adam}")) == {}
    assert trial.params == {}


def test_suggest_follows_a_chain_of_conditions() -> None:
    params = parse(
        "model.depth: {type: int, low: 1, high: 3, when: {model.width: 16}}\n"
        "model.width: {type: categorical, choices: [8, 16], when: {train.optimizer: sgd}}\n"
        "train.optimizer: [adam, sgd]\n"
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    shapes = set()
    for _ in range(40):
        drawn = space.suggest(study.ask(), params, base("model: {width: 8}"))
        if drawn["train.optimizer"] == "adam":
            expected = {"train.optimizer"}
        elif drawn["model.width"] == 8:
            expected = {"train.optimizer", "model.width"}
        else:
            expected = {"train.optimizer", "model.width", "model.depth"}
        assert set(drawn) == expected
        shapes.add(len(expected))
    assert shapes == {1, 2, 3}
    # a condition reads the trial's config: a param not drawn keeps its base value, which the condition sees
    study.enqueue_trial({"train.optimizer": "adam"})
    trial = study.ask()
    drawn = space.suggest(trial, params, base("model: {width: 16}"))
    assert set(drawn) == {"train.optimizer", "model.depth"}


def test_apply_switching_variant_drops_the_old_variants_keys(two_models: None) -> None:
    config = base("model: {name: audio_cnn, width: 8, depth: 2}")
    applied = space.apply(config, {"model.name": "tiny"})
    assert applied["model"] == {"name": "tiny", "pretrained": False, "init_from": None}
    assert resolve(applied, "trial")["model"] == {"name": "tiny", "pretrained": False, "init_from": None, "size": 4}
    applied = space.apply(config, {"model.name": "audio_cnn", "train.lr": 0.5})  # same variant: keys kept
    assert resolve(applied, "trial")["model"]["width"] == 8 and applied["train"]["lr"] == 0.5
    # in whatever order the params come (Optuna's order is not the draw order)
    applied = space.apply(config, {"model.size": 2, "model.name": "tiny"})
    assert resolve(applied, "trial")["model"]["size"] == 2
    assert config["model"]["width"] == 8 and config["model"]["name"] == "audio_cnn"  # base untouched


def test_apply_sets_params_and_empties_the_search_space(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(
        "train: {optimizer: adamw}\nsearch_space:\n" + "".join(f"  {line}\n" for line in SPACE.splitlines())
    )
    config = load(path)
    params = space.parse(config["search_space"], config)
    drawn = {"train.optimizer": "sgd", "train.momentum": 0.75, "train.lr": 3e-4, "model.depth": 2}
    applied = space.apply(config, drawn)
    assert applied["search_space"] == {}
    assert applied["train"]["optimizer"] == "sgd" and applied["train"]["momentum"] == 0.75
    assert applied["train"]["lr"] == 3e-4 and applied["model"]["depth"] == 2
    assert applied["train"]["epochs"] == config["train"]["epochs"]  # everything else kept
    assert config["train"]["optimizer"] == "adamw" and len(config["search_space"]) == 6  # base untouched
    assert resolve(applied, "best.yaml") == applied

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        drawn = space.suggest(study.ask(), params, config)
        again = resolve(space.apply(config, drawn), "trial")
        for key, value in drawn.items():
            section, leaf = key.split(".")
            assert again[section][leaf] == value


def test_demo_trials_revalidate() -> None:
    config = load(REPO / "search_spaces" / "demo.yaml")
    params = space.parse(config["search_space"], config)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=2))
    for i in range(6):
        trial = study.ask()
        drawn = space.suggest(trial, params, config)
        assert set(drawn) == set(config["search_space"])
        resolved = resolve(space.apply(config, drawn), f"trial {trial.number}")
        assert resolved["search_space"] == {}
        assert resolved["model"]["width"] == drawn["model.width"]
        study.tell(trial, float(i))


def test_param_active() -> None:
    param = Param("train.momentum", FloatDistribution(0.5, 0.9), {"train.optimizer": ("sgd", "rmsprop")})
    assert param.active({"train": {"optimizer": "sgd"}})
    assert param.active({"train": {"optimizer": "rmsprop"}})
    assert not param.active({"train": {"optimizer": "adam"}})
    assert Param("train.lr", FloatDistribution(0.1, 0.2)).active({})
    # a condition on a param drawn earlier in the same trial reads the drawn value, not the base config's
    assert param.active({"train": {"optimizer": "adam"}}, {"train.optimizer": "sgd"})
    assert not param.active({"train": {"optimizer": "sgd"}}, {"train.optimizer": "adam"})
