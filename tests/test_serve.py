"""`sweep dashboard` and `sweep tensorboard`: real servers on 127.0.0.1, asked over HTTP what a browser would ask.

The dashboard follows a real sweep whose workers write to the machine's PostgreSQL while it serves, and reads
every other storage sweep writes (SQLite, the journal file, MariaDB). TensorBoard is asked for the runs and for
what its HParams tab shows.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
from conftest import sweep_cli

from sweep.look.serve import bind_dashboard
from sweep.storage import open_storage

PG = os.environ.get("SWEEP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
MY = os.environ.get("SWEEP_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test")


def _get(url: str, data: dict | None = None) -> dict | str:
    body = None if data is None else json.dumps(data).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200, url
        text = response.read().decode()
    return json.loads(text) if "json" in response.headers.get("Content-Type", "") else text


@contextmanager
def _serving(*args: str, cwd: Path, timeout: float = 60) -> Iterator[str]:
    """`sweep ARGS` in a child process until its URL is printed; yields the URL, then Ctrl-C (must exit 0)."""
    proc = subprocess.Popen([sys.executable, "-m", "sweep", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        out, deadline = b"", time.time() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while not re.search(rb"http://\S+", out):
                assert time.time() < deadline and proc.poll() is None, f"no URL from sweep {args}: {out.decode()}"
                if sel.select(timeout=0.5):
                    out += os.read(proc.stdout.fileno(), 65536)
        yield re.search(rb"http://\S+", out).group().decode()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, proc.stdout.read().decode()


def _studies(base: str) -> dict[str, int]:
    return {s["study_name"]: s["study_id"] for s in _get(f"{base}/api/studies")["study_summaries"]}


# ---- optuna-dashboard --------------------------------------------------------------------------------------


def test_dashboard_follows_a_sweep_writing_to_postgresql(home: Path, tiny_file: Path) -> None:
    name = f"dash-{uuid.uuid4().hex[:8]}"
    log = home / "launch.log"
    with log.open("w") as out:  # not a pipe: the detached workers inherit it and would hold it open to their end
        run = subprocess.run([sys.executable, "-m", "sweep", "launch", str(tiny_file), "--storage", PG, "--study", name,
                              "--trials", "4", "--detach"], cwd=home, stdout=out, stderr=subprocess.STDOUT, timeout=120)
    assert run.returncode == 0, log.read_text()
    try:
        with _serving("dashboard", name, "--storage", PG, "--port", "0", cwd=home) as page:
            base, study_id = page.split("/dashboard/studies/")[0], int(page.rsplit("/", 1)[1])
            assert page.startswith("http://127.0.0.1:")
            assert "<html" in _get(page).lower()  # the app itself
            assert _studies(base)[name] == study_id
            seen, deadline = [], time.time() + 180
            while time.time() < deadline:
                trials = _get(f"{base}/api/studies/{study_id}")["trials"]
                seen.append(sorted(t["state"] for t in trials))
                if len(trials) == 4 and all(t["state"] in ("Complete", "Pruned") for t in trials):
                    break
                time.sleep(0.3)
            else:
                pytest.fail(f"the dashboard never showed the sweep finishing: {seen[-1:]}")
            assert any("Running" in states for states in seen)  # it answered while workers were writing
            finished = [sum(s in ("Complete", "Pruned") for s in states) for states in seen]
            assert finished[0] < 4 and finished == sorted(finished)  # the count grew as trials ended
            for t in trials:
                attrs = {a["key"]: a["value"] for a in t["user_attrs"]}
                assert {"host", "epochs_run", "wall_seconds", "checkpoint", "trial_dir"} <= set(attrs), attrs
                assert len(t["intermediate_values"]) == int(attrs["epochs_run"]) >= 1
                assert {p["name"] for p in t["params"]} == {"train.lr", "augment.strength"}
    finally:  # leave the shared database as it was
        storage = open_storage(PG)
        if name in {s.study_name for s in storage.get_all_studies()}:
            if not all(t.state.is_finished() for t in optuna.load_study(study_name=name, storage=storage).trials):
                sweep_cli("cancel", name, "--storage", PG, cwd=home)
            optuna.delete_study(study_name=name, storage=storage)


def _write(storage: optuna.storages.BaseStorage, name: str, value: float) -> None:
    study = optuna.load_study(study_name=name, storage=storage)
    trial = study.ask()
    trial.suggest_float("train.lr", 1e-4, 1e-1, log=True)
    trial.report(value, 1)
    trial.set_user_attr("host", "node7")
    trial.set_user_attr("slurm_job_id", "4242_3")
    study.tell(trial, value)


@pytest.mark.parametrize("backend", ["sqlite", "journal", "mariadb"])
def test_dashboard_reads_every_storage_while_it_is_written(backend: str, tmp_path: Path) -> None:
    url = {"sqlite": f"sqlite:///{tmp_path}/s.db", "journal": f"journal:///{tmp_path}/s.log", "mariadb": MY}[backend]
    name = f"dash-{uuid.uuid4().hex[:8]}"
    writer = open_storage(url)  # like a worker: its own storage object (its own process, in real life)
    optuna.create_study(study_name=name, storage=writer, direction="maximize")
    _write(writer, name, 0.5)
    server = bind_dashboard(open_storage(url), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        study_id = _studies(base)[name]
        (trial,) = _get(f"{base}/api/studies/{study_id}")["trials"]
        assert trial["state"] == "Complete" and trial["values"] == [0.5]
        assert {"key": "slurm_job_id", "value": "4242_3"} in trial["user_attrs"]
        _write(writer, name, 0.75)
        deadline = time.time() + 20  # the dashboard caches a study's trials for 2 s
        while len(trials := _get(f"{base}/api/studies/{study_id}")["trials"]) < 2:
            assert time.time() < deadline, trials
            time.sleep(0.2)
        assert [t["values"] for t in trials] == [[0.5], [0.75]]
    finally:
        server.shutdown()
        server.server_close()
        if backend == "mariadb":
            optuna.delete_study(study_name=name, storage=writer)


def test_dashboard_and_tensorboard_refuse_bad_input(home: Path) -> None:
    unknown = sweep_cli("dashboard", "nosuch", cwd=home)
    assert unknown.returncode == 2 and "no study named 'nosuch'" in unknown.stderr
    unknown = sweep_cli("tensorboard", "nosuch", cwd=home)
    assert unknown.returncode == 2 and "no trial folders for study 'nosuch'" in unknown.stderr

    optuna.create_study(study_name="tiny", storage=open_storage(f"sqlite:///{home}/studies/tiny/study.db"))
    (home / "studies" / "tiny" / "trials").mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for command in ("dashboard", "tensorboard"):
            busy = sweep_cli(command, "tiny", "--port", port, cwd=home)
            assert busy.returncode == 2, busy.stderr
            assert f"port {port} on 127.0.0.1 is already in use" in busy.stderr and "--port" in busy.stderr


# ---- TensorBoard -------------------------------------------------------------------------------------------


def test_tensorboard_serves_each_trials_curves_and_the_hparams_comparison(home: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    from sweep.look.hparams import write_summary

    trials = home / "studies" / "tiny" / "trials"
    for n, (lr, optimizer, curve) in enumerate([(1e-3, "adamw", [0.3, 0.5, 0.6]), (3e-2, "sgd", [0.2])]):
        folder = trials / str(n)
        with SummaryWriter(str(folder / "tb")) as writer:  # what the trainer writes
            for epoch, value in enumerate(curve, 1):
                writer.add_scalar("val_acc", value, epoch)
        best = max(range(len(curve)), key=curve.__getitem__)
        (folder / "metrics.json").write_text(
            json.dumps({"metric": "val_acc", "best_epoch": best + 1, "best_value": curve[best], "epochs": []})
        )
        state = "complete" if len(curve) == 3 else "pruned"
        write_summary(folder, {"train.lr": lr, "train.optimizer": optimizer}, state)

    with _serving("tensorboard", "tiny", "--port", "0", cwd=home) as url:
        assert url.startswith("http://127.0.0.1:")
        deadline = time.time() + 60
        while sorted(runs := _get(f"{url}data/runs")) != ["0/tb", "1/tb"]:
            assert time.time() < deadline, runs
            time.sleep(0.5)
        experiment = _get(f"{url}data/plugin/hparams/experiment", {"experimentName": ""})
        assert {h["name"] for h in experiment["hparamInfos"]} == {"train.lr", "train.optimizer", "state"}
        assert {"val_acc", "best/val_acc"} <= {m["name"]["tag"] for m in experiment["metricInfos"]}
        groups = _get(f"{url}data/plugin/hparams/session_groups", {
            "experimentName": "", "allowedStatuses": ["STATUS_SUCCESS"], "startIndex": 0, "sliceSize": 10,
            "colParams": [{"hparam": "train.optimizer"}, {"metric": {"tag": "best/val_acc", "group": ""}}],
            "aggregationType": "AGGREGATION_AVG",
        })["sessionGroups"]
        best = {
            g["hparams"]["train.optimizer"]: m["value"]
            for g in groups
            for m in g["metricValues"]
            if m["name"]["tag"] == "best/val_acc"
        }
        assert best == pytest.approx({"adamw": 0.6, "sgd": 0.2})
