"""Model families: shapes, gradients, the head/body split, freezing, validation and the local weight caches.

Everything is tiny and random: no download ever happens. The pretrained paths are exercised with tiny
checkpoints written into a temporary hub cache / torch cache laid out exactly as the real ones.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY as CONFTEST_TINY

from sweep.models import MODELS, WeightsMissing, build_model, check_weights, hf_cache, torch_cache
from sweep.schema import ConfigError

N_CLASSES = 5
SPEC = (1, 32, 50)  # 32 mel bins × 50 frames
WAVE = (8000,)  # 1 s at 8 kHz
TINY_EAT = {"nf": 2, "emb": 8, "ff": 16, "layers": 1, "heads": 2}
TINY: dict[str, tuple[dict[str, Any], tuple[int, ...]]] = {
    "audio_cnn": ({"width": 4, "depth": 1}, SPEC),
    "simple_cnn": ({"n_layers": 2, "channels": 4, "hidden": 8}, SPEC),
    "resnet18": ({}, SPEC),
    "resnet34": ({"concat_pool": False}, SPEC),
    "resnet50": ({"dropout": 0.0}, SPEC),
    "vit": ({"image_size": 32, "patch_size": 8, "hidden_size": 16, "layers": 2, "heads": 2}, SPEC),
    "ast": ({"max_length": 40, "hidden_size": 16, "layers": 2, "heads": 2}, SPEC),
    "blocks": ({"blocks": [{"res": [4, 4]}, {"max_pool": [2, 2]}, {"drop": [0.5, 0.1, 3, 3]},
                           {"pooling": {"mode": "max", "flat": True}}, {"fc": 8}, {"dropout": 0.1}]}, SPEC),
    "eat_s": (TINY_EAT, WAVE),
    "eat_m": ({**TINY_EAT, "ds_factors": [4, 4]}, WAVE),
}


def model_cfg(name: str, **overrides: Any) -> dict[str, Any]:
    """The resolved `model` section: defaults, then overrides checked as the config loader checks them."""
    params = MODELS[name].params
    cfg = {"name": name, "pretrained": False, **{k: f.default for k, f in params.items()}}
    cfg.update({k: v if k == "pretrained" else params[k].check(v) for k, v in overrides.items()})
    return cfg


def build(cfg: dict[str, Any], shape: tuple[int, ...]) -> torch.nn.Module:
    spec = MODELS[cfg["name"]]
    if spec.validate is not None:
        spec.validate(cfg)
    return build_model({"model": cfg}, N_CLASSES, shape)


def batch(shape: tuple[int, ...], n: int = 2) -> torch.Tensor:
    if len(shape) == 1:
        return 0.1 * torch.randn(n, *shape)  # waveform
    return 3 * torch.randn(n, *shape) - 5  # log-mel levels


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture
def caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty Hugging Face and torch caches under tmp_path."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


# ---- every family ----------------------------------------------------------------------------------


def test_inputs_declared() -> None:
    spectrogram = ("logmel", "fbank")
    expected = {"simple_cnn": spectrogram, "resnet18": spectrogram, "resnet34": spectrogram,
                "resnet50": spectrogram, "vit": spectrogram, "ast": ("fbank", "logmel"),
                "eat_s": ("waveform",), "eat_m": ("waveform",), "blocks": spectrogram}
    assert {name: MODELS[name].inputs for name in expected} == expected
    assert {name for name, spec in MODELS.items() if spec.pretrained} == {"resnet18", "resnet34", "resnet50",
                                                                          "vit", "ast"}


@pytest.mark.parametrize("name", list(TINY))
def test_forward_backward_and_head(name: str) -> None:
    overrides, shape = TINY[name]
    torch.manual_seed(0)
    model = build(model_cfg(name, **overrides), shape).train()
    logits = model(batch(shape))
    assert logits.shape == (2, N_CLASSES) and torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([0, 3])).backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"parameters that get no gradient: {unused}"

    head = {id(p) for p in model.head.parameters()}
    body = {id(p) for p in model.parameters()} - head
    assert head and body and head <= {id(p) for p in model.parameters()}
    assert any(p.shape[0] == N_CLASSES for p in model.head.parameters())  # the output layer is in the head
    model.eval()
    with torch.no_grad():
        assert model(batch(shape, 1)).shape == (1, N_CLASSES)


@pytest.mark.parametrize("n_layers", [1, 6])
def test_simple_cnn_depth_beyond_input_size(n_layers: int) -> None:
    model = build(model_cfg("simple_cnn", n_layers=n_layers, channels=2, hidden=4), (1, 8, 8))
    assert model(batch((1, 8, 8))).shape == (2, N_CLASSES)
    assert model.head[0].in_features == 2 * 2 ** (n_layers - 1)


@pytest.mark.parametrize("max_length", [40, 64])  # 50 frames: cut, padded
def test_ast_pads_or_cuts_to_max_length(max_length: int) -> None:
    model = build(model_cfg("ast", **{**TINY["ast"][0], "max_length": max_length}), SPEC).eval()
    seen = []
    model.encoder.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["input_values"]),
                                            with_kwargs=True)
    x = batch(SPEC)
    model(x)
    assert seen[0].shape == (2, max_length, 32)
    frames = min(max_length, 50)
    expected = (x[:, 0, :, :frames].transpose(1, 2) + 4.2677393) / (2 * 4.5689974)
    torch.testing.assert_close(seen[0][:, :frames], expected)
    if max_length > 50:
        torch.testing.assert_close(seen[0][:, 50:], torch.full_like(seen[0][:, 50:], 4.2677393 / (2 * 4.5689974)))


def test_eat_full_size_parameter_counts() -> None:
    """The paper gives 5.3M parameters for EAT-S and 25.5M for EAT-M; counted here for ESC-50 clips."""
    counts = {}
    for name in ("eat_s", "eat_m"):
        model = build_model({"model": model_cfg(name)}, 50, (110_250,))  # 5 s at 22.05 kHz, 50 classes
        counts[name] = n_params(model)
        assert model.pos_embed.shape[1] == math.ceil(110_250 / 1024) + 1  # one token per 1024 samples + CLS
    print(f"\nEAT parameters (50 classes, 110250 samples): {counts}")
    assert 5.0e6 < counts["eat_s"] < 5.5e6
    assert 24.5e6 < counts["eat_m"] < 26.0e6


# ---- vit: freezing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("unfrozen", [None, 0, 1, 3])
def test_vit_unfrozen_layers_freezes_the_rest_for_good(unfrozen: int | None) -> None:
    from sweep.models.vit import encoder_layers

    overrides = {**TINY["vit"][0], "layers": 3, "unfrozen_layers": unfrozen}
    model = build(model_cfg("vit", **overrides), SPEC)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    if unfrozen is None:
        assert trainable == {id(p) for p in model.parameters()}
        return
    layers = encoder_layers(model.encoder)
    expected = [*model.head.parameters(), *model.encoder.layernorm.parameters()]
    expected += [p for layer in layers[len(layers) - unfrozen :] for p in layer.parameters()]
    assert trainable == {id(p) for p in expected}
    assert all(not p.requires_grad for p in model.encoder.embeddings.parameters())
    F.cross_entropy(model(batch(SPEC)), torch.tensor([1, 2])).backward()
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


# ---- validation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "overrides", "key"),
    [
        ("vit", {"pretrained": True, "hidden_size": 16}, "model.hidden_size"),
        ("vit", {"pretrained": True, "image_size": 64}, "model.image_size"),
        ("vit", {"layers": 3, "unfrozen_layers": 4}, "model.unfrozen_layers"),
        ("vit", {"unfrozen_layers": 13}, "model.unfrozen_layers"),  # ViT-B has 12
        ("vit", {"hidden_size": 10, "heads": 3}, "model.heads"),
        ("vit", {"image_size": 8, "patch_size": 16}, "model.patch_size"),
        ("ast", {"pretrained": True, "tstride": 16}, "model.tstride"),
        ("ast", {"pretrained": True, "layers": 2}, "model.layers"),
        ("ast", {"hidden_size": 20, "heads": 3}, "model.heads"),
        ("eat_s", {"emb": 10, "heads": 4}, "model.heads"),
        ("eat_m", {"ds_factors": [4, 0]}, "model.ds_factors"),
    ],
)
def test_validate_rejects(name: str, overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        MODELS[name].validate(model_cfg(name, **overrides))
    assert info.value.key == key


def test_validate_accepts_defaults_and_pretrained() -> None:
    for name in ("vit", "ast", "eat_s", "eat_m"):
        MODELS[name].validate(model_cfg(name))
    MODELS["vit"].validate(model_cfg("vit", pretrained=True, unfrozen_layers=4))
    MODELS["ast"].validate(model_cfg("ast", pretrained=True, max_length=512))


def test_ast_needs_a_patch_worth_of_mel_bins() -> None:
    with pytest.raises(ConfigError) as info:
        build(model_cfg("ast", **TINY["ast"][0]), (1, 8, 50))
    assert info.value.key == "features.n_mels"


# ---- weights: an empty cache ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "named"),
    [
        ("vit", "google/vit-base-patch16-224-in21k"),
        ("ast", "MIT/ast-finetuned-audioset-10-10-0.4593"),
        ("resnet18", "resnet18-f37072fd.pth"),
        ("resnet50", "resnet50-11ad3fa6.pth"),
    ],
)
def test_empty_cache_raises_weights_missing(caches: Path, name: str, named: str) -> None:
    cfg = model_cfg(name, pretrained=True)
    with pytest.raises(WeightsMissing) as info:
        check_weights(cfg)
    message = str(info.value)
    cache = torch_cache() if name.startswith("resnet") else hf_cache()
    assert named in message and str(cache) in message and str(caches) in cache.as_posix()
    if name.startswith("resnet"):
        assert f"TORCH_HOME={caches / 'torch'}" in message and f"torchvision.models.{name}(weights=" in message
    else:
        assert f"hf download {named}" in message and f"from_pretrained('{named}')" in message
        assert f"HF_HUB_CACHE={cache}" in message
    with pytest.raises(WeightsMissing):  # the builder never falls back to a download
        build(cfg, SPEC)
    assert not [p for p in caches.rglob("*") if p.is_file()]  # and wrote nothing


def test_hf_message_names_hf_home_without_hub_cache(caches: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_CACHE")
    with pytest.raises(WeightsMissing, match=f"HF_HOME={caches / 'hf'} hf download"):
        check_weights(model_cfg("vit", pretrained=True))


# ---- weights: a filled cache ------------------------------------------------------------------------


def save_to_hub_cache(model: Any, repo_id: str) -> None:
    """Write `model` where the hub would have put a download of `repo_id` (refs/main → snapshots/<commit>)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hf_cache() / f"models--{repo_id.replace('/', '--')}"
    model.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def test_vit_loads_pretrained_from_the_local_hub_cache(caches: Path) -> None:
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64)
    saved = ViTModel(config)  # with its pooler, as google/vit-base-patch16-224-in21k
    save_to_hub_cache(saved, "tiny-org/tiny-vit")
    cfg = model_cfg("vit", pretrained=True, id="tiny-org/tiny-vit", unfrozen_layers=1)
    check_weights(cfg)
    model = build(cfg, SPEC)
    for name, value in model.encoder.state_dict().items():
        torch.testing.assert_close(value, saved.state_dict()[name])
    assert model.encoder.pooler is None and model.head.out_features == N_CLASSES
    assert not model.encoder.embeddings.patch_embeddings.projection.weight.requires_grad
    assert model(batch(SPEC)).shape == (2, N_CLASSES)
    with pytest.raises(ConfigError) as info:  # only the checkpoint knows it has 2 layers
        build(model_cfg("vit", pretrained=True, id="tiny-org/tiny-vit", unfrozen_layers=3), SPEC)
    assert info.value.key == "model.unfrozen_layers"


def test_ast_loads_pretrained_and_stretches_position_embeddings(caches: Path) -> None:
    from transformers import ASTConfig, ASTForAudioClassification

    torch.manual_seed(0)
    config = ASTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       num_mel_bins=32, max_length=48, num_labels=7)
    saved = ASTForAudioClassification(config)
    n_freq, n_time = saved.audio_spectrogram_transformer.embeddings.get_shape(config)  # 2 × 4 patches
    grid = torch.arange(n_freq, dtype=torch.float).repeat_interleave(n_time)  # varies along frequency only
    with torch.no_grad():
        saved.audio_spectrogram_transformer.embeddings.position_embeddings[0, 2:] = grid[:, None]
    save_to_hub_cache(saved, "tiny-org/tiny-ast")

    same = build(model_cfg("ast", pretrained=True, id="tiny-org/tiny-ast", max_length=48), SPEC)
    for name, value in same.encoder.state_dict().items():
        torch.testing.assert_close(value, saved.audio_spectrogram_transformer.state_dict()[name])
    torch.testing.assert_close(same.head.layernorm.weight, saved.classifier.layernorm.weight)
    assert same.head.dense.out_features == N_CLASSES

    longer = build(model_cfg("ast", pretrained=True, id="tiny-org/tiny-ast", max_length=98), SPEC)
    pos = longer.encoder.embeddings.position_embeddings
    assert pos.shape == (1, 2 + n_freq * 9, 16)  # (98 - 16) // 10 + 1 = 9 time patches
    torch.testing.assert_close(pos[0, 2:], torch.arange(n_freq, dtype=torch.float).repeat_interleave(9)[:, None]
                               .expand(-1, 16))
    torch.testing.assert_close(pos[0, :2], saved.audio_spectrogram_transformer.embeddings.position_embeddings[0, :2])
    assert longer(batch(SPEC)).shape == (2, N_CLASSES)

    with pytest.raises(ConfigError, match="trained on 32 mel bins") as info:
        build(model_cfg("ast", pretrained=True, id="tiny-org/tiny-ast"), (1, 64, 50))
    assert info.value.key == "features.n_mels"


def test_resnet18_loads_imagenet_weights_from_the_torch_cache(caches: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch_cache().mkdir(parents=True)
    torch.save(state, torch_cache() / "resnet18-f37072fd.pth")
    cfg = model_cfg("resnet18", pretrained=True)
    check_weights(cfg)
    model = build(cfg, SPEC)
    first_conv = model.body[0]
    assert first_conv.in_channels == 1
    torch.testing.assert_close(first_conv.weight, state["conv1.weight"].sum(dim=1, keepdim=True))  # as fastai does
    torch.testing.assert_close(model.body[4][0].conv1.weight, state["layer1.0.conv1.weight"])
    torch.testing.assert_close(model.body[7][1].bn2.running_var, state["layer4.1.bn2.running_var"])
    assert model(batch(SPEC)).shape == (2, N_CLASSES)


def test_eat_ds_factors_must_leave_a_token_of_the_clip() -> None:
    from sweep.config.resolve import resolve

    config = copy.deepcopy(CONFTEST_TINY)  # 0.5 s at 8 kHz: 4000 samples
    config["model"] = {"name": "eat_s", **TINY_EAT, "ds_factors": [16, 16, 4]}  # 4096 samples a token
    config["features"], config["search_space"] = {"name": "waveform"}, {}
    with pytest.raises(ConfigError, match=r"\[16, 16, 4\] make one token of 4096 samples and the clip has 4000") as err:
        resolve(config, "eat")
    assert err.value.key == "model.ds_factors"
    config["model"]["ds_factors"] = [4, 4, 4]  # 1024: 4000 samples are 16 tokens (the last one padded)
    assert resolve(config, "eat")["model"]["ds_factors"] == [4, 4, 4]


def _eat_run(seconds: float, n_classes: int, **train: Any) -> dict[str, Any]:
    config = copy.deepcopy(CONFTEST_TINY)
    config["data"].update(clip_seconds=seconds, n_classes=n_classes)
    config["model"] = {"name": "eat_s", **TINY_EAT}
    config["features"], config["search_space"] = {"name": "waveform"}, {}
    config["augment"] = {"mixup": False, "specaugment": False}
    config["train"].update(epochs=1, **train)
    return config


def test_eat_warm_start_on_another_clip_length_interpolates_the_position_embedding(tmp_path: Path) -> None:
    """EAT's `ext_pretrained` through `model.init_from`: a run on 0.5 s clips (4 tokens) starts one on 1 s
    clips (8 tokens) with 3 classes: every body parameter is loaded as trained, the position embedding is the
    source's interpolated (CLS kept), the head is new."""
    from sweep.checkpoint import load_checkpoint
    from sweep.config.resolve import resolve
    from sweep.run.trial import train_trial

    train_trial(resolve(_eat_run(0.5, 4), "short"), tmp_path / "short")
    source = load_checkpoint(tmp_path / "short" / "checkpoint.pt")["model"]
    assert source["pos_embed"].shape == (1, 4 + 1, 8)

    longer = _eat_run(1.0, 3, lr=0.0)  # no step moves a weight: what was loaded is what is saved
    longer["model"]["init_from"] = str(tmp_path / "short")
    train_trial(resolve(longer, "long"), tmp_path / "long")
    after = load_checkpoint(tmp_path / "long" / "checkpoint.pt")["model"]
    expected = torch.cat([source["pos_embed"][:, :1], F.interpolate(
        source["pos_embed"][:, 1:].transpose(1, 2), size=8, mode="linear").transpose(1, 2)], dim=1)
    torch.testing.assert_close(after["pos_embed"], expected, rtol=0, atol=0)
    assert after["head.weight"].shape == (3, 8) and source["head.weight"].shape == (4, 8)
    params = {name for name, _ in build_model({"model": model_cfg("eat_s", **TINY_EAT)}, 3, (8000,)).named_parameters()}
    body = params - {"pos_embed", "head.weight", "head.bias"}
    assert body and all(torch.equal(after[k], source[k]) for k in body)
    assert not torch.equal(after["pos_embed"][:, 1:5], source["pos_embed"][:, 1:])  # resampled, not copied


def test_eat_warm_start_refuses_other_mismatches(tmp_path: Path) -> None:
    """Only the position embedding's token count is fitted: another width stays the error naming both shapes."""
    from sweep.config.resolve import resolve
    from sweep.run.trial import train_trial

    train_trial(resolve(_eat_run(0.5, 4), "short"), tmp_path / "short")
    wider = _eat_run(1.0, 4)
    wider["model"].update(emb=16, init_from=str(tmp_path / "short"))
    with pytest.raises(ConfigError) as info:
        resolve(wider, "wide")
    assert info.value.key == "model.init_from"
    assert "cls_token: [1, 1, 8] in" in str(info.value) and "[1, 1, 16] in this model" in str(info.value)
    assert "pos_embed: [1, 5, 8] in" in str(info.value) and "[1, 9, 16] in this model" in str(info.value)
    assert MODELS["eat_s"].adapt("frontend.0.weight", torch.zeros(2, 1, 7), torch.zeros(4, 1, 7)) is None
