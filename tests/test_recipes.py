"""Every recipe in search_spaces/ validates as written and runs a short trial through `sweep launch`.

The runs use the recipe's own dataset loader on a small synthetic set written in that dataset's official
layout, tiny model sizes and no pretrained weights (this machine has no internet); everything else is
the file as a researcher would launch it, so no recipe can rot.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import ROOT, sweep_cli

from sweep.config.paths import parse_set
from sweep.config.resolve import load
from sweep.data.layouts import urbansound8k_hf, write_esc50, write_hf_cache, write_speechcommands, write_urbansound8k
from sweep.run.trial import train_trial
from sweep.schema import ConfigError

RECIPES = sorted(p.name for p in (ROOT / "search_spaces").glob("*.yaml"))
SMALL_AUDIO = ["data.sample_rate=8000", "data.clip_seconds=0.5", "features.n_mels=32", "features.n_fft=256",
               "features.hop_length=128"]
ESC50_CLASSES = "data.classes=[chirp_up, tone]"  # the recipe names ESC-50 categories; the fixture has these
TINY_TRANSFORMER = ["model.pretrained=false", "model.hidden_size=32", "model.heads=2"]
TINY_EAT = ["model.emb=16", "model.nf=4", "model.ff=32", "model.layers=1", "model.heads=2",
            "augment.epoch_mix=0", "augment.mix_ratio=1"]  # two epochs: every batch mixed from the first
OVERRIDES = {
    "demo.yaml": ["data.clips_per_class=6", "train.epochs=2", *SMALL_AUDIO],
    "cnn.yaml": ["train.epochs=2", *SMALL_AUDIO],
    "audio_cnn.yaml": ["train.epochs=2", "model.width=4", *SMALL_AUDIO],
    "resnet.yaml": ["model.pretrained=false", ESC50_CLASSES, "train.epochs=11", *SMALL_AUDIO],
    "vit.yaml": [*TINY_TRANSFORMER, "model.layers=4", "model.image_size=32", "model.patch_size=8", "train.epochs=2",
                 *SMALL_AUDIO],
    "vit_hf.yaml": [*TINY_TRANSFORMER, "model.layers=4", "model.image_size=32", "model.patch_size=8",
                    "train.epochs=2", *SMALL_AUDIO],
    "ast.yaml": [*TINY_TRANSFORMER, "model.layers=2", "model.max_length=64", "train.epochs=2",
                 "data.clip_seconds=0.5"],
    "blocks_urban.yaml": ["train.epochs=2", *SMALL_AUDIO],
    "blocks_esc50.yaml": ["train.epochs=2", "train.freeze_epochs=1", *SMALL_AUDIO],
    "edge.yaml": ["train.epochs=2", *SMALL_AUDIO],
    "eat.yaml": [*TINY_EAT, "train.epochs=2", "data.sample_rate=8000", "data.clip_seconds=0.5"],
    "eat_speechcommands.yaml": [*TINY_EAT, "train.epochs=2", "data.sample_rate=8000", "data.clip_seconds=0.25"],
}

def test_every_recipe_has_a_test_run() -> None:
    assert sorted(OVERRIDES) == RECIPES == sorted(
        ["vit.yaml", "vit_hf.yaml", "resnet.yaml", "cnn.yaml", "audio_cnn.yaml", "eat.yaml", "eat_speechcommands.yaml",
         "ast.yaml", "demo.yaml", "blocks_urban.yaml", "blocks_esc50.yaml", "edge.yaml"]
    )


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_validates_as_written(recipe: str, home: Path) -> None:
    if recipe == "blocks_esc50.yaml":  # as written it needs stage 1's final run, from the folder stage 1 ran in
        with pytest.raises(ConfigError) as err:
            load(ROOT / "search_spaces" / recipe)
        assert err.value.key == "model.init_from" and "no such file or folder" in str(err.value)
        config = load(ROOT / "search_spaces" / recipe, [("model.init_from", None)])
        assert config["model"]["blocks"] == load(ROOT / "search_spaces" / "blocks_urban.yaml")["model"]["blocks"]
    config = load(ROOT / "search_spaces" / recipe, [("model.init_from", None)] if recipe == "blocks_esc50.yaml" else [])
    assert config["study"]["name"] == Path(recipe).stem
    if recipe != "demo.yaml":  # the real ones run on a cluster, from the real dataset, with real weights
        assert config["data"]["dataset"] in ("esc50", "urbansound8k", "speechcommands", "hf")
        assert config["search_space"]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    hf_cache = root / "hf-datasets"  # UrbanSound8K's Hub copy, as `load_dataset` on a login node leaves it
    splits = {"train": urbansound8k_hf(root / "us8k-hf")}
    write_hf_cache(splits, hf_cache, "danavery/urbansound8K", root / "hf-work")
    return {
        "esc50": write_esc50(root / "ESC-50", n_classes=3, clips_per_class=5, sample_rate=8000, clip_seconds=1.0),
        "urbansound8k": write_urbansound8k(root / "UrbanSound8K"),
        "speechcommands": write_speechcommands(root / "speech_commands_v0.02", sample_rate=8000),
        "hf": hf_cache,
    }


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_runs_a_trial(recipe: str, datasets: dict[str, Path], home: Path) -> None:
    file = ROOT / "search_spaces" / recipe
    config = load(file, [("model.init_from", None)] if recipe == "blocks_esc50.yaml" else [])
    sets = [*OVERRIDES[recipe], "study.n_trials=1", "executor.workers=1", "executor.cpus_per_worker=1"]
    env = {}
    if config["data"]["dataset"] == "hf":  # the recipe names a dataset id: read from the datasets cache
        env["HF_DATASETS_CACHE"] = str(datasets["hf"])
    elif config["data"]["dataset"] != "synthetic":
        sets.append(f"data.root={datasets[config['data']['dataset']]}")
    if recipe == "blocks_esc50.yaml":  # stage 2 warm-starts from stage 1: a short run of blocks_urban.yaml
        stage1 = [*OVERRIDES["blocks_urban.yaml"], f"data.root={datasets['urbansound8k']}"]
        pretrained = home / "studies" / "blocks_urban" / "final" / "seed-0"
        train_trial(load(ROOT / "search_spaces" / "blocks_urban.yaml", [parse_set(s) for s in stage1]), pretrained)
    args = ["launch", str(file), "--executor", "local"]
    for item in sets:
        args += ["--set", item]
    run = sweep_cli(*args, cwd=home, timeout=600, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    name = config["study"]["name"]
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{home / 'studies' / name / 'study.db'}")
    [trial] = study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE, trial.user_attrs.get("fail_reason")
    assert 0.0 <= trial.values[0] <= 1.0
    if config["study"]["metrics"]:  # accuracy against size: the size measured, within the recipe's limit
        assert trial.values[1:] == [trial.user_attrs["sweep_objectives"][m] for m in config["study"]["metrics"][1:]]
        for metric, limits in config["study"]["constraints"].items():
            assert trial.user_attrs["sweep_objectives"][metric] <= limits.get("max", float("inf"))
    trial_dir = Path(trial.user_attrs["trial_dir"])
    ran = yaml.safe_load((trial_dir / "config.yaml").read_text())
    assert ran["data"]["dataset"] == config["data"]["dataset"] and ran["model"]["name"] == trial.params.get(
        "model.name", config["model"]["name"])
    assert len(json.loads((trial_dir / "metrics.json").read_text())["epochs"]) == ran["train"]["epochs"]
    if recipe == "blocks_esc50.yaml":  # warm-started from stage 1's run, stored absolute for the workers
        assert ran["model"]["init_from"] == str(pretrained.resolve())


def test_launch_stops_before_anything_runs_without_data_or_weights(datasets: dict[str, Path], home: Path) -> None:
    """As written, a recipe needs its dataset and its weights: both are checked before a study exists."""
    env = {"ESC50_ROOT": "", "URBANSOUND8K_ROOT": "", "HF_HOME": str(home / "hf"), "TORCH_HOME": str(home / "th")}
    run = sweep_cli("launch", str(ROOT / "search_spaces" / "cnn.yaml"), "--executor", "local", cwd=home, env=env)
    assert run.returncode == 2
    assert "data.root is not set for dataset esc50: set data.root or export ESC50_ROOT" in run.stderr
    run = sweep_cli("launch", str(ROOT / "search_spaces" / "vit.yaml"), "--executor", "local",
                    "--set", f"data.root={datasets['urbansound8k']}", cwd=home, env=env)
    assert run.returncode == 2
    assert "pretrained weights 'google/vit-base-patch16-224-in21k' are not in the Hugging Face cache" in run.stderr
    assert str(home / "hf" / "hub") in run.stderr
    run = sweep_cli("launch", str(ROOT / "search_spaces" / "resnet.yaml"), "--executor", "local",
                    "--set", f"data.root={datasets['esc50']}", "--set", ESC50_CLASSES, cwd=home, env=env)
    assert run.returncode == 2
    cache = home / "th" / "hub" / "checkpoints"
    for arch, file in (("resnet18", "resnet18-f37072fd.pth"), ("resnet50", "resnet50-11ad3fa6.pth")):
        assert f"ImageNet weights for {arch} ({file}) are not in the torch cache {cache}" in run.stderr
    assert not (home / "studies").exists()  # nothing stored
