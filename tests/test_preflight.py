"""What `sweep launch` refuses before it stores anything: bad files, a device that is not there, a SLURM profile
the cluster rejects, missing weights; and a launch whose every trial failed is not a success.

Real files in the datasets' official layouts, real `python -m sweep launch` subprocesses, the real SLURM of
cluster/ for the profile checks.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import soundfile
import torch
import yaml
from conftest import TINY, cluster_of, sweep_cli, undecodable

from sweep.data.layouts import write_esc50, write_folder

AUDIO = {"sample_rate": 8000, "clip_seconds": 0.5}


def study_file(home: Path, data: dict, name: str = "pre", **sections: dict) -> Path:
    """TINY on the given dataset (and `sections` in place of its own): one epoch per trial in the launcher's own
    process (debug executor)."""
    spec = copy.deepcopy(TINY)
    spec["study"]["name"] = name
    spec["data"] = {**AUDIO, **data}
    spec["train"]["epochs"] = 1
    spec["executor"] = {"name": "debug"}
    spec.update(sections)
    path = home / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def esc50(home: Path) -> tuple[Path, dict[int, list[Path]]]:
    """ESC-50's layout, 4 classes × 10 clips; its wav files by fold (train 1–3, val 4, test 5)."""
    root = write_esc50(home / "ESC-50", n_classes=4, clips_per_class=10, sample_rate=8000, clip_seconds=0.5)
    by_fold: dict[int, list[Path]] = {}
    for path in sorted((root / "audio").glob("*.wav")):
        by_fold.setdefault(int(path.name.split("-")[0]), []).append(path)
    return root, by_fold


def test_unreadable_search_files_are_refused_by_path_and_the_test_fold_is_never_opened(home: Path) -> None:
    root, files = esc50(home)
    empty, text = files[1][0], files[4][0]  # a train-fold and a val-fold file
    empty.write_bytes(b"")
    text.write_text("this is not audio\n")
    unopened = files[5][0]
    unopened.write_text("not audio either, but in the test fold: a search checks its size, never its contents\n")
    run = sweep_cli("launch", str(study_file(home, {"dataset": "esc50", "root": str(root)})), cwd=home)
    assert run.returncode == 2, run.stderr
    assert f"1 of the 24 files of split train cannot be read: {empty}: it is empty (0 bytes)" in run.stderr
    assert f"1 of the 8 files of split val cannot be read: {text}: Error opening it: Format not" in run.stderr
    assert "set data.on_bad_file: skip" in run.stderr
    assert str(unopened) not in run.stderr
    assert not (home / "studies" / "pre").exists()  # nothing stored


def test_a_missing_or_empty_test_fold_file_is_refused_without_opening_it(home: Path) -> None:
    root, files = esc50(home)
    files[5][0].unlink()
    files[5][1].write_bytes(b"")
    run = sweep_cli("launch", str(study_file(home, {"dataset": "esc50", "root": str(root)})), cwd=home)
    assert run.returncode == 2, run.stderr
    assert (
        "2 of the 8 files of split test (checked for presence and size only: a search never opens them) cannot be "
        f"read: {files[5][0]}: no such file; {files[5][1]}: it is empty (0 bytes)"
    ) in run.stderr
    assert not (home / "studies" / "pre").exists()


def test_many_bad_files_are_named_at_once_up_to_a_bound(home: Path) -> None:
    root, files = esc50(home)
    for path in files[1] + files[2]:  # 16 train files
        path.write_bytes(b"RIFF")
    run = sweep_cli("launch", str(study_file(home, {"dataset": "esc50", "root": str(root)})), cwd=home)
    assert run.returncode == 2, run.stderr
    assert "16 of the 24 files of split train cannot be read" in run.stderr
    assert sum(str(p) in run.stderr for p in files[1] + files[2]) == 10
    assert "; and 6 more" in run.stderr


def test_bad_files_under_on_bad_file_skip_are_a_warning_and_the_search_runs(home: Path) -> None:
    root, files = esc50(home)
    files[1][0].write_bytes(b"")
    data = {"dataset": "esc50", "root": str(root), "on_bad_file": "skip"}
    run = sweep_cli("launch", str(study_file(home, data)), "--trials", "1", cwd=home)
    assert run.returncode == 0, run.stderr
    assert (
        f"sweep: warning: 1 of the 24 files of split train will be left out (data.on_bad_file: skip): {files[1][0]}: "
        "it is empty (0 bytes)"
    ) in run.stderr
    # every file of a split bad leaves the reader nothing: refused even under skip
    for path in files[4]:
        path.write_bytes(b"")
    run = sweep_cli("launch", str(study_file(home, data, name="pre2")), cwd=home)
    assert run.returncode == 2, run.stderr
    assert "8 of the 8 files of split val cannot be read" in run.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: train.device: cuda is fine here")
@pytest.mark.parametrize("executor", ["debug", "local"])
def test_cuda_asked_for_where_the_workers_run_on_this_machine_without_it_is_refused(
    home: Path, executor: str
) -> None:
    path = study_file(home, {"dataset": "synthetic", "n_classes": 4, "clips_per_class": 10})
    run = sweep_cli("launch", str(path), "--executor", executor, "--set", "train.device=cuda", cwd=home)
    assert run.returncode == 2, run.stderr
    assert "train.device is cuda, but this machine has no CUDA device" in run.stderr
    assert f"{executor} workers run here: set train.device: auto" in run.stderr
    assert not (home / "studies" / "pre").exists()


def test_a_launch_whose_every_trial_failed_exits_non_zero_with_the_reason(home: Path) -> None:
    """Headers read fine, the audio does not decode: nothing a header check can see, so the trials fail; two
    failed trials (fewer than a worker's three-in-a-row stop) used to make a launch that exited 0."""
    root = write_folder(home / "clips", clips_per_class=5, sample_rate=8000, seconds=0.5)
    for path in root.rglob("*.wav"):
        undecodable(path)
        assert soundfile.info(str(path)).frames > 0
    run = sweep_cli("launch", str(study_file(home, {"dataset": "folder", "root": str(root)})), "--trials", "2",
                    cwd=home)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "every trial of this launch failed (2):" in run.stderr
    assert "trials 0, 1: " in run.stderr and "cannot read audio file" in run.stderr
    study = optuna.load_study(study_name="pre", storage=f"sqlite:///{home}/studies/pre/study.db")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2


# ---- SLURM: the profile against the cluster -----------------------------------------------------------------


def profile(home: Path, partition: str, **keys: object) -> Path:
    path = home / "site.yaml"
    path.write_text(yaml.safe_dump({"partition": partition, "cpus_per_task": 1, "time_min": 10, **keys}))
    return path


@pytest.fixture(scope="module")
def three_nodes(_slurm_partition: str) -> Iterator[str]:
    """The multi-node test cluster (node1..node3, gpu:2 each, partitions debug and urgent, QOS enforced), once for
    the module's profile checks, held by this process until the last of them is done."""
    with cluster_of(3):
        yield _slurm_partition


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"partition": "gpu"}, "`partition`: sbatch refused: invalid partition specified: gpu (sinfo lists the "
                               "partitions: debug*, urgent)"),
        ({"gres": "tpu:1"}, "`gres`: sbatch refused: Invalid generic resource (gres) specification (the nodes' "
                            "GRES, by sinfo: gpu:2)"),
        ({"gres": "gpu:3"}, "`gres`: sbatch refused: Requested node configuration is not available (the nodes' "
                            "GRES, by sinfo: gpu:2)"),
        ({"gpus_per_node": 3}, "`gpus_per_node`: sbatch refused: Requested node configuration is not available "
                               "(the nodes' GRES, by sinfo: gpu:2)"),
        ({"qos": "nope"}, "`qos`: sbatch refused: Invalid qos specification (sacctmgr lists the QOS: normal"),
        ({"cpus_per_task": 4096}, "`cpus_per_task`: sbatch refused: Requested node configuration is not available "
                                  "(the largest node: "),
    ],
)
def test_a_profile_the_cluster_refuses_stops_the_launch_before_a_study_is_created_or_changed(
    three_nodes: str, home: Path, keys: dict, message: str
) -> None:
    path = study_file(home, {"dataset": "synthetic", "n_classes": 4, "clips_per_class": 10})
    first = sweep_cli("launch", str(path), "--trials", "1", cwd=home)  # a study with one trial, run here
    assert first.returncode == 0, first.stderr
    logs = sorted((home / "studies" / "pre" / "logs").iterdir())
    site = profile(home, **{"partition": three_nodes, **keys})
    for args in (["--trials", "3"], ["--study", "fresh"]):  # topping up a study, creating one
        run = sweep_cli("launch", str(path), *args, "--executor", "slurm", "--cluster", str(site), cwd=home)
        assert run.returncode == 2, run.stdout + run.stderr
        assert run.stderr.startswith(f"sweep: error: {site}: {message}"), run.stderr
        assert "Traceback" not in run.stderr
        assert len(run.stderr.splitlines()) == 1
    study = optuna.load_study(study_name="pre", storage=f"sqlite:///{home}/studies/pre/study.db")
    assert len(study.trials) == 1  # not topped up to 3
    assert sorted((home / "studies" / "pre" / "logs").iterdir()) == logs  # nothing submitted
    assert not (home / "studies" / "fresh").exists()  # nor created


def test_missing_weights_stop_a_slurm_launch_unless_the_profile_moves_the_caches(
    slurm_cluster: str, home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The jobs inherit this environment, so they read the caches checked here: missing weights stop the launch
    (they used to warn, and every trial failed on the nodes). A profile whose `setup` sets the jobs' own cache
    is the documented way out: then this machine cannot tell, and it warns."""
    path = study_file(home, {"dataset": "synthetic", "n_classes": 4, "clips_per_class": 10}, name="vit",
                      model={"name": "vit", "pretrained": True})
    env = {"HF_HOME": str(home / "hf")}
    site = profile(home, slurm_cluster)
    run = sweep_cli("launch", str(path), "--executor", "slurm", "--cluster", str(site), cwd=home, env=env)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "pretrained weights 'google/vit-base-patch16-224-in21k' are not in the Hugging Face cache" in run.stderr
    assert not (home / "studies" / "vit").exists()

    from sweep.config.resolve import load
    from sweep.run.preflight import preflight
    from sweep.run.profile import load_profile

    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    moved = profile(home, slurm_cluster, setup=["export HF_HOME=/node/scratch/hf"])
    config = load(path, [("executor.name", "slurm"), ("executor.cluster", str(moved))])
    preflight(config, load_profile(moved))  # a warning, not a refusal
    warning = capsys.readouterr().err
    assert warning.startswith("sweep: warning: pretrained weights 'google/vit-base-patch16-224-in21k' are not in")
    assert warning.rstrip().endswith("(checked on this machine; the SLURM jobs may see otherwise)")

