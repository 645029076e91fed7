"""The common trainer: metrics, TensorBoard, checkpoints, report → prune, NaN, exact resume."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState, create_trial

from sweep.run.trial import train_trial as train
from sweep.train.loop import NonFiniteLoss


def test_writes_metrics_tensorboard_and_checkpoint(tiny_config: dict, tmp_path: Path) -> None:
    result = train(tiny_config, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["epochs"]] == [1, 2, 3]
    assert {"train_loss", "val_loss", "val_acc", "val_f1", "lr", "seconds"} <= set(metrics["epochs"][0])
    assert metrics["best_value"] == result.best_value == max(r["val_acc"] for r in result.history)
    assert 0.0 <= result.best_value <= 1.0
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert len(state["history"]) == 3 and "model" in state and "optimizer" in state

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert {"val_acc", "val_loss", "train_loss"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("val_acc")] == [1, 2, 3]
    assert events.Scalars("val_acc")[-1].value == pytest.approx(metrics["epochs"][-1]["val_acc"])


def test_reports_each_epoch_and_is_pruned_by_median(tiny_config: dict, tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    study.add_trial(create_trial(value=1.0, intermediate_values={1: 1.0, 2: 1.0, 3: 1.0},
                                 state=TrialState.COMPLETE))
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned, match="after epoch 1"):
        train(tiny_config, tmp_path, trial)
    frozen = study.trials[-1]
    assert list(frozen.intermediate_values) == [1]  # reported once, then stopped
    assert (tmp_path / "checkpoint.pt").exists()  # the epoch was saved before the pruner was asked


def test_nan_loss_raises(tiny_config: dict, tmp_path: Path) -> None:
    config = copy.deepcopy(tiny_config)
    config["train"].update(lr=1.0e30, optimizer="sgd")
    with pytest.raises(NonFiniteLoss, match="loss became"):
        train(config, tmp_path)


class PruneAtEpoch(optuna.pruners.BasePruner):
    """A real pruner that stops a trial after a given epoch: a worker dying at that point."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return max(trial.intermediate_values) >= self.epoch


def test_a_trial_that_ran_its_last_epoch_completes_whatever_the_pruner_says(tiny_config: dict, tmp_path: Path) -> None:
    """The pruner would stop the trial after epoch 3 of 3: it is fully trained by then, so it completes."""
    study = optuna.create_study(direction="maximize", pruner=PruneAtEpoch(3))
    trial = study.ask()
    result = train(tiny_config, tmp_path, trial)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert sorted(study.trials[0].intermediate_values) == [1, 2, 3]
    with pytest.raises(optuna.TrialPruned, match="after epoch 2"):  # before the last epoch it still prunes
        train(tiny_config, tmp_path / "early", optuna.create_study(pruner=PruneAtEpoch(2)).ask())


@pytest.mark.parametrize(
    ("scheduler", "freeze_epochs", "waveform_augment"),
    [("cosine", 0, False), ("onecycle", 0, False), ("onecycle", 2, True), ("cosine", 1, True)],
)
def test_resume_from_checkpoint_matches_uninterrupted_run(
    tiny_config: dict, tmp_path: Path, scheduler: str, freeze_epochs: int, waveform_augment: bool
) -> None:
    """Stopped after epoch 2 and resumed: at the head-only → whole-model boundary, or inside either phase."""
    config = copy.deepcopy(tiny_config)
    config["train"].update(scheduler=scheduler, freeze_epochs=freeze_epochs, body_lr_mult=0.1)
    config["augment"].update(waveform=waveform_augment, strength=1.0)
    reference = train(config, tmp_path / "straight")

    study = optuna.create_study(direction="maximize", pruner=PruneAtEpoch(2))
    with pytest.raises(optuna.TrialPruned):
        train(config, tmp_path / "resumed", study.ask())
    assert len(json.loads((tmp_path / "resumed" / "metrics.json").read_text())["epochs"]) == 2

    second = optuna.create_study(direction="maximize").ask()
    resumed = train(config, tmp_path / "resumed", second)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    for a, b in zip(reference.history, resumed.history):
        for key in ("train_loss", "val_loss", "val_acc", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (key, a["epoch"])
    # the retried trial carries the whole curve, epochs before the restart included
    assert sorted(second.study.trials[0].intermediate_values) == [1, 2, 3]


def test_freeze_epochs_train_the_head_alone_then_everything_at_the_body_rate(tiny_config: dict, tmp_path: Path) -> None:
    from sweep.data import crop, load_split
    from sweep.data.features import build_features
    from sweep.models import build_model

    config = copy.deepcopy(tiny_config)
    config["train"].update(epochs=3, freeze_epochs=1, body_lr_mult=0.25, scheduler="none", lr=0.01)
    with pytest.raises(optuna.TrialPruned):  # stop after the head-only epoch and look at the weights
        train(config, tmp_path / "run", optuna.create_study(pruner=PruneAtEpoch(1)).ask())
    after_frozen = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)

    torch.manual_seed(config["train"]["seed"])  # the trainer's initial weights, rebuilt
    clips = load_split(config, "train")
    shape = tuple(build_features(config)(crop(clips, torch.arange(1), 4000, None)).shape[1:])
    initial = build_model(config, 4, shape).state_dict()
    changed = {k for k, v in after_frozen["model"].items() if not torch.equal(v, initial[k])}
    assert {k for k in changed if k.startswith("head.")} == {"head.1.weight", "head.1.bias"}
    conv = {k for k in initial if ".weight" in k and initial[k].dim() == 4}  # every conv of the body
    assert conv and not conv & changed, "the body's convolutions must not move in a head-only epoch"
    assert {"norm.weight", "norm.bias"} <= changed, "BatchNorm keeps training, as in fastai's fine_tune"
    groups = after_frozen["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [0.01, 0.0025]

    resumed = train(config, tmp_path / "run")  # the rest: the body trains too
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    final = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"]
    assert all(not torch.equal(final[k], after_frozen["model"][k]) for k in conv)
