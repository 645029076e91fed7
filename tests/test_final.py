"""`sweep final`: retrain the best config on train + val, score the test folds once; seeds, --cv, bad input."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY, sweep_cli

from sweep.cli import main
from sweep.config.resolve import load


def _independent_scores(run: Path) -> tuple[float, list[list[int]], int]:
    """The saved checkpoint rebuilt from scratch and run on the test split's centre windows: (accuracy,
    confusion matrix, number of test clips), computed without the trainer's evaluation code."""
    from sweep.data import crop, load_split
    from sweep.data.features import build_features
    from sweep.models import build_model

    config = load(run / "config.yaml")
    clips = load_split(config, "test")
    samples = round(config["data"]["clip_seconds"] * config["data"]["sample_rate"])
    features = build_features(config)
    with torch.no_grad():
        x = features(crop(clips, torch.arange(len(clips)), samples, None))
        model = build_model(config, len(clips.classes), tuple(x.shape[1:]))
        model.load_state_dict(torch.load(run / "checkpoint.pt", weights_only=False)["model"])
        predicted = model.eval()(x).argmax(1)
    n = len(clips.classes)
    matrix = [[0] * n for _ in range(n)]
    for true, guess in zip(clips.labels.tolist(), predicted.tolist()):
        matrix[true][guess] += 1
    return sum(matrix[i][i] for i in range(n)) / len(clips), matrix, len(clips)


def test_final_retrains_the_best_trial_with_seeds_and_scores_the_test_folds(home: Path, tiny_file: Path) -> None:
    assert sweep_cli("launch", str(tiny_file), "--trials", "2", "--executor", "debug", cwd=home).returncode == 0
    import optuna

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{home}/studies/tiny/study.db")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(complete, key=lambda t: (t.value, -t.number))

    run = sweep_cli("final", "tiny", "--seeds", "2", "--executor", "debug", cwd=home)
    assert run.returncode == 0, run.stderr
    final = home / "studies" / "tiny" / "final"
    summary = json.loads((final / "summary.json").read_text())
    assert list(summary["runs"]) == ["seed-0", "seed-1"]
    accuracies = []
    for seed in (0, 1):
        folder = final / f"seed-{seed}"
        assert {"metrics.json", "checkpoint.pt", "config.yaml", "confusion.html", "confusion.png"} <= {
            p.name for p in folder.iterdir()
        }
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["seed"] == seed and metrics["trial"] == best.number and metrics["params"] == best.params
        assert metrics["epochs"] == best.user_attrs["best_epoch"] == len(metrics["history"])
        assert all(set(row) == {"epoch", "train_loss", "lr", "seconds"} for row in metrics["history"])
        config = load(folder / "config.yaml")
        assert config["train"]["seed"] == seed and config["train"]["lr"] == pytest.approx(best.params["train.lr"])
        assert metrics["config"] == str(folder / "config.yaml")

        accuracy, matrix, n_test = _independent_scores(folder)
        assert metrics["accuracy"] == accuracy and metrics["confusion"] == matrix
        assert metrics["test_clips"] == n_test == 8  # fold 5: 2 clips of each of the 4 classes
        assert metrics["classes"] == list(metrics["per_class"]) == ["tone", "tremolo", "chirp_up", "chirp_down"]
        assert [c["support"] for c in metrics["per_class"].values()] == [2, 2, 2, 2]
        assert summary["runs"][f"seed-{seed}"]["accuracy"] == accuracy
        accuracies.append(accuracy)

        page = (folder / "confusion.html").read_text()
        assert "heatmap" in page and "chirp_down" in page and "Plotly" in page
        assert "<script src=" not in page  # plotly.js is inside: the page opens offline
        assert (folder / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _check_predict(final / "seed-0", home)
    mean = sum(accuracies) / 2
    assert summary["accuracy"]["mean"] == pytest.approx(mean)
    assert summary["accuracy"]["std"] == pytest.approx(abs(accuracies[0] - accuracies[1]) / 2**0.5)
    assert "mean ± std (n = 2)" in run.stdout and f"{mean:.4f} ±" in run.stdout and summary["n"] == 2
    n = best.user_attrs["best_epoch"]
    for seed in (0, 1):  # the debug executor's runs print their epochs as they train, in this process
        shown = [line.split("  ")[0] for line in run.stdout.splitlines() if line.startswith(f"seed-{seed}: epoch")]
        assert shown == [f"seed-{seed}: epoch {e}/{n}" for e in range(1, n + 1)]

    # best.yaml as is: its own study name and epochs, no trial params
    assert sweep_cli("best", "tiny", cwd=home).returncode == 0
    again = sweep_cli("final", "studies/tiny/best.yaml", "--epochs", "1", "--executor", "debug", cwd=home)
    assert again.returncode == 0, again.stderr
    metrics = json.loads((home / "studies" / "tiny-best" / "final" / "seed-0" / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["params"] is None
    assert metrics["source"] == str((home / "studies" / "tiny" / "best.yaml").resolve())
    assert metrics["accuracy"] == _independent_scores(home / "studies" / "tiny-best" / "final" / "seed-0")[0]


def _check_predict(run: Path, home: Path) -> None:
    """`sweep predict` on the test clips written as wav files: the same top class the checkpoint gives them."""
    import soundfile

    from sweep.data import crop, load_split
    from sweep.data.features import build_features
    from sweep.models import build_model

    config = load(run / "config.yaml")
    clips = load_split(config, "test")
    files = []
    for i in range(3):
        files.append(home / f"clip{i}.wav")
        soundfile.write(files[-1], clips.waves[i, : int(clips.lengths[i])].numpy(), clips.sample_rate, subtype="FLOAT")
    samples = round(config["data"]["clip_seconds"] * config["data"]["sample_rate"])
    with torch.no_grad():
        x = build_features(config)(crop(clips, torch.arange(3), samples, None))
        model = build_model(config, len(clips.classes), tuple(x.shape[1:]))
        model.load_state_dict(torch.load(run / "checkpoint.pt", weights_only=False)["model"])
        probs = torch.softmax(model.eval()(x), 1)
    out = sweep_cli("predict", str(run), *map(str, files), "--top-k", "2", cwd=home)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0::3] == [str(f) for f in files]
    for i in range(3):
        top = probs[i].argmax().item()
        assert lines[3 * i + 1].split() == [f"{probs[i, top].item():.2%}", clips.classes[top]]
    bad = sweep_cli("predict", str(run), str(home / "missing.wav"), cwd=home)
    assert bad.returncode == 2 and f"cannot read audio file {home / 'missing.wav'}" in bad.stderr
    bad = sweep_cli("predict", str(home / "nowhere"), str(files[0]), cwd=home)
    assert bad.returncode == 2 and f"no checkpoint at {home / 'nowhere'}" in bad.stderr


def test_a_seed_gives_the_same_numbers_alone_or_beside_other_runs(home: Path) -> None:
    """Seed 0 alone and seed 0 among three concurrent local runs: the same thread count (recorded in each run's
    config.yaml), so the same arithmetic: identical losses, test accuracy and confusion matrix. (Width 8, depth 2
    and batches of 32 are large enough for torch to split work between threads: sums then change with the count.)"""
    config = copy.deepcopy(TINY)
    config["data"]["clips_per_class"] = 20
    config["model"].update(width=8, depth=2)
    config["train"].update(epochs=2, batch_size=32)
    config.update(search_space={}, study={"name": "seeded"}, executor={"name": "local", "workers": 1})
    (home / "seeded.yaml").write_text(yaml.safe_dump(config))
    seed_0 = home / "studies" / "seeded" / "final" / "seed-0"

    def seed_0_of(*args: str) -> tuple[dict, dict]:
        run = sweep_cli("final", "seeded.yaml", *args, cwd=home)
        assert run.returncode == 0, run.stdout + run.stderr
        return json.loads((seed_0 / "metrics.json").read_text()), load(seed_0 / "config.yaml")

    alone, alone_config = seed_0_of()
    among, among_config = seed_0_of("--seeds", "3")
    assert [r["train_loss"] for r in among["history"]] == [r["train_loss"] for r in alone["history"]]
    assert (among["accuracy"], among["confusion"]) == (alone["accuracy"], alone["confusion"])
    assert isinstance(alone_config["train"]["threads"], int)
    assert among_config["train"]["threads"] == alone_config["train"]["threads"]


def test_final_shows_each_epoch_once_and_records_what_it_trained_on(home: Path) -> None:
    """Local runs train in other processes: `sweep final` prints each epoch of each run as one line (its
    output is a pipe here, as a log file would be: no redrawn bar), the run's own log has the same lines, one
    run reads `n = 1` without a spread, and metrics.json lists the folds trained on: train and val together."""
    config = copy.deepcopy(TINY)
    config["train"]["epochs"] = 3
    config.update(search_space={}, study={"name": "shown"}, executor={"name": "local", "workers": 1})
    (home / "shown.yaml").write_text(yaml.safe_dump(config))
    run = sweep_cli("final", "shown.yaml", cwd=home)
    assert run.returncode == 0, run.stdout + run.stderr
    epochs = [line for line in run.stdout.splitlines() if line.startswith("seed-0: epoch")]
    assert [line.split("  ")[0] for line in epochs] == ["seed-0: epoch 1/3", "seed-0: epoch 2/3", "seed-0: epoch 3/3"]
    assert "\r" not in run.stdout
    final = home / "studies" / "shown" / "final"
    (log,) = (final / "logs").glob("*/*_log.out")
    assert [line.split("  ")[0] for line in log.read_text().splitlines() if line.startswith("seed-0: epoch")] == [
        line.split("  ")[0] for line in epochs
    ]

    assert "±" not in run.stdout and "n = 1: one run, no spread" in run.stdout
    summary = json.loads((final / "summary.json").read_text())
    assert summary["n"] == 1 and summary["accuracy"]["std"] is None and summary["macro_f1"]["std"] is None
    metrics = json.loads((final / "seed-0" / "metrics.json").read_text())
    assert metrics["folds"] == {"train": [1, 2, 3, 4], "test": [5]}  # the synthetic set's 1-3 / 4 / 5, val trained on


def test_a_fold_divided_between_val_and_test_is_named_so() -> None:
    from sweep.results.final import trained_folds

    config = {"data": {"folds": {"train": [1, 2], "val": [3], "test": [3]}}}
    assert trained_folds(config) == {"train": [1, 2, 3], "test": [3], "divided": [3]}


def test_cross_validation_tests_each_fold_once(home: Path, capsys: pytest.CaptureFixture) -> None:
    config = copy.deepcopy(TINY)
    config["train"]["epochs"] = 1
    config["data"]["n_folds"] = 5
    config.update(search_space={}, executor={"name": "debug"}, study={"name": "cv"})
    (home / "cv.yaml").write_text(yaml.safe_dump(config))

    assert main(["final", "cv.yaml", "--cv"]) == 0
    final = home / "studies" / "cv" / "final"
    summary = json.loads((final / "summary.json").read_text())
    assert list(summary["runs"]) == [f"cv-fold-{k}" for k in range(1, 6)]
    seen = 0
    for k in range(1, 6):
        folder = final / f"cv-fold-{k}"
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["folds"] == {"train": [f for f in range(1, 6) if f != k], "test": [k]}
        folds = yaml.safe_load((folder / "config.yaml").read_text())["data"]["folds"]
        assert folds == {**metrics["folds"], "val": []}
        assert metrics["test_clips"] == 8 == sum(map(sum, metrics["confusion"]))  # 40 clips / 5 folds
        assert (folder / "confusion.png").read_bytes()[:4] == b"\x89PNG"
        seen += metrics["test_clips"]
    assert seen == 40  # every clip is tested exactly once
    assert summary["accuracy"]["mean"] == pytest.approx(sum(r["accuracy"] for r in summary["runs"].values()) / 5)
    assert "cv-fold-5" in capsys.readouterr().out


def test_a_search_never_reads_the_test_folds(home: Path) -> None:
    """Fold 5 (the test fold) holds garbage: the search runs (it checks a test-fold file's size, never its
    contents), only the final run, which reads the test fold, refuses it before anything is trained."""
    from sweep.data.layouts import write_esc50

    root = write_esc50(home / "ESC-50", n_classes=3, clips_per_class=5, sample_rate=8000, clip_seconds=1.0)
    broken = sorted((root / "audio").glob("5-*.wav"))
    assert len(broken) == 3
    for path in broken:
        path.write_bytes(b"this is not a wav file")
    config = copy.deepcopy(TINY)
    config["study"].update(name="esc", n_trials=1)
    config["data"] = {"dataset": "esc50", "root": str(root), "sample_rate": 8000, "clip_seconds": 0.5}
    config["train"]["epochs"] = 1
    (home / "esc.yaml").write_text(yaml.safe_dump(config))

    search = sweep_cli("launch", "esc.yaml", "--executor", "debug", cwd=home)
    assert search.returncode == 0, search.stderr
    run = sweep_cli("final", "esc", "--executor", "local", cwd=home)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "3 of the 15 files of the final runs' folds cannot be read" in run.stderr
    assert all(f"{path}: Error opening it: Format not recognised" in run.stderr for path in broken), run.stderr
    assert not (home / "studies" / "esc" / "final" / "logs").exists()  # nothing submitted
    assert not (home / "studies" / "esc" / "final" / "summary.json").exists()


def test_bad_input_is_refused_and_creates_nothing(home: Path, tiny_file: Path, capsys: pytest.CaptureFixture) -> None:
    def refused(*args: str) -> str:
        assert main(["final", *args]) == 2
        return capsys.readouterr().err

    assert "no study named 'nosuch'" in refused("nosuch")
    assert not (home / "studies" / "nosuch").exists()  # looking never creates a study

    from sweep.run.launch import create_or_resume
    from sweep.storage import open_storage, resolve_storage

    url = resolve_storage("tiny")
    create_or_resume(load(tiny_file), open_storage(url), url)
    assert "has no completed trial yet" in refused("tiny")
    assert "has no completed trial yet" in refused(str(tiny_file))  # a study's own file names the study

    bad = home / "best.yaml"
    bad.write_text(yaml.safe_dump({"study": {"name": "bad"}, "train": {"optimizer": "adam_w"}}))
    message = refused(str(bad))
    assert str(bad) in message and "train.optimizer" in message and "did you mean 'adamw'" in message
    assert "--seeds must be at least 1" in refused("tiny", "--seeds", "0")
    assert "--cv" in refused(str(tiny_file), "--cv", "--seeds", "2")
    assert "--epochs must be at least 1" in refused("tiny", "--epochs", "0")
    assert not (home / "studies" / "tiny" / "final").exists() and not (home / "studies" / "bad").exists()


def test_predict_names_a_missing_or_unreadable_audio_file_in_its_own_terms(home: Path) -> None:
    """predict has no dataset: `data.on_bad_file`, which a dataset load suggests, means nothing to it."""
    config = copy.deepcopy(TINY)
    config.update(search_space={}, study={"name": "one"})
    config["train"]["epochs"] = 1
    (home / "one.yaml").write_text(yaml.safe_dump(config))
    assert sweep_cli("final", "one.yaml", "--executor", "debug", cwd=home).returncode == 0
    run = home / "studies" / "one" / "final" / "seed-0"
    (home / "notes.wav").write_text("this is not audio\n")
    for name, reason in (("missing.wav", "no such file"), ("notes.wav", "")):
        bad = sweep_cli("predict", str(run), str(home / name), cwd=home)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
        assert bad.stderr.startswith(f"sweep: error: cannot read audio file {home / name}: {reason}")
        assert "on_bad_file" not in bad.stderr and "data." not in bad.stderr
    assert "(sweep reads audio files: wav, flac, ogg)" in bad.stderr


def test_final_on_local_workers_leaves_no_literal_job_folder(home: Path, tiny_file: Path) -> None:
    """submitit's local controller makes its folder template `logs/%j` unformatted: the run removes it."""
    assert sweep_cli("launch", str(tiny_file), "--trials", "1", "--executor", "debug", cwd=home).returncode == 0
    run = sweep_cli("final", "tiny", "--executor", "local", cwd=home)
    assert run.returncode == 0, run.stderr
    logs = home / "studies" / "tiny" / "final" / "logs"
    assert logs.is_dir() and not (logs / "%j").exists(), sorted(p.name for p in logs.iterdir())
