"""`sweep report`: one self-contained HTML page per study, to read offline, attach to a mail or archive.

Everything the page needs is inside the file (plotly.js inlined once, the figures as JSON), so it opens
without a network and without the database. It reads a snapshot of the study and works at any moment:
while trials are still running, with only pruned or failed trials, or with none; a plot that the study
cannot support yet is replaced by a sentence saying what it waits for.

The intermediate-values plot is drawn here rather than by Optuna so that pruned trials stand out (dotted,
ending in a cross where the pruner stopped them). Importances use PED-ANOVA, which needs no scikit-learn.
The page itself is templates/report.html.j2, autoescaped: this module hands it plain strings, and plotly's
own output (plotly.js, each figure's div) as Markup.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
from markupsafe import Markup
from optuna.trial import FrozenTrial, TrialState
from plotly.offline import get_plotlyjs

from sweep import __version__
from sweep.config.yamlfile import dump_yaml
from sweep.look import front
from sweep.look.pages import environment
from sweep.look.status import folds_text, maximizes, value_text
from sweep.search import pareto
from sweep.search.objectives import curve, is_multi, primary, static
from sweep.search.study import CONFIG_ATTR, SEEDED, SEEDED_RULE, VOID, counts

PLOTS = ("history", "intermediate", "importance", "parallel", "slice")
_COLORS = {"complete": "#1f77b4", "pruned": "#d62728", "running": "#2ca02c", "fail": "#7f7f7f"}
MAX_CURVE_TRACES = 100  # more trials than this share one trace per state in the learning-curve plot
SLICE_COLUMNS = 4  # slice panels per row: about 300 px each across the page's 1248 px
SLICE_ROW_HEIGHT = 380
_PAGES = environment(Path(__file__).with_name("templates"))


@dataclass
class Savings:
    """What the pruner saved: epochs that pruned trials did not train, and the worker time that is."""

    pruned: int
    epochs_trained: int  # by every finished trial of the budget
    epochs_saved: int  # sum over pruned trials of train.epochs - epochs run
    seconds_per_epoch: float | None  # mean over finished trials' epochs, None without any timing
    worker_seconds: float  # wall time spent in finished trials, all workers together

    @property
    def seconds_saved(self) -> float | None:
        return None if self.seconds_per_epoch is None else self.epochs_saved * self.seconds_per_epoch


@dataclass
class Plot:
    """One plot's section: plotly's div where it was drawn, else the sentence that stands in for it."""

    key: str
    title: str
    div: Markup | None = None
    note: str = ""


@dataclass
class Report:
    path: Path
    trials: int
    plots: dict[str, bool]  # which plots were drawn (else a note stands in their place)
    seconds: float
    size: int


def write_report(study: optuna.Study, path: Path, storage: str = "") -> Report:
    """Write the study's report to `path` (atomically: a browser reloading it never sees half a file)."""
    started = time.perf_counter()
    trials = study.get_trials(deepcopy=False)
    page, drawn = build(study, storage, trials)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return Report(path, len(trials), drawn, time.perf_counter() - started, path.stat().st_size)


def build(
    study: optuna.Study, storage: str = "", trials: Sequence[FrozenTrial] | None = None
) -> tuple[str, dict[str, bool]]:
    """The page as one string, and which plots it draws; `trials` is the snapshot to show (default: now)."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    counted = [t for t in trials if counts(t)]
    complete = [t for t in counted if t.state == TrialState.COMPLETE]
    config = study.user_attrs.get(CONFIG_ATTR) or {}
    metric = config.get("study", {}).get("metric", "value")
    names = sorted({name for t in complete for name in t.params})
    top = _best(study, complete, config)
    vis = optuna.visualization
    on = _on_primary(study, metric)  # with several objectives Optuna's plots need a target: the primary metric
    sections = [
        ("history", "Optimization history", _need(complete, 1), lambda s: vis.plot_optimization_history(s, **on)),
        ("intermediate", f"Learning curves ({metric})", _curves_need(counted), lambda _: _curves(counted, metric)),
        ("importance", "Hyperparameter importances", _need(complete, 2, names), lambda s: _importances(s, on)),
        ("parallel", "Parallel coordinates", _need(complete, 1, names),
         lambda s: vis.plot_parallel_coordinate(s, **on)),
        ("slice", "Slice plots", _need(complete, 1, names), lambda s: _slices(s, on)),
    ]
    if is_multi(study):
        sections.insert(0, ("pareto", "Pareto front", front.need(counted), lambda _: front.figure(counted, config)))
    plots = [_section_plot(key, title, study, needs, figure) for key, title, needs, figure in sections]
    savings = pruning_savings(study, trials)
    page = _PAGES.get_template("report.html.j2").render(
        plotlyjs=Markup(get_plotlyjs()),  # plotly's own script, inlined as it is
        metric=metric,
        head=_header(study, trials, counted, storage),
        best=_best_view(top),
        trained=savings.epochs_trained,
        savings=_savings_rows(savings),
        plots=plots,
        rows=_rows(trials, top, _default_epochs(study), maximizes(study)),
    )
    return page, {plot.key: plot.div is not None for plot in plots}


def pruning_savings(study: optuna.Study, trials: Sequence[FrozenTrial] | None = None) -> Savings:
    """Epochs pruned trials did not train (their config's train.epochs minus the epochs they ran), and the
    worker time that is at the study's mean seconds per epoch."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    default = _default_epochs(study)
    finished = [t for t in trials if counts(t) and t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    pruned = [t for t in finished if t.state == TrialState.PRUNED]
    saved = sum(max(0, _planned(t, default) - _epochs(t)) for t in pruned if _planned(t, default) is not None)
    trained = sum(_epochs(t) for t in finished)
    timed = [x for x in map(_epoch_time, finished) if x is not None]
    epochs = sum(n for _, n in timed)
    rate = sum(seconds for seconds, _ in timed) / epochs if epochs else None
    worker = sum(_wall(t) or 0.0 for t in finished)
    return Savings(len(pruned), trained, saved, rate, worker)


# ---- figures -----------------------------------------------------------------------------------------


def _need(complete: Sequence[FrozenTrial], n: int, names: Sequence[str] | None = None) -> str | None:
    """None when the plot can be drawn, else the sentence that stands in for it."""
    if len(complete) < n:
        return f"Needs at least {n} completed trial{'s' if n > 1 else ''}; the study has {len(complete)} so far."
    if names is not None and not names:
        return "The completed trials have no hyperparameters (the search space is empty)."
    return None


def _curves_need(counted: Sequence[FrozenTrial]) -> str | None:
    if any(curve(t) for t in counted):
        return None
    return "No trial has reported an epoch yet."


def _on_primary(study: optuna.Study, metric: str) -> dict[str, Any]:
    return {"target": primary, "target_name": metric} if is_multi(study) else {}


def _importances(study: optuna.Study, on: dict[str, Any]) -> Any:
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    fig = optuna.visualization.plot_param_importances(study, evaluator=evaluator, **on)
    n = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    fig.update_layout(title=f"Hyperparameter importances (PED-ANOVA over {n} completed trials)")
    return fig


def _slices(study: optuna.Study, on: dict[str, Any]) -> Any:
    """Optuna's slice plots, their panels wrapped into rows of `SLICE_COLUMNS`: Optuna puts every parameter in
    one row 300 px a panel wide, which for five or more is wider than the page (the last panels and the colour
    bar cut off). The figure then takes the page's width, as every plot does, and a row's height."""
    fig = optuna.visualization.plot_slice(study, **on)
    n = sum(1 for key in fig.layout if key.startswith("xaxis"))
    cols = min(n, SLICE_COLUMNS)
    rows = math.ceil(n / cols)
    y_title = fig.layout.yaxis.title.text
    for i in range(n):
        row, col = divmod(i, cols)
        x, y = fig.layout[f"xaxis{i + 1 if i else ''}"], fig.layout[f"yaxis{i + 1 if i else ''}"]
        x.domain = _cell(col, cols, 0.06)
        bottom, top = _cell(rows - 1 - row, rows, 0.3 / rows)  # the first row on top
        y.domain = [bottom, top]
        if col == 0:  # each row's first panel carries the shared axis' labels
            y.update(showticklabels=True, title_text=y_title)
    fig.update_layout(height=SLICE_ROW_HEIGHT * rows + 110, width=None)
    return fig


def _cell(index: int, count: int, gap: float) -> list[float]:
    """The domain [start, end] of cell `index` of `count` across [0, 1], with `gap` between neighbours."""
    start, end = index / count, (index + 1) / count
    return [start + (gap / 2 if index else 0.0), end - (gap / 2 if index < count - 1 else 0.0)]


def _curves(trials: Sequence[FrozenTrial], metric: str) -> Any:
    """Every trial's curve; pruned ones dotted and ending in a cross where they were stopped.

    Up to `MAX_CURVE_TRACES` trials each get a trace (and a legend entry to hide it by); beyond that, one trace
    per state with gaps between trials, as a browser takes seconds per thousand traces but not per thousand points.
    """
    curves = [t for t in trials if curve(t) and t.state != TrialState.WAITING]
    fig = go.Figure()
    if len(curves) <= MAX_CURVE_TRACES:
        shown: set[str] = set()
        for t in curves:
            state, steps = t.state.name.lower(), sorted(curve(t))
            pruned = t.state == TrialState.PRUNED
            fig.add_trace(
                go.Scatter(
                    x=steps,
                    y=[curve(t)[s] for s in steps],
                    mode="lines+markers",
                    name=f"trial {t.number}",
                    legendgroup=state,
                    legendgrouptitle_text=None if state in shown else state,
                    line=_line(state),
                    marker={
                        "symbol": ["circle"] * (len(steps) - 1) + ["x" if pruned else "circle"],
                        "size": [5] * (len(steps) - 1) + [11 if pruned else 5],
                    },
                    opacity=0.85,
                    hovertemplate=f"{_label(t)}<br>epoch %{{x}}<br>{metric} %{{y:.4f}}<extra></extra>",
                )
            )
            shown.add(state)
    else:
        for state in dict.fromkeys(t.state.name.lower() for t in curves):
            group = [t for t in curves if t.state.name.lower() == state]
            xs: list[Any] = []
            ys: list[Any] = []
            labels: list[Any] = []
            for t in group:
                steps = sorted(curve(t))
                xs += [*steps, None]
                ys += [*(curve(t)[s] for s in steps), None]
                labels += [_label(t)] * len(steps) + [None]
            fig.add_trace(
                go.Scatter(
                    x=xs, y=ys, text=labels, mode="lines", name=f"{state} ({len(group)} trials)", line=_line(state),
                    opacity=0.6, hovertemplate=f"%{{text}}<br>epoch %{{x}}<br>{metric} %{{y:.4f}}<extra></extra>",
                )
            )
            if state == "pruned":
                fig.add_trace(
                    go.Scatter(
                        x=[max(curve(t)) for t in group],
                        y=[curve(t)[max(curve(t))] for t in group],
                        text=[_label(t) for t in group], mode="markers", name="where pruned",
                        marker={"symbol": "x", "size": 9, "color": _COLORS["pruned"]},
                        hovertemplate="%{text}<br>pruned after epoch %{x}<extra></extra>",
                    )
                )
    fig.update_layout(
        title=f"{metric} per epoch — complete solid, pruned dotted (× where pruned), running green",
        xaxis_title="epoch",
        yaxis_title=metric,
        legend={"groupclick": "togglegroup"},
    )
    return fig


def _line(state: str) -> dict[str, Any]:
    return {"color": _COLORS.get(state, "#7f7f7f"), "dash": "dot" if state == "pruned" else "solid", "width": 1.5}


def _label(t: FrozenTrial) -> str:
    """A trial's hover label; plotly draws hover text as HTML, so the params are escaped for it."""
    return f"trial {t.number} ({t.state.name.lower()})<br>{html.escape(_params(t.params))}"


def _section_plot(
    key: str, title: str, study: optuna.Study, needs: str | None, figure: Callable[[optuna.Study], Any]
) -> Plot:
    if needs is not None:
        return Plot(key, title, note=needs)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental-API and small-sample warnings: the page says so itself
            level = optuna.logging.get_verbosity()
            optuna.logging.set_verbosity(optuna.logging.ERROR)
            try:
                fig = figure(study)
            finally:
                optuna.logging.set_verbosity(level)
    except Exception as exc:  # a study mid-write can be odd; one plot failing must not cost the whole page
        return Plot(key, title, note=f"Could not draw: {type(exc).__name__}: {exc}")
    # no plot is wider than the page: each takes its container's width (`responsive`), whatever Optuna set
    fig.update_layout(template="plotly_white", width=None, height=fig.layout.height or 520,
                      margin={"t": 60, "l": 60, "r": 20, "b": 50})
    div = fig.to_html(
        full_html=False, include_plotlyjs=False, div_id=f"plot-{key}", config={"displaylogo": False, "responsive": True}
    )
    return Plot(key, title, div=Markup(div))  # plotly's HTML, its figure's text escaped by plotly


# ---- text: what the template shows, as strings -------------------------------------------------------


def _header(study: optuna.Study, trials, counted, storage: str) -> dict[str, Any]:
    n = {s: sum(1 for t in counted if t.state == s) for s in TrialState}
    states = [f"{n[TrialState.COMPLETE]} complete", f"{n[TrialState.PRUNED]} pruned", f"{n[TrialState.FAIL]} failed"]
    live = n[TrialState.RUNNING] + n[TrialState.WAITING]
    if live:
        states.append(f"{n[TrialState.RUNNING]} running, {n[TrialState.WAITING]} waiting")
    return {
        "name": study.study_name,
        "direction": study.directions[0].name.lower(),
        "others": [f"{d.name.lower()} {m}" for d, m in zip(study.directions[1:], _metrics(study)[1:])],
        "counted": len(counted),
        "states": states,
        "void": sum(1 for t in trials if VOID in t.user_attrs),
        "seeded": sorted({str(t.user_attrs[SEEDED]).rsplit("#", 1)[0] for t in trials if SEEDED in t.user_attrs}),
        "n_seeded": sum(1 for t in trials if SEEDED in t.user_attrs),
        "storage": storage or "?",
        "now": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"),
        "version": __version__,
        "live": bool(live),
    }


def _best_view(top: FrozenTrial | None) -> dict[str, Any] | None:
    if top is None:
        return None
    config = top.user_attrs.get("config")
    return {
        "number": top.number,
        "value": f"{primary(top):.4f}{folds_text(top)}",
        "static": [(k, f"{v:.4g}") for k, v in static(top).items()],
        "epoch": top.user_attrs.get("best_epoch", "?"),
        "epochs": _epochs(top),
        "wall": _hms(_wall(top)) if _wall(top) is not None else None,
        "params": [(k, _fmt(v)) for k, v in top.params.items()],
        "config": dump_yaml(config) if isinstance(config, dict) else None,
    }


def _savings_rows(s: Savings) -> list[tuple[str, str]]:
    """The savings table's rows; none while no trial has been pruned."""
    if not s.pruned:
        return []
    share = s.epochs_saved / max(1, s.epochs_saved + s.epochs_trained)
    rows = [
        ("pruned trials", str(s.pruned)),
        ("epochs trained (finished trials)", str(s.epochs_trained)),
        ("epochs not trained thanks to pruning", f"{s.epochs_saved} ({share:.0%} of what the trials would have run)"),
    ]
    if s.seconds_per_epoch is not None:
        rows += [
            ("mean time per epoch", f"{s.seconds_per_epoch:.2f} s"),
            ("worker time spent (finished trials)", _hms(s.worker_seconds)),
            ("worker time saved (estimate)", _hms(s.seconds_saved or 0.0)),
        ]
    return rows


def _rows(
    trials: Sequence[FrozenTrial], top: FrozenTrial | None, default: int | None, maximize: bool
) -> list[tuple[bool, list[str]]]:
    """The trial table's rows: whether the row is the best trial's, and its cells."""
    rows = []
    for t in trials:
        if t.state == TrialState.WAITING:
            continue  # placeholders of the budget: counted in the header, nothing to show yet
        state = t.state.name.lower() + (" (void)" if VOID in t.user_attrs else "")
        note = t.user_attrs.get(VOID) or t.user_attrs.get("fail_reason") or ""
        if SEEDED in t.user_attrs:  # trained by another study: shown, never the best, not in the budget
            state += " (seeded)"
            note = f"seeded from {t.user_attrs[SEEDED]}: {t.user_attrs.get(SEEDED_RULE, 'kept')}"
        planned = _planned(t, default)
        cells = [
            str(t.number),
            state,
            value_text(t, maximize) + folds_text(t),
            f"{_epochs(t)}/{planned}" if planned else str(_epochs(t)),
            _hms(_wall(t)) if _wall(t) is not None else "-",
            str(t.user_attrs.get("host", "-")),
            str(t.user_attrs.get("worker", "-")),
            str(t.user_attrs.get("slurm_job_id") or "-"),
            _params(t.params),
            str(note),
        ]
        rows.append((top is not None and t.number == top.number, cells))
    return rows


# ---- trial facts -------------------------------------------------------------------------------------


def _metrics(study: optuna.Study) -> list[str]:
    config = (study.user_attrs.get(CONFIG_ATTR) or {}).get("study", {})
    return list(config.get("metrics") or [config.get("metric", "value")])


def _best(study: optuna.Study, complete: Sequence[FrozenTrial], config: dict[str, Any]) -> FrozenTrial | None:
    """The best complete trial; with several objectives the default pick from the Pareto front."""
    if not complete:
        return None
    if is_multi(study):
        return pareto.pick(complete, config)
    pick = max if maximizes(study) else min
    return pick(complete, key=lambda t: (t.value, -t.number))


def _default_epochs(study: optuna.Study) -> int | None:
    return (study.user_attrs.get(CONFIG_ATTR) or {}).get("train", {}).get("epochs")


def _planned(t: FrozenTrial, default: int | None) -> int | None:
    """The epochs a trial was to run: its own config's (train.epochs may be searched), else the study's; a
    cross-validated trial's, times its folds (`study.cv`)."""
    config = t.user_attrs.get("config") or {}
    planned = config.get("train", {}).get("epochs", default)
    folds = config.get("study", {}).get("cv") or 1
    return int(planned) * folds if planned else None  # 0: no limit (train.patience ends it): nothing is saved


def _epoch_time(t: FrozenTrial) -> tuple[float, int] | None:
    """(seconds, epochs) of a trial's training: the trainer's per-epoch timings when its folder is readable
    here (setup and data loading left out, as pruning does not save them), else the worker's wall time —
    except for a retried trial, whose wall time lacks the epochs its predecessor ran."""
    folder = t.user_attrs.get("trial_dir")
    if folder:
        try:
            epochs = json.loads((Path(folder) / "metrics.json").read_text())["epochs"]
            if epochs:
                return float(sum(e["seconds"] for e in epochs)), len(epochs)
        except (OSError, ValueError, KeyError, TypeError):
            pass
    wall = _wall(t)
    if wall is None or _epochs(t) == 0 or "sweep_retry_of" in t.user_attrs:
        return None
    return wall, _epochs(t)


def _epochs(t: FrozenTrial) -> int:
    """Epochs trained; a cross-validated trial's over all its folds (its steps count folds under Wilcoxon)."""
    return int(t.user_attrs.get("cv_epochs", t.user_attrs.get("epochs_run", len(curve(t)))))


def _wall(t: FrozenTrial) -> float | None:
    """The worker's own measure when it wrote one, else what the storage's timestamps say."""
    if isinstance(t.user_attrs.get("wall_seconds"), (int, float)):
        return float(t.user_attrs["wall_seconds"])
    if t.datetime_start is not None and t.datetime_complete is not None:
        return (t.datetime_complete - t.datetime_start).total_seconds()
    return None


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) and math.isfinite(v) else str(v)


def _params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in params.items())


def _hms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
