"""The `blocks` family (a model that is a YAML list of blocks) and warm starts (`model.init_from`).

Each block key is shown to change the model it builds (layer types, widths, outputs), every bad block list is
refused when the config is resolved (naming the block's path), a search over a width by dotted path trains that
width through `sweep launch`, and a study on a dataset with other classes warm-starts from a run on the first:
body tensors equal, head new.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import TINY, sweep_cli
from torch import nn

from sweep.checkpoint import load_checkpoint
from sweep.config.resolve import input_shape, resolve
from sweep.models import build_model
from sweep.models.blocks import DropBlock, Pool, Res, SwiGLU
from sweep.schema import ConfigError

SMALL = [{"res": [4, 4]}, {"max_pool": [2, 2]}, {"res": [4, 8]}, {"pooling": {"mode": "avg"}}]


def raw(blocks: Any = SMALL, **model: Any) -> dict[str, Any]:
    config = copy.deepcopy(TINY)
    config["model"] = {"name": "blocks", "blocks": copy.deepcopy(blocks), **model}
    config["search_space"] = {}
    return config


def model_of(blocks: Any = SMALL, **model: Any) -> nn.Module:
    config = resolve(raw(blocks, **model), "test")
    torch.manual_seed(0)
    return build_model(config, 4, input_shape(config))


def spec() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 1, 32, 32)  # TINY: 32 mel bins, 0.5 s at 8 kHz with hop 128 = 32 frames


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def types(model: nn.Module) -> set[type]:
    return {type(m) for m in model.modules()}


def body_out(model: nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model.body(model.norm(spec()))


def refused(config: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        resolve(config, "study.yaml")
    return err.value


# ---- each key changes the model ---------------------------------------------------------------------------


def test_res_widths_set_the_convs_and_the_head() -> None:
    narrow, wide = model_of(), model_of([{"res": [4, 4]}, {"max_pool": [2, 2]}, {"res": [4, 16]}])
    assert Res in types(narrow) and n_params(wide) > n_params(narrow)
    assert wide.body[2].conv2.out_channels == 16 and wide.head.in_features == 16  # no pooling block: average
    assert wide.body[2].shortcut.in_channels == 4


def test_max_pool_pools_time_only() -> None:
    out = body_out(model_of([{"res": [4, 4]}, {"max_pool": [4, 2]}]))
    assert out.shape == (2, 4, 32, 15)  # frames (32 - 4) // 2 + 1; mel bins kept


@pytest.mark.parametrize(("name", "kind"), [("gelu", nn.GELU), ("relu", nn.ReLU), ("lrelu", nn.LeakyReLU),
                                            ("swiglu", SwiGLU)])
def test_activation_block_and_model_activation(name: str, kind: type) -> None:
    model = model_of([{"res": [4, 4]}, {"activation": name}])
    assert isinstance(model.body[1], kind)
    inside = model_of([{"res": [4, 6]}], activation=name)
    assert isinstance(inside.body[0].post1[1], kind)  # res's own activation
    assert inside.head.in_features == 6  # swiglu: the conv before it makes twice the width, so 6 stay 6
    if name == "swiglu":
        assert inside.body[0].conv2.out_channels == 12 and model.head.in_features == 2  # a swiglu block halves


def test_batch_first_orders_norm_and_activation() -> None:
    first, after = model_of(batch_first=True).body[0].post1, model_of(batch_first=False).body[0].post1
    assert [type(m) for m in first] == [nn.BatchNorm2d, nn.ReLU]
    assert [type(m) for m in after] == [nn.ReLU, nn.BatchNorm2d]


def test_kernel_sizes() -> None:
    res = model_of(kernel_size=5, kernel_size_res=3).body[0]
    assert res.conv1.kernel_size == res.conv2.kernel_size == (5, 5) and res.shortcut.kernel_size == (3, 3)
    assert n_params(model_of(kernel_size=5)) > n_params(model_of())


def test_drop_applies_dropblock_with_probability_p() -> None:
    always = model_of([{"res": [4, 4]}, {"drop": [1.0, 0.3, 3, 3]}])
    never = model_of([{"res": [4, 4]}, {"drop": [0.0, 0.3, 3, 3]}])
    assert isinstance(always.body[1], DropBlock)
    x = torch.rand(4, 4, 32, 32) + 1
    torch.manual_seed(0)
    dropped = always.body[1].train()(x)
    zeroed = (dropped == 0).float().mean().item()
    assert 0.1 < zeroed < 0.5  # about drop_prob of the map, in blocks
    assert torch.equal(never.body[1].train()(x), x) and torch.equal(always.body[1].eval()(x), x)


def test_dropout_drops_channels_on_maps_and_units_on_vectors() -> None:
    model = model_of([{"res": [4, 4]}, {"dropout": 0.5}, {"pooling": {}}, {"dropout": 0.5}])
    assert isinstance(model.body[1], nn.Dropout2d) and type(model.body[3]) is nn.Dropout
    torch.manual_seed(0)
    out = model.body[1].train()(torch.ones(8, 4, 3, 3))
    per_channel = out.flatten(2)
    assert ((per_channel == 0).all(-1) | (per_channel != 0).all(-1)).all() and (out == 0).any()


def test_fc_adds_a_linear_layer_after_pooling() -> None:
    model = model_of([*SMALL, {"fc": 20}])
    assert isinstance(model.body[4][0], nn.Linear) and model.body[4][0].out_features == 20
    assert model.head.in_features == 20


@pytest.mark.parametrize("mode", ["avg", "max", "sum", "mul"])
def test_pooling_modes_and_flat(mode: str) -> None:
    x = torch.rand(2, 3, 4, 5) + 0.5
    expected = {"avg": x.mean(-1), "max": x.amax(-1), "sum": x.sum(-1), "mul": x.prod(-1)}[mode]
    assert torch.allclose(Pool(mode, True)(x), expected.flatten(1))
    flat = model_of([{"res": [4, 4]}, {"max_pool": [2, 2]}, {"pooling": {"mode": mode, "flat": True}}])
    pooled = model_of([{"res": [4, 4]}, {"max_pool": [2, 2]}, {"pooling": {"mode": mode, "flat": False}}])
    assert flat.head.in_features == 4 * 32 and pooled.head.in_features == 4


def test_a_named_architecture_is_a_searchable_choice() -> None:
    named = {"small": SMALL, "wide": [{"res": [8, 24]}]}
    config = raw("small", architectures=named)
    config["search_space"] = {"model.blocks": ["small", "wide"]}
    resolved = resolve(config, "test")
    from sweep.search.space import apply

    wide = apply(resolved, {"model.blocks": "wide"})
    assert build_model(wide, 4, input_shape(wide)).head.in_features == 24
    assert build_model(resolved, 4, input_shape(resolved)).head.in_features == 8


# ---- bad block lists, refused before any trial ------------------------------------------------------------


@pytest.mark.parametrize(("blocks", "key", "message"), [
    ([{"res": [4, 4]}, {"rez": [4, 4]}], "model.blocks.1", "unknown block 'rez' (did you mean 'res'?)"),
    ([{"res": [4]}], "model.blocks.0.res", "res takes [c1, c2] (2 values), got [4]"),
    ([{"res": [4, 0]}], "model.blocks.0.res.1", "expected an integer >= 1, got 0"),
    ([{"max_pool": 2}], "model.blocks.0.max_pool", "max_pool takes [k_t, s_t] (2 values)"),
    ([{"drop": [0.5, 0.1, 3]}], "model.blocks.0.drop", "drop takes [p, drop_prob, block_t, block_f] (4 values)"),
    ([{"activation": "tanh"}], "model.blocks.0.activation", "expected one of gelu, relu, lrelu, swiglu"),
    ([{"pooling": {"mode": "median"}}], "model.blocks.0.pooling", "expected one of avg, max, sum, mul"),
    ([{"res": [4, 4], "fc": 3}], "model.blocks.0", "a block is a mapping of one name to its value"),
    ([], "model.blocks", "expected a non-empty list of blocks"),
    ("big", "model.blocks", "no architecture named 'big' in model.architectures"),
])
def test_bad_blocks_name_the_path_and_what_is_accepted(blocks: Any, key: str, message: str) -> None:
    err = refused(raw(blocks))
    assert err.key == key and message in str(err) and str(err).startswith("study.yaml: ")


@pytest.mark.parametrize(("blocks", "index", "why"), [
    ([{"res": [4, 4]}, {"max_pool": [8, 8]}, {"max_pool": [8, 8]}], 2, "longer than the 4 frames here"),
    ([{"res": [4, 4]}, {"fc": 8}], 1, "put a `pooling` block before it"),
    ([{"res": [4, 4]}, {"pooling": {}}, {"max_pool": [2, 2]}], 2, "needs a feature map"),
    ([{"res": [3, 3]}, {"activation": "swiglu"}], 1, "needs an even one, got 3"),
    ([{"res": [4, 4]}, {"drop": [0.5, 0.1, 64, 3]}], 1, "larger than the 32 × 32 map here"),
])
def test_shapes_that_do_not_fit_name_the_block(blocks: list, index: int, why: str) -> None:
    err = refused(raw(blocks))
    assert err.key == f"model.blocks.{index}" and "does not fit its input" in str(err) and why in str(err)


def test_search_paths_into_the_block_list_are_checked() -> None:
    config = raw()
    config["search_space"] = {"model.blocks.7.res.0": [4, 8]}
    err = refused(config)
    assert "`model.blocks.7`: index 7 is past the end of the list, which has 4 entries (accepted: 0–3)" in str(err)
    config["search_space"] = {"model.blocks.2.res.1": {"type": "int", "low": 0, "high": 8}}
    err = refused(config)
    assert err.key == "model.blocks.2.res.1" and "when the search picks model.blocks.2.res.1=0" in str(err)
    with pytest.raises(ConfigError, match=r"^--set model.blocks.9.res.0: .*index 9 is past the end"):
        resolve(raw(), "study.yaml", [("model.blocks.9.res.0", 8)])
    assert resolve(raw(), "x", [("model.blocks.2.res.1", 12)])["model"]["blocks"][2] == {"res": [4, 12]}
    default = resolve({"model": {"name": "blocks"}}, "x", [("model.blocks.0.res.0", 5)])  # the default list
    assert default["model"]["blocks"][0] == {"res": [5, 16]}


# ---- through sweep launch ----------------------------------------------------------------------------------


def _launch(home: Path, config: dict[str, Any], name: str) -> Path:
    config = copy.deepcopy(config)
    config["study"] = {"name": name, "n_trials": 2}
    config["sampler"] = {"name": "random", "seed": 0}  # one worker, seed 0: draws the second choice, then the first
    config["pruner"] = {"name": "none"}
    config["executor"]["workers"] = 1
    path = home / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    run = sweep_cli("launch", str(path), cwd=home)
    assert run.returncode == 0, run.stdout + run.stderr
    return home / "studies" / name / "trials"


def test_a_search_over_a_width_by_dotted_path_trains_that_width(home: Path) -> None:
    config = raw()
    config["train"]["epochs"] = 1
    config["search_space"] = {"model.blocks.2.res.1": [6, 10]}
    trials = _launch(home, config, "widths")
    widths = set()
    for folder in trials.iterdir():
        saved = yaml.safe_load((folder / "config.yaml").read_text())
        width = saved["model"]["blocks"][2]["res"][1]
        state = load_checkpoint(folder / "checkpoint.pt")["model"]
        assert state["body.2.conv2.weight"].shape[0] == width and state["head.weight"].shape == (4, width)
        widths.add(width)
    assert widths == {6, 10}


def test_warm_start_loads_the_body_and_gives_new_classes_a_new_head(home: Path, tmp_path: Path) -> None:
    from sweep.run.trial import train_trial

    first = raw()
    first["train"]["epochs"] = 1
    pretrained = tmp_path / "pretrain"
    train_trial(resolve(first, "pretrain"), pretrained)  # 4 classes
    before = load_checkpoint(pretrained / "checkpoint.pt")["model"]

    second = raw()
    second["data"]["n_classes"] = 3
    second["train"].update(epochs=1, lr=0.0)  # no step moves a weight, so loaded tensors stay equal
    second["search_space"] = {"model.init_from": [None, str(pretrained)]}  # from scratch vs pretrained
    trials = _launch(home, second, "finetune")
    seen = set()
    for folder in trials.iterdir():
        init_from = yaml.safe_load((folder / "config.yaml").read_text())["model"]["init_from"]
        after = load_checkpoint(folder / "checkpoint.pt")["model"]
        convs = [k for k in before if k.startswith("body.") and k.endswith("conv1.weight")]
        assert convs and all(torch.equal(after[k], before[k]) == (init_from is not None) for k in convs)
        assert before["head.weight"].shape == (4, 8) and after["head.weight"].shape == (3, 8)  # a new head
        seen.add(init_from)
    assert seen == {None, str(pretrained)}


def test_same_classes_keep_the_head(tmp_path: Path) -> None:
    from sweep.models import warmstart
    from sweep.run.trial import train_trial

    first = raw()
    first["train"]["epochs"] = 1
    train_trial(resolve(first, "pretrain"), tmp_path / "a")
    saved = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    model = model_of()
    assert warmstart.load(model, str(tmp_path / "a"), "blocks", saved["classes"])
    assert torch.equal(model.head.weight, saved["model"]["head.weight"])
    fresh = model_of()
    assert not warmstart.load(fresh, str(tmp_path / "a" / "checkpoint.pt"), "blocks", ["x", "y", "z", "w"])
    assert not torch.equal(fresh.head.weight, saved["model"]["head.weight"])
    assert torch.equal(fresh.body[0].conv1.weight, saved["model"]["body.0.conv1.weight"])


def test_bad_init_from_is_refused_with_the_key(tmp_path: Path) -> None:
    from sweep.run.trial import train_trial

    def error(path: Path | str, **model: Any) -> str:
        err = refused(raw(init_from=str(path), **model))
        assert err.key == "model.init_from"
        return str(err)

    assert "no such file or folder" in error(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    assert "a folder without checkpoint.pt, so not a sweep run" in error(tmp_path / "empty")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert "not a readable checkpoint" in error(tmp_path / "junk.pt")

    other = copy.deepcopy(TINY)
    other["train"]["epochs"], other["search_space"] = 1, {}
    train_trial(resolve(other, "cnn"), tmp_path / "cnn")  # audio_cnn
    assert "is a run of model audio_cnn, and this model is blocks" in error(tmp_path / "cnn")

    small = raw()
    small["train"]["epochs"] = 1
    train_trial(resolve(small, "small"), tmp_path / "small")
    message = error(tmp_path / "small", blocks=[{"res": [4, 4]}, {"max_pool": [2, 2]}, {"res": [4, 16]}])
    assert "body.2.conv2.weight: [8, 4, 3, 3] in" in message and "[16, 4, 3, 3] in this model" in message
