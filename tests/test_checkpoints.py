"""Checkpoints are data, never code: every load is weights-only, and a retried trial resumes only from a trial
folder of its own study. The hostile files are real pickles whose `__reduce__` would create a marker file."""

from __future__ import annotations

import builtins
import copy
import itertools
from pathlib import Path

import optuna
import pytest
import torch
from conftest import TINY, sweep_cli
from optuna.trial import TrialState

from sweep.checkpoint import CheckpointError, load_checkpoint
from sweep.config.resolve import resolve
from sweep.config.yamlfile import dump_yaml


class Hostile:
    """Unpickled, it writes `marker`: what anyone who can write a checkpoint could make a worker run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def hostile_checkpoint(path: Path, marker: Path) -> Path:
    """A checkpoint.pt shaped like sweep's, with the hostile object in its history."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {}, "history": [Hostile(marker)], "classes": ["a"]}, path)
    return path


def test_the_hostile_checkpoint_runs_its_code_when_loaded_unsafely(tmp_path: Path) -> None:
    """The other tests' files are real attacks: an unsafe load of one runs it."""
    marker = tmp_path / "ran"
    torch.load(hostile_checkpoint(tmp_path / "checkpoint.pt", marker), weights_only=False)
    assert marker.read_text() == "ran"


SCHEDULERS, OPTIMIZERS = ["cosine", "onecycle", "none"], ["adam", "adamw", "sgd", "rmsprop"]


@pytest.mark.parametrize(("scheduler", "optimizer"), list(itertools.product(SCHEDULERS, OPTIMIZERS)))
def test_every_checkpoint_sweep_writes_loads_as_weights_only(scheduler: str, optimizer: str, tmp_path: Path) -> None:
    from sweep.run.trial import train_trial as train

    raw = copy.deepcopy(TINY)
    raw["train"].update(scheduler=scheduler, optimizer=optimizer, epochs=2, freeze_epochs=1, momentum=0.9)
    train(resolve(raw, "tiny"), tmp_path)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert set(state) == {"model", "optimizer", "scaler", "scheduler", "history", "classes", "model_name"}
    assert (state["scheduler"] is None) == (scheduler == "none") and len(state["history"]) == 2


def test_a_hostile_checkpoint_is_refused_by_name_and_never_runs(tmp_path: Path, tiny_config: dict) -> None:
    from sweep.run.trial import train_trial as train

    marker = tmp_path / "ran"
    path = hostile_checkpoint(tmp_path / "run" / "checkpoint.pt", marker)
    with pytest.raises(CheckpointError, match=rf"{path}: refused: it asks for builtins\.exec .*nothing in it ran"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=rf"{path}: refused"):  # the trainer's resume (trials, `sweep final`)
        train(tiny_config, path.parent)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=rf"{path}: not a readable checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


def test_predict_refuses_a_hostile_checkpoint_with_a_clear_error(home: Path, tiny_config: dict) -> None:
    marker = home / "ran"
    run = home / "run"
    hostile_checkpoint(run / "checkpoint.pt", marker)
    (run / "config.yaml").write_text(dump_yaml(tiny_config))
    (home / "clip.wav").write_bytes(b"")
    out = sweep_cli("predict", str(run), str(home / "clip.wav"), cwd=home)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(f"sweep: error: {run / 'checkpoint.pt'}: refused: it asks for"), out.stderr
    assert "Traceback" not in out.stderr
    assert not marker.exists()


def test_a_retry_resumes_only_from_a_weights_only_checkpoint_in_its_own_study(
    home: Path, tiny_config: dict, capfd: pytest.CaptureFixture
) -> None:
    """Anyone who can write a study's database can point `sweep_resume_from` anywhere: outside the study, at a
    link out of it, at a planted checkpoint inside it. Each is refused and logged, and the trial trains from
    epoch 0; a genuine predecessor's checkpoint is still resumed from."""
    from sweep.run.launch import create_or_resume
    from sweep.run.place import run_context
    from sweep.run.trial import train_trial as train
    from sweep.run.worker import run_worker
    from sweep.search.study import top_up
    from sweep.storage import open_storage, resolve_storage, study_dir

    marker = home / "ran"
    outside = home / "elsewhere"
    hostile_checkpoint(outside / "checkpoint.pt", marker)
    trials = study_dir("tiny") / "trials"
    hostile_checkpoint(trials / "90" / "checkpoint.pt", marker)
    trials.mkdir(parents=True, exist_ok=True)
    (trials / "91").symlink_to(outside, target_is_directory=True)
    genuine = copy.deepcopy(tiny_config)
    genuine["train"]["epochs"] = 2
    train(genuine, trials / "92")  # a predecessor that ran 2 of the 3 epochs

    url = resolve_storage("tiny")
    study = create_or_resume(tiny_config, open_storage(url), url)
    sources = [
        str(outside),
        str(trials / "90"),
        str(trials / "91"),
        str(trials / ".." / ".." / ".." / "elsewhere"),
        str(trials / "92"),
    ]
    for source in sources:
        study.enqueue_trial({"train.lr": 3.0e-3, "augment.strength": 0.0}, user_attrs={"sweep_resume_from": source})
    assert top_up(study, len(sources)) == len(sources)
    report = run_worker(tiny_config, url, str(study_dir("tiny")), 0, run_context(1))

    assert set(report.trials.values()) == {"complete"}
    assert not marker.exists()
    err = capfd.readouterr().err
    by_source = {t.user_attrs["sweep_resume_from"]: t for t in study.get_trials()}
    for source in sources[:4]:
        t = by_source[source]
        refused = t.user_attrs["sweep_resume_refused"]
        assert f"trial {t.number}: not resuming, starting from epoch 0: {refused}" in err
        assert t.state == TrialState.COMPLETE and len(t.intermediate_values) == 3
    assert "is not a trial folder of this study" in by_source[str(outside)].user_attrs["sweep_resume_refused"]
    assert "is not a trial folder" in by_source[str(trials / "91")].user_attrs["sweep_resume_refused"]
    assert "refused: it asks for" in by_source[str(trials / "90")].user_attrs["sweep_resume_refused"]
    resumed = by_source[str(trials / "92")]
    assert "sweep_resume_refused" not in resumed.user_attrs and resumed.state == TrialState.COMPLETE
    history = load_checkpoint(Path(resumed.user_attrs["trial_dir"]) / "checkpoint.pt")["history"]
    assert history[:2] == load_checkpoint(trials / "92" / "checkpoint.pt")["history"]  # copied, not retrained
    assert isinstance(optuna.load_study(study_name="tiny", storage=url).best_value, float)
