"""`sweep launch` / `status` / `best` end to end: real SQLite, real submitit local worker processes."""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import sweep_cli
from optuna.trial import TrialState

from sweep.config.resolve import load
from sweep.search.study import RETRIED, VOID


def _study(home: Path, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{home}/studies/{name}/study.db")


def test_launch_resume_status_best_round_trip(home: Path, tiny_file: Path) -> None:
    run = sweep_cli("launch", str(tiny_file), "--trials", "5", cwd=home)
    assert run.returncode == 0, run.stderr
    assert "5/5 finished" in run.stdout and "best: trial" in run.stdout

    study = _study(home)
    trials = study.get_trials()
    assert len(trials) == 5  # the budget is exact: no trial beyond it was created
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert {t.user_attrs["worker"] for t in trials} <= {0, 1}
    logs = home / "studies" / "tiny" / "logs"
    assert not (logs / "%j").exists(), sorted(p.name for p in logs.iterdir())  # submitit's unformatted template
    for t in trials:  # the record of each trial: resolved config, seed, versions, commit, on disk and in attrs
        folder = home / "studies" / "tiny" / "trials" / str(t.number)
        saved = yaml.safe_load((folder / "config.yaml").read_text())
        assert saved["train"]["lr"] == pytest.approx(t.params["train.lr"])
        assert saved["augment"]["strength"] == pytest.approx(t.params["augment.strength"])
        assert saved["search_space"] == {}
        assert saved["train"]["threads"] == 1  # the conftest's executor.cpus_per_worker, set once for the study
        assert t.user_attrs["config"] == saved
        run_info = json.loads((folder / "run.json").read_text())
        assert run_info["seed"] == t.user_attrs["seed"] == 0
        assert run_info["versions"]["torch"] and run_info["versions"]["optuna"]
        assert "git_commit" in run_info
        assert len(json.loads((folder / "metrics.json").read_text())["epochs"]) == len(t.intermediate_values)
    values = {t.number: t.value for t in trials}

    again = sweep_cli("launch", str(tiny_file), "--trials", "7", cwd=home)
    assert again.returncode == 0, again.stderr
    assert "2 to run" in again.stdout
    trials = _study(home).get_trials()
    assert len(trials) == 7 and all(t.state.is_finished() for t in trials)
    assert {t.number: t.value for t in trials if t.number < 5} == values  # nothing stored was touched

    status = sweep_cli("status", "tiny", cwd=home)
    assert status.returncode == 0, status.stderr
    top = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert f"best: trial {top.number}, val_acc={top.value:.4f}" in status.stdout
    assert "train.lr:" in status.stdout

    best = sweep_cli("best", "tiny", cwd=home)
    assert best.returncode == 0, best.stderr
    best_file = home / "studies" / "tiny" / "best.yaml"
    config = load(best_file)
    assert config["search_space"] == {}
    assert config["train"]["lr"] == pytest.approx(top.params["train.lr"])
    assert config["study"]["name"] == "tiny-best" and config["study"]["n_trials"] == 1

    # best.yaml runs as is, and reproduces the best trial's value (same config, same seed, same threads)
    rerun = sweep_cli("launch", str(best_file), "--executor", "debug", cwd=home)
    assert rerun.returncode == 0, rerun.stderr
    (final,) = _study(home, "tiny-best").get_trials()
    assert final.state == TrialState.COMPLETE
    assert final.value == pytest.approx(top.value, abs=1e-9)


def test_local_workers_each_take_one_of_the_launchers_gpus(home: Path, tiny_file: Path) -> None:
    """submitit's local executor sets CUDA_VISIBLE_DEVICES to the GPUs it was asked for (none unless told), which
    hid every GPU from local workers: they get the launcher's instead, worker k the k-th mod G, recorded per trial.
    (No GPU here: the names only travel, which is what this checks; benchmarks/probes/gpu_checks.py trains on one.)"""
    run = sweep_cli("launch", str(tiny_file), "--trials", "4", cwd=home, env={"CUDA_VISIBLE_DEVICES": "3,GPU-5"})
    assert run.returncode == 0, run.stderr
    trials = _study(home).get_trials()
    pairs = {(t.user_attrs["worker"], t.user_attrs["gpu"]) for t in trials}  # worker 1 may start after the rest
    assert (0, "3") in pairs and pairs <= {(0, "3"), (1, "GPU-5")}, pairs


def test_resume_with_a_changed_config_is_refused(home: Path, tiny_file: Path) -> None:
    assert sweep_cli("launch", str(tiny_file), "--trials", "1", "--executor", "debug", cwd=home).returncode == 0
    run = sweep_cli("launch", str(tiny_file), "--trials", "2", "--set", "train.epochs=5", cwd=home)
    assert run.returncode == 2
    assert "train.epochs: 3 → 5" in run.stderr and "--study NAME" in run.stderr
    assert len(_study(home).get_trials()) == 1


def test_a_study_stored_with_an_old_default_resumes_with_it(
    home: Path, tiny_config: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    """A study created when pruner.n_warmup_steps defaulted to null resumes with null from a config that sets
    nothing (today's default, 1), where the check would otherwise report a changed setting; the workers get
    the stored value. Any other value is still a change, and refused."""
    import copy

    from sweep.run.launch import create_or_resume
    from sweep.schema import ConfigError
    from sweep.search.study import stored_config
    from sweep.storage import open_storage, resolve_storage

    url = resolve_storage("tiny")
    created = copy.deepcopy(tiny_config)
    created["pruner"]["n_warmup_steps"] = None  # what a study created before 2026-11-23 stored
    create_or_resume(created, open_storage(url), url)
    config = copy.deepcopy(tiny_config)
    config["pruner"]["n_warmup_steps"] = 1
    study = create_or_resume(config, open_storage(url), url)
    assert config["pruner"]["n_warmup_steps"] is None  # what launch hands its workers
    assert stored_config(study)["pruner"]["n_warmup_steps"] is None
    assert "created when pruner.n_warmup_steps defaulted to None: it resumes with None" in capsys.readouterr().out
    config["pruner"]["n_warmup_steps"] = 2
    with pytest.raises(ConfigError, match="pruner.n_warmup_steps: None → 2"):
        create_or_resume(config, open_storage(url), url)


def test_a_study_keeps_the_thread_count_it_was_created_with(
    home: Path, tiny_config: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    """A null train.threads is set once, when the study is created, from what a worker is given; a resume with
    another executor keeps it (its trials then compute alike), an explicit other value is a change, and a study
    stored before the key existed resumes with the value set now."""
    import copy

    from sweep.run.launch import create_or_resume
    from sweep.schema import ConfigError
    from sweep.search.study import CONFIG_ATTR, stored_config
    from sweep.storage import open_storage, resolve_storage

    url = resolve_storage("tiny")
    created = copy.deepcopy(tiny_config)
    created["executor"]["cpus_per_worker"] = 3
    study = create_or_resume(created, open_storage(url), url)
    assert created["train"]["threads"] == stored_config(study)["train"]["threads"] == 3
    resumed = copy.deepcopy(tiny_config)
    resumed["executor"].update(cpus_per_worker=1, workers=4)
    create_or_resume(resumed, open_storage(url), url)
    assert resumed["train"]["threads"] == 3  # what launch hands its workers
    explicit = copy.deepcopy(resumed)
    explicit["train"]["threads"] = 2
    with pytest.raises(ConfigError, match="train.threads: 3 → 2"):
        create_or_resume(explicit, open_storage(url), url)

    old = stored_config(study)
    del old["train"]["threads"]
    study.set_user_attr(CONFIG_ATTR, old)
    capsys.readouterr()
    again = copy.deepcopy(tiny_config)
    create_or_resume(again, open_storage(url), url)
    assert again["train"]["threads"] == 1 == stored_config(study)["train"]["threads"]
    assert "created before train.threads existed: it resumes with 1" in capsys.readouterr().out


def test_default_threads_follow_what_one_worker_is_given_and_too_many_are_named(tiny_config: dict) -> None:
    import copy
    import os

    from sweep.run.place import default_threads, shared_cores

    config = copy.deepcopy(tiny_config)
    config["executor"].update(name="slurm", cpus_per_worker=None, workers=64)
    assert default_threads(config, {"cpus_per_task": 6}) == 6  # SLURM's allocation, not the worker count
    config["executor"].update(name="local", cpus_per_worker=3)
    assert default_threads(config) == 3
    config["executor"].update(cpus_per_worker=None, workers=1)
    assert default_threads(config) == (os.cpu_count() or 1)
    config["train"]["threads"] = os.cpu_count() or 1
    assert shared_cores(config, 1) is None
    assert "2 runs × train.threads" in shared_cores(config, 2) and "same numbers" in shared_cores(config, 2)
    config["executor"]["name"] = "slurm"
    assert shared_cores(config, 2) is None  # each SLURM task has its own allocation


def test_nan_trial_fails_with_reason_and_worker_goes_on(home: Path, tiny_config: dict) -> None:
    from sweep.run.launch import create_or_resume
    from sweep.run.place import run_context
    from sweep.run.worker import run_worker
    from sweep.search.study import top_up
    from sweep.storage import open_storage, resolve_storage, study_dir

    tiny_config["search_space"] = {"train.lr": [1.0e-3, 1.0e30]}
    tiny_config["train"]["optimizer"] = "sgd"
    url = resolve_storage("tiny")
    study = create_or_resume(tiny_config, open_storage(url), url)
    study.enqueue_trial({"train.lr": 1.0e30})
    study.enqueue_trial({"train.lr": 1.0e-3})
    assert top_up(study, 2) == 2
    report = run_worker(tiny_config, url, str(study_dir("tiny")), 0, run_context(1))
    assert report.trials == {0: "nan", 1: "complete"}
    first, second = study.get_trials()
    assert first.state == TrialState.FAIL and "loss became" in first.user_attrs["fail_reason"]
    assert second.state == TrialState.COMPLETE
    status = sweep_cli("status", "tiny", cwd=home)
    assert "trial 0 failed: training loss became" in status.stdout


def test_status_and_best_on_unknown_or_empty_study(home: Path, tiny_file: Path) -> None:
    missing = sweep_cli("best", "nosuch", cwd=home)
    assert missing.returncode == 2 and "no study named 'nosuch'" in missing.stderr
    assert not (home / "studies" / "nosuch").exists()  # looking never creates a study
    from sweep.run.launch import create_or_resume
    from sweep.storage import open_storage, resolve_storage

    url = resolve_storage("tiny")
    create_or_resume(load(tiny_file), open_storage(url), url)
    empty = sweep_cli("best", str(tiny_file), cwd=home)
    assert empty.returncode == 2 and "has no completed trial yet" in empty.stderr
    assert not (home / "studies" / "tiny" / "best.yaml").exists()


def _launch_until_a_trial_runs(home: Path, tiny_file: Path, trials: int = 6):
    """A real `sweep launch` in its own session (its process group is what Ctrl-C reaches), once a trial of it
    is RUNNING."""
    return _launch_until_a_trial_runs_in(home / "studies", home, tiny_file, trials)


def _launch_until_a_trial_runs_in(studies: Path, home: Path, tiny_file: Path, trials: int = 6):
    import subprocess
    import sys
    import time

    import sqlalchemy

    from sweep.storage import open_storage

    launcher = subprocess.Popen([sys.executable, "-m", "sweep", "launch", str(tiny_file), "--trials", str(trials)],
                                cwd=home, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    deadline, seen, storage = time.time() + 120, [], None
    db = studies / "tiny" / "study.db"
    while time.time() < deadline:
        try:  # through sweep's storage, once the launcher made the file: plain Optuna would create it itself
            if storage is None:
                if not db.exists():
                    raise KeyError("no study.db yet")
                storage = open_storage(f"sqlite:///{db}")
            states = [t.state.name for t in optuna.load_study(study_name="tiny", storage=storage).get_trials()]
            seen.append(f"{time.time():.1f} {states}")
            if "RUNNING" in states:
                break
        except (KeyError, sqlalchemy.exc.SQLAlchemyError) as exc:  # the launcher is still creating the study
            seen.append(f"{time.time():.1f} {type(exc).__name__}: {str(exc)[:200]}")
        time.sleep(0.2)
    assert seen and "RUNNING" in seen[-1], "no RUNNING trial seen; the polls saw:\n" + "\n".join(seen[-40:])
    return launcher


def _processes_under(folder: Path) -> list[str]:
    """The live processes whose command line names `folder` (submitit's controllers and workers name their
    logs folder), zombies aside."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(folder) in cmdline and state != "Z":
            found.append(f"{proc.name}: {cmdline}")
    return found


def _stopped_cleanly_and_resumes(home: Path, tiny_file: Path, out: str) -> None:
    assert "interrupted" in out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out  # one clean line, not submitit's
    assert not _processes_under(home / "studies"), _processes_under(home / "studies")
    trials = _study(home).get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    voided = [t for t in trials if "sweep_void" in t.user_attrs]
    assert voided and all(t.state == TrialState.FAIL for t in voided)

    resumed = sweep_cli("launch", str(tiny_file), "--trials", "6", cwd=home)
    assert resumed.returncode == 0, resumed.stderr
    trials = _study(home).get_trials()
    counted = [t for t in trials if "sweep_void" not in t.user_attrs]
    assert len(counted) == 6 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in counted)
    assert len(trials) == 6 + len(voided)
    assert f"{len(voided)} voided" in sweep_cli("status", "tiny", cwd=home).stdout


def test_interrupted_launch_voids_running_trials_and_resumes(home: Path, tiny_file: Path) -> None:
    import os
    import signal

    launcher = _launch_until_a_trial_runs(home, tiny_file)
    os.killpg(launcher.pid, signal.SIGINT)  # Ctrl-C: the whole foreground process group
    out, _ = launcher.communicate(timeout=120)
    assert launcher.returncode == 130, out
    assert "interrupted (SIGINT)" in out
    _stopped_cleanly_and_resumes(home, tiny_file, out)


def test_a_launcher_that_fails_stops_its_local_workers(home: Path, tiny_file: Path) -> None:
    """A launcher whose output was closed under it dies of BrokenPipeError at its next progress line: its
    local workers stop with it, handing back their trials, instead of running on unattended."""
    launcher = _launch_until_a_trial_runs(home, tiny_file)
    launcher.stdout.close()  # whoever read the launcher's output went away
    assert launcher.wait(timeout=240) != 0
    assert not _processes_under(home / "studies"), _processes_under(home / "studies")
    assert not [t for t in _study(home).get_trials() if t.state == TrialState.RUNNING]


def test_sigterm_stops_the_launch_like_ctrl_c(home: Path, tiny_file: Path) -> None:
    """`kill`, `timeout` and SLURM send SIGTERM to the launcher alone: it stops its workers and hands back."""
    import os
    import signal

    launcher = _launch_until_a_trial_runs(home, tiny_file)
    os.kill(launcher.pid, signal.SIGTERM)
    out, _ = launcher.communicate(timeout=120)
    assert launcher.returncode == 143, out
    assert "interrupted (SIGTERM)" in out
    _stopped_cleanly_and_resumes(home, tiny_file, out)


def test_sighup_stops_the_launch_like_ctrl_c(home: Path, tiny_file: Path) -> None:
    """A closed terminal sends SIGHUP to the launcher's whole process group, workers included: they hand their
    trials back instead of dying with them RUNNING, and the launcher stops as on Ctrl-C (exit 129)."""
    import os
    import signal

    launcher = _launch_until_a_trial_runs(home, tiny_file)
    os.killpg(launcher.pid, signal.SIGHUP)
    out, _ = launcher.communicate(timeout=120)
    assert launcher.returncode == 129, out
    assert "Traceback" not in out
    _stopped_cleanly_and_resumes(home, tiny_file, "interrupted")  # its output went nowhere: the terminal is gone
    assert any("interrupted" in (t.user_attrs.get("sweep_void") or "") for t in _study(home).get_trials())


def test_detached_launch_returns_and_the_workers_finish_on_their_own(home: Path, tiny_file: Path) -> None:
    import time

    run = sweep_cli("launch", str(tiny_file), "--trials", "4", "--detach", cwd=home)
    assert run.returncode == 0, run.stderr
    assert "run on their own" in run.stdout and "sweep cancel tiny" in run.stdout
    deadline = time.time() + 180
    while time.time() < deadline:
        trials = _study(home).get_trials()
        if len(trials) == 4 and all(t.state.is_finished() for t in trials):
            break
        time.sleep(0.5)
    assert [t.state.is_finished() for t in _study(home).get_trials()] == [True] * 4
    jobs = _study(home).user_attrs["sweep_jobs"]
    assert len(jobs) == 2 and {j["executor"] for j in jobs} == {"local"}
    refused = sweep_cli("launch", str(tiny_file), "--detach", "--executor", "debug", cwd=home)
    assert refused.returncode == 2 and "--detach needs workers that outlive this process" in refused.stderr


def test_a_worker_whose_trials_keep_failing_is_reported_and_the_launch_fails(home: Path) -> None:
    """Three trials in a row fail (their audio is unreadable): the local worker stops, launch exits 1 naming it."""
    from conftest import TINY, undecodable

    from sweep.data.layouts import write_esc50

    root = write_esc50(home / "ESC-50", n_classes=3, clips_per_class=5, sample_rate=8000, clip_seconds=0.5)
    for wav in (root / "audio").glob("1-*.wav"):
        undecodable(wav)  # a train fold, sound headers: the checks before launch cannot see it
    config = dict(TINY, data={"dataset": "esc50", "root": str(root), "sample_rate": 8000, "clip_seconds": 0.5})
    (home / "tiny.yaml").write_text(yaml.safe_dump(config))
    run = sweep_cli("launch", "tiny.yaml", "--workers", "1", "--trials", "4", cwd=home)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "worker 0 (job " in run.stderr and "failed: RuntimeError: worker 0: 3 trials in a row failed" in run.stderr
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{home / 'studies' / 'tiny' / 'study.db'}")
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 3 and all("cannot read audio file" in t.user_attrs["fail_reason"] for t in failed)


def test_a_trial_popped_by_a_worker_that_stopped_before_recording_anything_is_handed_back(home: Path) -> None:
    """Ctrl-C can land between a worker's pop and its first attribute write: the launcher still hands it back."""
    import datetime

    from sweep.run.launch import _hand_back_running
    from sweep.search.study import VOID, pop_trial, top_up
    from sweep.storage import open_storage

    study = optuna.create_study(study_name="orphan", storage=open_storage(f"sqlite:///{home / 'o.db'}"))
    top_up(study, 3)
    earlier = pop_trial(study)  # another launch's running trial, from before this one began
    earlier.set_user_attr("launch", "other")
    since = datetime.datetime.now()
    orphan = pop_trial(study)  # popped by this launch's worker, which stopped before writing anything
    _hand_back_running(study, "this", since, max_retries=2)
    trials = {t.number: t for t in study.get_trials()}
    assert trials[earlier.number].state == TrialState.RUNNING  # not this launch's
    assert trials[orphan.number].state == TrialState.FAIL and VOID in trials[orphan.number].user_attrs
    assert len([t for t in trials.values() if t.state == TrialState.WAITING]) == 2  # re-enqueued + the third


class _EndsAfter:
    """A job as `watch` sees one (`done()`), ending after `polls` polls: what it watches here is the study."""

    def __init__(self, polls: int) -> None:
        self.polls = polls

    def done(self, force_check: bool = False) -> bool:
        self.polls -= 1
        return self.polls < 0


def test_progress_in_a_log_file_is_written_on_change_not_on_every_poll(home: Path, capsys) -> None:
    from sweep.run.waiting import watch
    from sweep.search.study import pop_trial, top_up
    from sweep.storage import open_storage

    study = optuna.create_study(study_name="quiet", storage=open_storage(f"sqlite:///{home / 'q.db'}"))
    top_up(study, 2)
    watch(study, [_EndsAfter(2)], every=1.0)  # three polls a second apart (the clock moves), nothing else: one line
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "0/2 finished" in lines[0], lines

    class _Claims(_EndsAfter):  # the study changes at the third poll
        def done(self, force_check: bool = False) -> bool:
            if self.polls == 3:
                pop_trial(study)
            return super().done(force_check)

    watch(study, [_Claims(5)], every=0)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ", 1)[1] for line in lines] == [
        "0/2 finished (0 complete, 0 pruned, 0 failed), 0 running",
        "0/2 finished (0 complete, 0 pruned, 0 failed), 1 running",
    ]
    watch(study, [_EndsAfter(2)], every=0, quiet=0)  # nothing changes, but a line is due at every poll
    assert len(capsys.readouterr().out.splitlines()) == 3


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real 24 MiB file system (tmpfs), unmounted afterwards."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_stops_the_launch_cleanly(home: Path, tiny_file: Path, small_disk: Path, monkeypatch) -> None:
    """The study (its folder and its SQLite file) on a disk that fills up during the launch: the launcher
    stops in seconds naming the path, the workers' logs say why, nothing stored is damaged and a launch
    after freeing space finishes the budget exactly."""
    import os
    import signal
    import sqlite3

    monkeypatch.setenv("SWEEP_STUDIES_DIR", str(small_disk))
    launcher = _launch_until_a_trial_runs_in(small_disk, home, tiny_file)
    filler = small_disk / "filler"
    with pytest.raises(OSError, match="No space left"), open(filler, "wb") as f:  # the run may have filled it first
        while True:
            f.write(b"x" * (1 << 16))
            f.flush()
    try:
        out, _ = launcher.communicate(timeout=240)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert launcher.returncode == 1, out
    assert f"the disk holding {small_disk / 'tiny'} is full" in out and "free" in out, out
    logs = "\n".join(p.read_text(errors="replace") for p in (small_disk / "tiny" / "logs").rglob("*_log.*"))
    assert "the disk is full" in logs, logs[-3000:]
    assert not _processes_under(small_disk), _processes_under(small_disk)

    filler.unlink(missing_ok=True)
    db = sqlite3.connect(small_disk / "tiny" / "study.db")
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    db.close()
    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{small_disk}/tiny/study.db").get_trials()
    # The budget, exactly, counting the retries owed: a worker that hands its trial back once the disk is full
    # may be refused the retry's write (whatever filled the disk took the reserve it freed); the next launch
    # stores it.
    assert len(_counted(trials)) + len(_owed_retries(trials)) == 6, [(t.number, t.state, t.user_attrs) for t in trials]
    assert not list(small_disk.rglob(".sweep-reserve"))
    owed = [t for t in trials if t.number in _owed_retries(trials)]
    if owed:  # the next launch writes a lost retry once its void is SETTLE_S old (no job runs): not sooner
        from sweep.run.launch import SETTLE_S

        voided = max(t.datetime_complete for t in owed)
        time.sleep(max(0.0, SETTLE_S + 1 - (datetime.datetime.now() - voided).total_seconds()))

    resumed = sweep_cli("launch", str(tiny_file), "--trials", "6", cwd=home)
    assert resumed.returncode == 0, resumed.stderr
    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{small_disk}/tiny/study.db").get_trials()
    counted = _counted(trials)
    assert len(counted) == 6 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in counted)
    assert not _owed_retries(trials)  # every trial handed back was resumed from its checkpoint by its retry


def _counted(trials: list) -> list:
    return [t for t in trials if VOID not in t.user_attrs]


def _owed_retries(trials: list) -> list[int]:
    """Trials voided for a retry that no trial of the study is the retry of."""
    retried = {t.user_attrs.get("sweep_retry_of") for t in trials}
    return [t.number for t in trials if str(t.user_attrs.get(VOID, "")).endswith(RETRIED) and t.number not in retried]


def test_a_retry_lost_between_its_two_writes_is_restored_by_the_next_launch(home: Path, tiny_file: Path) -> None:
    """`retry` fails the trial, then enqueues its retry: a worker killed between the two (or refused the second by
    a full disk) left the budget a trial short, and that trial's checkpoint unused. The next launch stores the
    retry, which resumes from the checkpoint, and the budget is exact."""
    done = sweep_cli("launch", str(tiny_file), "--trials", "2", cwd=home)
    assert done.returncode == 0, done.stderr
    url = f"sqlite:///{home / 'studies' / 'tiny' / 'study.db'}"
    study = optuna.load_study(study_name="tiny", storage=url)
    lost = study.ask()  # a trial a worker ran, then voided without writing its retry
    study._storage.set_trial_user_attr(lost._trial_id, VOID, "interrupted" + RETRIED)
    study._storage.set_trial_user_attr(lost._trial_id, "sweep_retries", 0)
    study._storage.set_trial_state_values(lost._trial_id, TrialState.FAIL)
    time.sleep(6)  # past the settling time: no job of the study runs, so no one can be writing it now

    again = sweep_cli("launch", str(tiny_file), "--trials", "3", cwd=home)
    assert again.returncode == 0, again.stderr
    assert f"trial {lost.number} was handed back but its retry was never stored" in again.stdout, again.stdout
    trials = optuna.load_study(study_name="tiny", storage=url).get_trials()
    retries = [t for t in trials if t.user_attrs.get("sweep_retry_of") == lost.number]
    assert len(retries) == 1 and retries[0].user_attrs["sweep_retries"] == 1
    assert len(_counted(trials)) == 3 and all(t.state.is_finished() for t in trials)


def test_a_full_disk_under_sqlite_is_not_retried(small_disk: Path) -> None:
    """SQLite's `database or disk is full` (and ENOSPC) is permanent: retried, it hung a launch 10 minutes."""
    from sweep.storage import RetryingRDBStorage, is_disk_full, is_transient

    storage = RetryingRDBStorage(f"sqlite:///{small_disk}/full.db", retry_s=0)
    study = optuna.create_study(study_name="full", storage=storage)
    trial_id = study.ask()._trial_id
    with open(small_disk / "filler", "wb") as f, pytest.raises(OSError) as filled:
        while True:
            f.write(b"x" * (1 << 16))
            f.flush()
    assert is_disk_full(filled.value) and not is_transient(filled.value)
    with pytest.raises(Exception) as failed:  # noqa: PT011  (whatever Optuna wraps SQLite's error in)
        for i in range(10_000):  # until SQLite has no page left to write to
            storage.set_trial_user_attr(trial_id, f"a{i}", "x" * 60_000)
    assert "database or disk is full" in str(failed.value) or "disk" in str(failed.value.__cause__)
    assert is_disk_full(failed.value) and not is_transient(failed.value)


def test_a_stop_signal_whose_unwinding_was_swallowed_still_hands_the_trial_back(
    home: Path, tiny_config: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SLURM's SIGUSR2 handled while Python runs a finalizer: the handler's SystemExit is printed as "Exception
    ignored" and lost. The worker still stops at the end of that epoch, checkpointed, hands its trial back as a
    preempted one, and claims no other trial."""
    import signal

    from sweep.run import trial as one_trial
    from sweep.run.launch import create_or_resume
    from sweep.run.place import run_context
    from sweep.run.worker import Worker, run_worker
    from sweep.search.study import top_up
    from sweep.storage import open_storage, resolve_storage, study_dir

    job = Worker()

    class LandsInAFinalizer:
        def __del__(self) -> None:
            job.hand_over(signal.SIGUSR2, None)

    validate, epochs = one_trial.validate, []

    def validate_then_signal(run):
        epochs.append(len(run.history) + 1)
        if len(epochs) == 2:  # during epoch 2 of trial 0
            LandsInAFinalizer()  # dropped at once: its __del__ raises SystemExit, which Python ignores
        return validate(run)

    monkeypatch.setattr(one_trial, "validate", validate_then_signal)
    url = resolve_storage("tiny")
    study = create_or_resume(tiny_config, open_storage(url), url)
    assert top_up(study, 2) == 2
    with pytest.raises(SystemExit):
        run_worker(tiny_config, url, str(study_dir("tiny")), 0, run_context(1), job)
    assert epochs == [1, 2]  # not one epoch more, and no second trial
    from sweep.run.signals import WorkerStop

    assert not WorkerStop.asked  # cleared as the worker ends: this process may train again, outside a worker
    assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN  # nor would its children stop on Ctrl-C
    trials = study.get_trials()
    lost = trials[0]
    assert lost.state == TrialState.FAIL and "preempted or timed out" in lost.user_attrs["sweep_void"]
    assert sorted(lost.intermediate_values) == [1, 2]
    (again,) = [t for t in trials if t.user_attrs.get("sweep_retry_of") == lost.number]
    assert again.state == TrialState.WAITING and again.user_attrs.get("sweep_retries", 0) == 0  # it had progressed
