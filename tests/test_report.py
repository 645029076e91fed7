"""`sweep report` and the TensorBoard record of each trial, checked the way a person would look at them.

The report is opened in headless Chromium (Debian's package) driven over the DevTools protocol: every
JavaScript exception, console error and failed load is collected while the page loads with the network cut
off (a dead proxy), the DOM is checked for every plot actually drawn, and a full-page screenshot is saved
(tests/artifacts/, gitignored). The study behind it comes from a real sweep: the debug executor runs its
trials one after another in one process, so which trials the pruner stops is the same on every run.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import ROOT, TINY, sweep_cli
from optuna.trial import TrialState
from plotly.offline import get_plotlyjs

from sweep.look.report import PLOTS, pruning_savings, write_report
from sweep.search.study import CONFIG_ATTR, VOID

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "tests" / "artifacts"


# ---- a real sweep, and a browser -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[optuna.Study, Path]:
    """6 trials of the tiny study on val_loss (4 complete, 2 pruned), then one trial running and one waiting,
    as a study looks while its workers are still busy."""
    home = tmp_path_factory.mktemp("swept")
    (home / "tiny.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    url = f"sqlite:///{home}/studies/tiny/study.db"
    run = sweep_cli(
        "launch", "tiny.yaml", "--executor", "debug", "--trials", "6", "--set", "study.metric=val_loss",
        "--storage", url, cwd=home, env={"SWEEP_STUDIES_DIR": str(home / "studies")},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    study = optuna.load_study(study_name="tiny", storage=url)
    states = [t.state for t in study.get_trials()]
    assert states.count(TrialState.COMPLETE) >= 2 and states.count(TrialState.PRUNED) >= 1, run.stdout
    running = study.ask()
    running.suggest_float("train.lr", 1.0e-3, 3.0e-2, log=True)
    running.suggest_float("augment.strength", 0.0, 1.0)
    running.report(1.5, 1)
    running.set_user_attr("host", "elsewhere")
    study.enqueue_trial({}, user_attrs={"sweep_enqueued": True})
    return study, home


class Chromium:
    """Headless Chromium over the DevTools protocol: a page's errors as they happen, its DOM, a screenshot."""

    def __init__(self) -> None:
        import websocket

        if not os.access(CHROMIUM, os.X_OK):
            pytest.fail("headless Chromium is missing: `bash .ci/setup --test` installs Debian's chromium package")
        self.profile = tempfile.mkdtemp(prefix="sweep-chromium-")
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={self.profile}",
             "--proxy-server=http://127.0.0.1:9",  # nothing answers there: the page must need no network
             "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        active = Path(self.profile, "DevToolsActivePort")
        deadline = time.time() + 30
        while not (active.exists() and active.read_text().strip()):
            assert time.time() < deadline and self.proc.poll() is None, "Chromium did not start"
            time.sleep(0.05)
        port = int(active.read_text().split()[0])
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], suppress_origin=True, timeout=60)
        self.next_id, self.events = 0, []
        for domain in ("Runtime", "Log", "Page"):
            self.call(f"{domain}.enable")

    def call(self, method: str, **params: object) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message["result"]
            self.events.append(message)

    def evaluate(self, expression: str) -> object:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def open(self, page: Path) -> list[str]:
        """Load a file and wait until every plot on it is drawn; returns the errors the page produced."""
        self.events.clear()
        self.call("Emulation.setDeviceMetricsOverride", width=1400, height=1000, deviceScaleFactor=1, mobile=False)
        self.call("Page.navigate", url=page.resolve().as_uri())
        deadline = time.time() + 60
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            assert time.time() < deadline, "the page did not load"
            self.events.append(json.loads(self.ws.recv()))
        while not self.evaluate(
            "Array.from(document.querySelectorAll('.js-plotly-plot'))"
            ".every(d => d._fullLayout && d.querySelector('.main-svg'))"
        ):
            assert time.time() < deadline, "plots still not drawn"
            time.sleep(0.1)
        errors = []
        for e in self.events:
            method, p = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                errors.append(json.dumps(p["exceptionDetails"])[:500])
            elif method == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
                errors.append(" ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
                errors.append(p["entry"]["text"] + " " + p["entry"].get("url", ""))
        return errors

    def screenshot(self, path: Path) -> None:
        height = self.evaluate("document.documentElement.scrollHeight")
        self.call("Emulation.setDeviceMetricsOverride", width=1400, height=height, deviceScaleFactor=1, mobile=False)
        time.sleep(0.3)  # plots are responsive: let them settle at the new size
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        self.ws.close()
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Chromium]:
    chromium = Chromium()
    try:
        yield chromium
    finally:
        chromium.close()


PLOT_STATE = """JSON.stringify(Object.fromEntries(Array.from(document.querySelectorAll('.js-plotly-plot')).map(d => [
    d.id.replace('plot-', ''),
    {traces: d.data.length, drawn: d.querySelectorAll('g.trace').length, svg: d.querySelectorAll('.main-svg').length,
     dotted: d.data.filter(t => t.line && t.line.dash === 'dot').length}])))"""


def _keep(shot: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy2(shot, ARTIFACTS / shot.name)


# ---- the report ------------------------------------------------------------------------------------------


def test_report_of_a_running_study_opens_offline_with_every_plot_drawn(
    swept: tuple[optuna.Study, Path], browser: Chromium, tmp_path: Path
) -> None:
    study, home = swept
    run = sweep_cli("report", "tiny", cwd=home, env={"SWEEP_STUDIES_DIR": str(home / "studies")})
    assert run.returncode == 0, run.stderr
    page = home / "studies" / "tiny" / "report.html"
    assert f"wrote {page}" in run.stdout and "not drawn" not in run.stdout
    own = page.read_text().replace(get_plotlyjs(), "@plotly.js@")  # plotly.js inlined once; nothing else to fetch
    assert own.count("@plotly.js@") == 1 and "src=" not in own and "<link" not in own and len(own) < 500_000

    errors = browser.open(page)
    assert errors == [], errors
    plots = json.loads(browser.evaluate(PLOT_STATE))
    assert set(plots) == set(PLOTS)
    for name, plot in plots.items():
        assert plot["traces"] >= 1 and plot["drawn"] >= 1 and plot["svg"] >= 1, (name, plot)
    trials = study.get_trials()
    curves = [t for t in trials if t.intermediate_values and t.state != TrialState.WAITING]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert plots["intermediate"]["traces"] == plots["intermediate"]["drawn"] == len(curves)
    assert plots["intermediate"]["dotted"] == len(pruned)  # pruned curves drawn, and told apart
    assert "still running" in browser.evaluate("document.querySelector('.live').innerText")
    rows = browser.evaluate("document.querySelectorAll('#trial-table tbody tr').length")
    assert rows == len(trials) - 1  # every trial but the waiting placeholder
    best = min((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert browser.evaluate("document.querySelector('tr.best td').innerText") == str(best.number)
    assert "train.lr" in browser.evaluate("document.querySelector('#best-params').innerText")
    assert f"lr: {best.params['train.lr']}" in browser.evaluate("document.querySelector('#best-config').textContent")
    saved = browser.evaluate("document.querySelector('#savings').innerText")
    expected = sum(3 - t.user_attrs["epochs_run"] for t in pruned)
    assert f"epochs not trained thanks to pruning\t{expected} " in saved and "worker time saved" in saved

    shot = tmp_path / "report-running-study.png"
    browser.screenshot(shot)
    assert shot.stat().st_size > 50_000
    _keep(shot)


def _study(storage: str | None = None, epochs: int = 10) -> optuna.Study:
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    study.set_user_attr(CONFIG_ATTR, {"study": {"metric": "val_acc"}, "train": {"epochs": epochs}})
    return study


def _add(study: optuna.Study, state: TrialState, curve: list[float], **attrs: object) -> None:
    trial = study.ask()
    trial.suggest_float("train.lr", 1e-4, 1e-1, log=True)
    trial.suggest_categorical("train.optimizer", ["adamw", "sgd"])
    for epoch, value in enumerate(curve, 1):
        trial.report(value, epoch)
    for key, value in {"epochs_run": len(curve), **attrs}.items():
        trial.set_user_attr(key, value)
    study.tell(trial, curve and max(curve) if state == TrialState.COMPLETE else None, state=state)


def test_report_with_only_pruned_and_failed_trials_shows_what_it_can(browser: Chromium, tmp_path: Path) -> None:
    study = _study(f"sqlite:///{tmp_path}/s.db")
    _add(study, TrialState.PRUNED, [0.2, 0.25], wall_seconds=8.0)
    _add(study, TrialState.PRUNED, [0.1, 0.15, 0.2], wall_seconds=12.0, config={"train": {"epochs": 20}})
    _add(study, TrialState.FAIL, [0.3], fail_reason="training loss became nan in epoch 2 (lr=0.1)")
    _add(study, TrialState.FAIL, [0.3, 0.3], **{VOID: "interrupted; retried with the same params"})
    report = write_report(study, tmp_path / "report.html", "sqlite:///s.db")
    assert report.plots == {"history": False, "intermediate": True, "importance": False, "parallel": False,
                            "slice": False}
    assert report.size > 1_000_000 and report.trials == 4

    errors = browser.open(report.path)
    assert errors == [], errors
    plots = json.loads(browser.evaluate(PLOT_STATE))
    assert list(plots) == ["intermediate"] and plots["intermediate"]["dotted"] == 2
    assert plots["intermediate"]["drawn"] == 3  # the voided trial's curve lives on in its retry: not drawn twice
    for name in ("history", "importance", "parallel", "slice"):
        assert "the study has 0 so far" in browser.evaluate(f"document.querySelector('#note-{name}').innerText")
    assert "No trial has completed yet" in browser.evaluate("document.querySelector('#best').innerText")
    saved = browser.evaluate("document.querySelector('#savings').innerText")
    assert "epochs not trained thanks to pruning\t25 " in saved  # (10 - 2) + (20 - 3)
    assert "mean time per epoch\t4.00 s" in saved and "worker time saved (estimate)\t1:40" in saved
    assert "training loss became nan" in browser.evaluate("document.querySelector('#trial-table').innerText")
    shot = tmp_path / "report-pruned-only.png"
    browser.screenshot(shot)
    _keep(shot)


SLICE_BOXES = """JSON.stringify((() => {
    const plot = document.querySelector('#plot-slice');
    const box = e => { const r = e.getBoundingClientRect(); return {left: r.left, right: r.right}; };
    return {page: document.documentElement.clientWidth, scroll: document.documentElement.scrollWidth,
            svg: Array.from(plot.querySelectorAll('.main-svg')).map(box),
            colorbar: Array.from(plot.querySelectorAll('.colorbar')).map(box),
            titles: Array.from(plot.querySelectorAll('.xtitle, [class^="x"][class$="title"]')).map(
                e => ({text: e.textContent, ...box(e)}))};
})())"""


def test_slice_plot_of_many_params_fits_the_page(browser: Chromium, tmp_path: Path) -> None:
    """Six parameters: Optuna draws one 300 px panel each in one 1800 px row; at a 1400 px window every
    panel, its axis title and the colour bar lie inside the page."""
    study = _study()
    names = [f"train.p{i}" for i in range(6)]
    dist = optuna.distributions.FloatDistribution(0.0, 1.0)
    for n in range(5):
        study.add_trial(optuna.trial.create_trial(
            value=0.1 * n, params={k: (n + i) % 5 / 5 for i, k in enumerate(names)},
            distributions=dict.fromkeys(names, dist), intermediate_values={1: 0.1 * n}))
    report = write_report(study, tmp_path / "report.html")
    assert report.plots["slice"]
    assert browser.open(report.path) == []
    boxes = json.loads(browser.evaluate(SLICE_BOXES))
    page = boxes["page"]
    assert 1300 < page <= 1400 and boxes["scroll"] <= page, boxes  # 1400 less a scroll bar
    assert sorted({t["text"] for t in boxes["titles"]} & set(names)) == names, boxes["titles"]
    assert len(boxes["colorbar"]) == 1
    for item in boxes["svg"] + boxes["colorbar"] + boxes["titles"]:
        assert 0 <= item["left"] and item["right"] <= page, (item, page)
    shot = tmp_path / "report-slice-six-params.png"
    browser.screenshot(shot)
    _keep(shot)


def test_pruning_savings_counts_epochs_per_trial_and_leaves_out_retries(tmp_path: Path) -> None:
    study = _study(epochs=8)
    _add(study, TrialState.COMPLETE, [0.5] * 8, wall_seconds=16.0)
    _add(study, TrialState.PRUNED, [0.1], wall_seconds=2.0)
    _add(study, TrialState.PRUNED, [0.1] * 3, wall_seconds=1.0, sweep_retry_of=0)  # resumed: own time only
    _add(study, TrialState.PRUNED, [0.1] * 2, **{VOID: "budget lowered"})
    s = pruning_savings(study)
    assert (s.pruned, s.epochs_trained, s.epochs_saved) == (2, 12, 7 + 5)
    assert s.seconds_per_epoch == pytest.approx(18.0 / 9)  # the retry's 1 s for 3 epochs would skew it
    assert s.seconds_saved == pytest.approx(24.0) and s.worker_seconds == pytest.approx(19.0)

    # where the trial's folder is readable, the trainer's own epoch timings count, setup left out
    (tmp_path / "metrics.json").write_text(json.dumps({"epochs": [{"seconds": 0.5}] * 4}))
    _add(study, TrialState.PRUNED, [0.1] * 4, wall_seconds=60.0, trial_dir=str(tmp_path))
    s = pruning_savings(study)
    assert s.seconds_per_epoch == pytest.approx((18.0 + 2.0) / (9 + 4)) and s.epochs_saved == 12 + 4


def test_importances_wait_for_two_completed_trials_and_a_parameter(tmp_path: Path) -> None:
    study = _study()
    _add(study, TrialState.COMPLETE, [0.4, 0.5])
    report = write_report(study, tmp_path / "one.html")
    assert report.plots == {"history": True, "intermediate": True, "importance": False, "parallel": True,
                            "slice": True}
    assert "Needs at least 2 completed trials; the study has 1 so far." in report.path.read_text()
    _add(study, TrialState.COMPLETE, [0.3, 0.6])
    assert write_report(study, tmp_path / "two.html").plots["importance"] is True

    bare = optuna.create_study(study_name="bare")
    for value in (1.0, 2.0):
        bare.add_trial(optuna.trial.create_trial(value=value))
    report = write_report(bare, tmp_path / "bare.html")
    assert not report.plots["importance"] and not report.plots["slice"] and report.plots["history"]
    assert "the search space is empty" in report.path.read_text()


def test_learning_curves_of_many_trials_share_one_trace_per_state() -> None:
    from sweep.look.report import MAX_CURVE_TRACES, _curves

    lr = optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    trials = [
        optuna.trial.create_trial(
            state=TrialState.PRUNED if n % 3 else TrialState.COMPLETE, value=None if n % 3 else 0.5,
            params={"train.lr": 1e-3}, distributions={"train.lr": lr},
            intermediate_values={e: 0.1 * e for e in range(1, 3 if n % 3 else 6)},
        )
        for n in range(MAX_CURVE_TRACES + 20)
    ]
    fig = _curves(trials, "val_acc")
    assert [t.name for t in fig.data] == ["complete (40 trials)", "pruned (80 trials)", "where pruned"]
    assert fig.data[1].line.dash == "dot" and len(fig.data[2].x) == 80 and set(fig.data[2].x) == {2}
    assert len(fig.data[0].x) == 40 * (5 + 1)  # each curve, then a gap
    assert len(_curves(trials[:MAX_CURVE_TRACES], "val_acc").data) == MAX_CURVE_TRACES


def test_report_of_an_unknown_study_is_a_clear_error(home: Path) -> None:
    run = sweep_cli("report", "nosuch", cwd=home)
    assert run.returncode == 2 and "no study named 'nosuch'" in run.stderr
    assert not (home / "studies" / "nosuch" / "report.html").exists()


def test_a_pruned_trials_value_is_its_best_epoch_in_every_view(home: Path) -> None:
    """A real worker's trial pruned after epoch 2 whose best epoch is its first (lr 0.05: val_acc 0.375, then
    0.25): metrics.json, the launch table, the report's table, TensorBoard's best/val_acc and the trial's value
    in the storage (Optuna alone would store the last epoch's) all say 0.375."""
    import re

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from sweep.config.resolve import resolve
    from sweep.run.launch import create_or_resume
    from sweep.run.place import run_context
    from sweep.run.worker import run_worker
    from sweep.search.study import top_up
    from sweep.storage import open_storage, resolve_storage, study_dir

    raw = {**TINY, "study": {"name": "tiny", "n_trials": 2}, "search_space": {"train.lr": [0.05]}}
    (home / "tiny.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    config = resolve(raw, "tiny.yaml")
    url = resolve_storage("tiny")
    study = create_or_resume(config, open_storage(url), url)
    # the median pruner's one completed trial, perfect at epoch 2: the worker's trial is pruned there
    lr = optuna.distributions.CategoricalDistribution([0.05])
    study.add_trial(optuna.trial.create_trial(value=1.0, intermediate_values={2: 1.0}, params={"train.lr": 0.05},
                                              distributions={"train.lr": lr}))
    assert top_up(study, 2) == 1
    run_worker(config, url, str(study_dir("tiny")), 0, run_context(1))
    pruned = study.get_trials()[1]
    assert pruned.state == TrialState.PRUNED and sorted(pruned.intermediate_values) == [1, 2]
    first, last = pruned.intermediate_values[1], pruned.intermediate_values[2]
    assert first > last, f"the test needs a best epoch before the last: {pruned.intermediate_values}"

    metrics = json.loads((study_dir("tiny") / "trials" / "1" / "metrics.json").read_text())
    assert (metrics["best_epoch"], metrics["best_value"]) == (1, first)

    table = sweep_cli("launch", "tiny.yaml", cwd=home)  # the budget is met: launch prints its table
    assert table.returncode == 0, table.stderr
    row = next(line.split() for line in table.stdout.splitlines() if line.split()[:2] == ["1", "pruned"])
    assert row[2] == f"({first:.4f})", table.stdout

    page = write_report(study, home / "report.html").path.read_text()
    cells = re.search(r"<tr><td>1</td><td>pruned</td><td>([^<]*)</td>", page)
    assert cells and cells.group(1) == f"({first:.4f})"

    events = EventAccumulator(str(study_dir("tiny") / "trials" / "1" / "tb"))
    events.Reload()
    (best,) = events.Scalars("best/val_acc")
    assert (best.step, best.value) == (1, pytest.approx(first))
    assert [e.value for e in events.Scalars("val_acc")] == pytest.approx([first, last])
    assert pruned.user_attrs["best_epoch"] == 1 and pruned.value == first  # as the dashboard shows them


# ---- TensorBoard's record of each trial -----------------------------------------------------------------


def test_tensorboard_reader_finds_each_trials_curves_and_hparams_session(swept: tuple[optuna.Study, Path]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, metadata

    finished = [t for t in swept[0].get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    for t in finished:
        events = EventAccumulator(str(Path(t.user_attrs["trial_dir"]) / "tb"))
        events.Reload()
        epochs = t.user_attrs["epochs_run"]
        for tag in ("train_loss", "val_loss", "val_acc", "val_f1", "lr", "seconds"):
            assert [e.step for e in events.Scalars(tag)] == list(range(1, epochs + 1)), (t.number, tag)
        assert [e.value for e in events.Scalars("val_loss")] == pytest.approx(list(t.intermediate_values.values()))
        (best,) = events.Scalars("best/val_loss")
        assert best.value == pytest.approx(min(t.intermediate_values.values()))
        if t.state == TrialState.COMPLETE:
            assert best.value == pytest.approx(t.value) and best.step == t.user_attrs["best_epoch"]

        content = events.PluginTagToContent(metadata.PLUGIN_NAME)
        start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
        assert start.hparams["state"].string_value == t.state.name.lower()
        assert {k: v.number_value for k, v in start.hparams.items() if k != "state"} == pytest.approx(t.params)
        end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
        assert end.status == api_pb2.STATUS_SUCCESS

        # the attributes the dashboard shows for a finished trial
        assert t.user_attrs["wall_seconds"] > 0 and t.user_attrs["host"]
        assert Path(t.user_attrs["checkpoint"]).is_file()
