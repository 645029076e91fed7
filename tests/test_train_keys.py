"""The training-loop keys of issue 22: gradient accumulation, clipping by value, early stopping (and epochs 0),
the EMA of the weights, and the mixed loss; each changes what is trained, in the way a hand computation says."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import optuna
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import TINY

from sweep.config.resolve import resolve
from sweep.config.typed import typed
from sweep.run import trial as one_trial
from sweep.run.trial import train_trial as train
from sweep.schema import ConfigError
from sweep.train import setup as train_setup
from sweep.train.loop import evaluate
from sweep.train.setup import mix_loss, setup


def config_with(**sections: dict) -> dict:
    """TINY, resolved, with these keys of each section changed; SGD without momentum or weight decay, no
    augmentation, no schedule: a step is `w -= lr * grad`."""
    config = copy.deepcopy(TINY)
    config["train"].update(optimizer="sgd", momentum=0.0, weight_decay=0.0, scheduler="none", lr=0.05)
    config["augment"] = {"specaugment": False, "mixup": False}
    config["model"]["dropout"] = 0.0
    for name, keys in sections.items():
        config.setdefault(name, {}).update(keys)
    return resolve(config, "test")


def weights(path: Path, key: str = "model") -> dict[str, torch.Tensor]:
    return torch.load(path / "checkpoint.pt", weights_only=True)[key]


def initial(config: dict, tmp_path: Path) -> dict[str, torch.Tensor]:
    """The weights a run of `config` starts from (set up, not trained)."""
    return {k: v.clone() for k, v in setup(config, tmp_path / "initial", ("train",), "val").model.state_dict().items()}


def parameters(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if "running_" not in k and "num_batches" not in k}


class PruneAtEpoch(optuna.pruners.BasePruner):
    """Stops a trial after a given epoch: a worker killed there (its checkpoint saved)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return max(trial.intermediate_values) >= self.epoch


class Linear(torch.nn.Module):
    """A model without batch statistics or dropout, so a batch's gradient is the mean of its clips'."""

    def __init__(self, shape: tuple[int, ...], n_classes: int) -> None:
        super().__init__()
        self.head = torch.nn.Linear(int(torch.tensor(shape).prod()), n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))


# accum_iter ---------------------------------------------------------------------------------------------------


def test_accumulating_two_batches_is_one_step_on_a_batch_twice_as_big(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(train_setup, "build_model", lambda config, n, shape: Linear(shape, n))
    big = train(config_with(train={"batch_size": 24, "epochs": 2}), tmp_path / "big")  # the 24 training clips
    accumulated = train(config_with(train={"batch_size": 12, "accum_iter": 2, "epochs": 2}), tmp_path / "accum")
    plain = train(config_with(train={"batch_size": 12, "epochs": 2}), tmp_path / "plain")
    for key, value in weights(tmp_path / "big").items():
        assert torch.allclose(weights(tmp_path / "accum")[key], value, rtol=1e-5, atol=1e-6), key
    assert not torch.allclose(weights(tmp_path / "plain")["head.weight"], weights(tmp_path / "big")["head.weight"])
    for a, b in zip(big.history, accumulated.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)  # undivided: the clips' mean loss
    assert plain.history[1]["train_loss"] != pytest.approx(big.history[1]["train_loss"], rel=1e-5)


def test_the_schedule_counts_optimizer_steps_and_a_last_partial_group_steps(tmp_path: Path) -> None:
    """3 batches of 8 with accum_iter 2: 2 optimizer steps an epoch (the third batch steps alone); one-cycle
    then ends its cycle exactly at the last epoch (it raises if stepped past its length)."""
    config = config_with(train={"batch_size": 8, "accum_iter": 2, "scheduler": "onecycle", "epochs": 2})
    assert setup(config, tmp_path / "look", ("train",), "val").steps == 2
    result = train(config, tmp_path / "run")
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["scheduler"]["last_epoch"] == 4 == state["scheduler"]["total_steps"]
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.05)
    cycle = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=4)
    for _ in range(4):
        optimizer.step()
        cycle.step()
    assert result.history[-1]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"])  # the cycle's very end


def test_with_a_gradient_scaler_clipping_sees_the_true_accumulated_gradients(tmp_path: Path) -> None:
    """AMP's GradScaler (enabled here on the CPU, where autocast is off): the loss is scaled by 2^10, unscaled once
    per optimizer step before both clips, so the weights are those of the run without it (powers of two are
    exact). Clipping the scaled gradients, or unscaling twice, would not be."""
    from sweep.train.loop import fit

    config = config_with(train={"batch_size": 8, "accum_iter": 2, "epochs": 2, "lr": 1.0,
                                "grad_clip_value": 1e-3, "grad_clip": 5e-3})
    runs = {name: setup(config, tmp_path / name, ("train",), "val") for name in ("plain", "scaled")}
    runs["scaled"].scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for run in runs.values():
        fit(run, lambda run: {}, lambda run, row: None)
    assert runs["scaled"].scaler.get_scale() == 2.0**10  # no step was skipped as overflowing
    plain, scaled = runs["plain"].model.state_dict(), runs["scaled"].model.state_dict()
    for key, value in plain.items():
        assert torch.allclose(scaled[key].float(), value.float(), rtol=1e-5, atol=1e-7), key


# grad_clip_value ----------------------------------------------------------------------------------------------


def test_clipping_by_value_bounds_every_gradient_element(tmp_path: Path) -> None:
    """One step of plain SGD at lr 1 on one batch: each weight moves by minus its (clipped) gradient."""
    base = {"batch_size": 32, "epochs": 1, "lr": 1.0}
    start = parameters(initial(config_with(train=base), tmp_path))

    def moves(name: str, **clip: float) -> torch.Tensor:
        train(config_with(train=base | clip), tmp_path / name)
        after = parameters(weights(tmp_path / name))
        return torch.cat([(after[k] - start[k]).flatten() for k in start])

    free, clipped = moves("free"), moves("value", grad_clip_value=1e-3)
    assert free.abs().max() > 1e-2  # unclipped, some gradients are much larger than the bound
    assert clipped.abs().max() <= 1e-3 * (1 + 1e-4)
    assert (clipped.abs() > 0.999e-3).sum() > 10  # the clipped ones sit at the bound
    both = moves("both", grad_clip_value=1e-3, grad_clip=5e-3)  # by value first, then by norm
    assert both.abs().max() <= 1e-3 * (1 + 1e-4) and both.norm() == pytest.approx(5e-3, rel=1e-4)
    assert clipped.norm() > 5e-3


# patience and epochs 0 ----------------------------------------------------------------------------------------


def scripted(values: list[float], metric: str = "val_acc"):
    """A `validate` that returns `values[epoch - 1]` as the metric: a history known in advance."""

    def score(run) -> dict[str, float]:
        value = values[len(run.history)]
        return {"val_loss": value, "val_acc": value, "val_f1": value} | {metric: value}

    return score


def test_patience_stops_when_the_metric_has_not_improved_for_that_many_epochs(tmp_path: Path, monkeypatch) -> None:
    """Best 0.3 at epoch 2; epoch 3 worse, epoch 4 only ties: two epochs without improvement, so it stops after
    epoch 4, although train.epochs is 0 (no limit). The pruner would prune after epoch 4: stopping comes first,
    and the trial completes with its best epoch's value."""
    monkeypatch.setattr(one_trial, "validate", scripted([0.1, 0.3, 0.2, 0.3, 0.9, 0.9]))
    config = config_with(train={"epochs": 0, "patience": 2})
    study = optuna.create_study(direction="maximize", pruner=PruneAtEpoch(4))
    result = train(config, tmp_path / "run", study.ask())
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    assert (result.best_epoch, result.best_value, result.stopped) == (2, 0.3, "patience")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["stopped"] == "patience" and metrics["best_epoch"] == 2

    unlimited = config_with(train={"epochs": 6})  # without patience: every epoch
    assert [r["epoch"] for r in train(unlimited, tmp_path / "all").history] == [1, 2, 3, 4, 5, 6]


def test_patience_follows_the_study_direction(tmp_path: Path, monkeypatch) -> None:
    """val_loss is minimized: 0.5, 0.4, then 0.45 and 0.6 do not improve → stop after epoch 4 with patience 2."""
    monkeypatch.setattr(one_trial, "validate", scripted([0.5, 0.4, 0.45, 0.6, 0.1], "val_loss"))
    config = config_with(study={"metric": "val_loss"}, train={"epochs": 0, "patience": 2})
    result = train(config, tmp_path)
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4] and result.best_epoch == 2
    patient = config_with(study={"metric": "val_loss"}, train={"epochs": 5, "patience": 3})
    assert train(patient, tmp_path / "patient").stopped is None  # epoch 5 improves: it runs to its limit


def test_an_early_stopped_trial_completes_with_the_reason(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(one_trial, "validate", scripted([0.5, 0.2, 0.2, 0.9]))
    base = config_with(train={"epochs": 0, "patience": 2})
    study = optuna.create_study(direction="maximize", pruner=PruneAtEpoch(3))
    assert one_trial.run_trial(study, study.ask(), base, [], tmp_path, 0, "host", {}) == "complete"
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == 0.5
    assert trial.user_attrs["stopped"] == "patience" and trial.user_attrs["best_epoch"] == 1
    assert trial.user_attrs["epochs_run"] == 3


def test_epochs_zero_reads_as_no_limit_elsewhere() -> None:
    from sweep.look.report import _planned
    from sweep.search.pruners import PRUNERS, warmup_steps

    assert warmup_steps(config_with(train={"epochs": 0, "patience": 3}, pruner={"n_warmup_steps": None})) == 1
    assert warmup_steps(config_with(train={"epochs": 12}, pruner={"n_warmup_steps": None})) == 3
    hyperband = copy.deepcopy(TINY) | {"pruner": {"name": "hyperband"}}
    hyperband["train"].update(epochs=0, patience=3)
    config = resolve(hyperband, "test")
    pruner = PRUNERS["hyperband"].build(typed(config).pruner, typed(config))
    assert pruner._max_resource == "auto"  # estimated from the first trial that finishes
    trial = optuna.trial.create_trial(value=1.0, user_attrs={"config": {"train": {"epochs": 0}}})
    assert _planned(trial, 10) is None  # no epochs counted as saved by pruning


# EMA ----------------------------------------------------------------------------------------------------------


def test_ema_scores_and_saves_the_average_of_the_weights(tmp_path: Path) -> None:
    """One step an epoch, decay 0.5, two epochs: avg = 0.5·(0.5·w0 + 0.5·w1) + 0.5·w2 of the weights trained
    (w0 initial, w1 and w2 after each step); BatchNorm's running statistics copied."""
    ema = {"batch_size": 32, "ema": 0.5, "lr": 0.5}
    w0 = initial(config_with(train=ema | {"epochs": 2}), tmp_path)
    train(config_with(train=ema | {"epochs": 1}), tmp_path / "one")
    result = train(config_with(train=ema | {"epochs": 2}), tmp_path / "two")
    w1, w2 = weights(tmp_path / "one", "trained_model"), weights(tmp_path / "two", "trained_model")
    average = weights(tmp_path / "two")
    for key in parameters(w0):
        expected = 0.5 * (0.5 * w0[key] + 0.5 * w1[key]) + 0.5 * w2[key]
        assert torch.allclose(average[key], expected, atol=1e-6), key
    for key in set(w0) - set(parameters(w0)):
        assert torch.equal(average[key], w2[key]), key
    assert not torch.allclose(average["head.1.weight"], w2["head.1.weight"])

    run = setup(config_with(train=ema | {"epochs": 2}), tmp_path / "two", ("train",), "val")  # resumed: both
    assert run.eval_model is run.ema.model and torch.equal(run.model.state_dict()["head.1.weight"], w2["head.1.weight"])
    scored = evaluate(run.eval_model, run.scored, False, 128)
    assert scored["val_loss"] == pytest.approx(result.history[-1]["val_loss"])  # validation scored the average
    assert evaluate(run.model, run.scored, False, 128)["val_loss"] != pytest.approx(scored["val_loss"])

    plain = train(config_with(train={"batch_size": 32, "lr": 0.5, "epochs": 2}), tmp_path / "plain")
    assert [r["train_loss"] for r in plain.history] == pytest.approx([r["train_loss"] for r in result.history])
    assert plain.history[-1]["val_loss"] != pytest.approx(result.history[-1]["val_loss"])


def test_ema_and_patience_resume_exactly_after_a_kill(tmp_path: Path) -> None:
    """Killed one epoch into a stall (after the best epoch) and restarted: the same epochs, the same early stop,
    the same weights (trained and averaged)."""
    config = config_with(train={"epochs": 10, "patience": 2, "ema": 0.5, "lr": 0.5, "batch_size": 8,
                                "accum_iter": 2, "grad_clip_value": 0.5},
                         augment={"mixup": True, "specaugment": True, "mix_loss": "bce"})
    reference = train(config, tmp_path / "straight")
    assert reference.stopped == "patience" and len(reference.history) == reference.best_epoch + 2 < 10
    kill_at = reference.best_epoch + 1  # one epoch into the stall: the patience count is half way

    with pytest.raises(optuna.TrialPruned):
        killed = optuna.create_study(direction="maximize", pruner=PruneAtEpoch(kill_at)).ask()
        train(config, tmp_path / "resumed", killed)
    resumed = train(config, tmp_path / "resumed", optuna.create_study(direction="maximize").ask())
    assert [r["epoch"] for r in resumed.history] == [r["epoch"] for r in reference.history]
    assert resumed.stopped == "patience"
    for a, b in zip(reference.history, resumed.history):
        for key in ("train_loss", "val_loss", "val_acc"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (key, a["epoch"])
    for name in ("model", "trained_model"):
        for key, value in weights(tmp_path / "straight", name).items():
            assert torch.allclose(weights(tmp_path / "resumed", name)[key].float(), value.float(), atol=1e-6), key
    again = train(config, tmp_path / "resumed")  # restarted once more after it stopped: nothing left to train
    assert len(again.history) == len(reference.history)


# mix_loss -----------------------------------------------------------------------------------------------------


def test_bce_mix_loss_is_eats_multi_hot_binary_cross_entropy() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0], [0.0, 1.0, -2.0, 3.0]])
    target = torch.tensor([[0.7, 0.3, 0.0, 0.0], [0.05, 0.95, 0.0, 0.0]])  # 5 % is not enough to be present
    present = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    p = torch.sigmoid(logits)
    expected = -(present * p.log() + (1 - present) * (1 - p).log()).sum(1).mean()
    assert mix_loss(logits, target, "bce", 0.0).item() == pytest.approx(expected.item(), rel=1e-6)
    assert mix_loss(logits, target, "ce", 0.0).item() == pytest.approx(-(target * logits.log_softmax(1)).sum(1).mean())


def test_bce_trains_differently_and_validation_loss_stays_cross_entropy(tmp_path: Path) -> None:
    mixed = {"mixup": True, "strength": 1.0}
    ce = train(config_with(augment=mixed, train={"epochs": 2}), tmp_path / "ce")
    bce = train(config_with(augment=mixed | {"mix_loss": "bce"}, train={"epochs": 2}), tmp_path / "bce")
    assert ce.history[0]["train_loss"] != pytest.approx(bce.history[0]["train_loss"], rel=1e-3)
    assert not torch.allclose(weights(tmp_path / "ce")["head.1.weight"], weights(tmp_path / "bce")["head.1.weight"])
    run = setup(config_with(augment=mixed | {"mix_loss": "bce"}, train={"epochs": 2}), tmp_path / "bce",
                ("train",), "val")
    n = len(run.scored.clips)
    logits = torch.cat([run.model.eval()(run.scored(torch.arange(i, min(i + 8, n)))) for i in range(0, n, 8)])
    cross_entropy = F.cross_entropy(logits, run.scored.clips.labels).item()
    assert bce.history[-1]["val_loss"] == pytest.approx(cross_entropy, rel=1e-5)


# the final run ------------------------------------------------------------------------------------------------


def test_the_final_run_trains_the_best_epoch_count_with_patience_off(home: Path, capsys, monkeypatch) -> None:
    """A study of `epochs: 0` + patience: `sweep final` trains the best trial's best epoch (2), never stopping
    early on the test folds; a file of epochs 0 needs --epochs; final() itself refuses patience. With an EMA,
    the test scores are the average's, the weights its checkpoint hands to predict and export."""
    from sweep.cli import main
    from sweep.config.resolve import load
    from sweep.results import final as final_module
    from sweep.results.final import final
    from sweep.run.launch import create_or_resume
    from sweep.storage import open_storage, resolve_storage

    config = copy.deepcopy(TINY)
    config["train"].update(epochs=0, patience=1, ema=0.5)
    config["study"]["name"] = "patient"
    config["search_space"] = {"train.lr": {"type": "float", "low": 1.0e-3, "high": 3.0e-2, "log": True}}
    (home / "patient.yaml").write_text(yaml.safe_dump(config))
    url = resolve_storage("patient")
    create_or_resume(load(home / "patient.yaml"), open_storage(url), url)
    study = optuna.load_study(study_name="patient", storage=url)
    lr = optuna.distributions.FloatDistribution(1.0e-3, 3.0e-2, log=True)
    study.add_trial(optuna.trial.create_trial(params={"train.lr": 0.01}, distributions={"train.lr": lr}, value=0.5,
                                              user_attrs={"best_epoch": 2, "stopped": "patience"}))
    seen = []  # the debug executor runs the final run in this process
    real = final_module.confusion
    monkeypatch.setattr(final_module, "confusion", lambda model, *args: seen.append(
        {k: v.clone() for k, v in model.state_dict().items()}) or real(model, *args))
    assert main(["final", "patient", "--executor", "debug"]) == 0
    run = home / "studies" / "patient" / "final" / "seed-0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and [r["epoch"] for r in metrics["history"]] == [1, 2]
    trained = load(run / "config.yaml")["train"]
    assert trained["patience"] is None and trained["epochs"] == 2
    (scored,) = seen  # the weights the test folds were scored with: the average, which the checkpoint holds
    assert torch.equal(scored["head.1.weight"], weights(run)["head.1.weight"])
    assert not torch.equal(scored["head.1.weight"], weights(run, "trained_model")["head.1.weight"])

    best = home / "best.yaml"
    best.write_text(yaml.safe_dump({**config, "search_space": {}, "study": {"name": "patient-best"}}))
    assert main(["final", str(best), "--executor", "debug"]) == 2
    assert "--epochs" in capsys.readouterr().err
    assert main(["final", str(best), "--epochs", "1", "--executor", "debug"]) == 0
    with pytest.raises(ConfigError, match="train.patience"):
        final(resolve(dict(config, search_space={}), "x", [("train.epochs", 3)]), "patient")


# bad values ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "key", "accepted"),
    [
        ({"train": {"epochs": 0}}, "train.epochs", "0 with train.patience set"),
        ({"train": {"epochs": 0, "patience": 2, "scheduler": "cosine"}}, "train.scheduler", "none"),
        ({"train": {"epochs": 0, "patience": 2, "scheduler": "onecycle"}}, "train.scheduler", "none"),
        ({"train": {"epochs": -1}}, "train.epochs", ">= 0"),
        ({"train": {"patience": 0}}, "train.patience", ">= 1"),
        ({"train": {"accum_iter": 0}}, "train.accum_iter", ">= 1"),
        ({"train": {"grad_clip_value": 0}}, "train.grad_clip_value", "> 0"),
        ({"train": {"grad_clip_value": -1.0}}, "train.grad_clip_value", ">= 0"),
        ({"train": {"ema": 0}}, "train.ema", "(0, 1)"),
        ({"train": {"ema": 1}}, "train.ema", "(0, 1)"),
        ({"train": {"ema": 1.5}}, "train.ema", "[0.0, 1.0]"),
        ({"augment": {"mix_loss": "focal"}}, "augment.mix_loss", "one of ce, bce"),
        ({"augment": {"mix_loss": "bce"}, "train": {"label_smoothing": 0.1}}, "train.label_smoothing", "0.0"),
    ],
)
def test_bad_values_are_refused_naming_the_key(keys: dict, key: str, accepted: str) -> None:
    config = copy.deepcopy(TINY)
    for section, values in keys.items():
        config.setdefault(section, {}).update(values)
    with pytest.raises(ConfigError) as raised:
        resolve(config, "tiny")
    assert raised.value.key == key and accepted in str(raised.value)
