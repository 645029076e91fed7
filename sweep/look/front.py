"""The report's Pareto front of a multi-objective study: the primary metric against the first static objective.

Complete trials are dots, the front (complete, feasible, dominated by none on every objective) is drawn as a
line through its trials, a trial outside `study.constraints` is a hollow square, and a pruned trial is a cross
at its static value and its last epoch's primary metric: where the dominance rule stopped it.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState

from sweep.search import pareto
from sweep.search.objectives import curve, feasible, static


def need(trials: Sequence[FrozenTrial]) -> str | None:
    if any(t.state == TrialState.COMPLETE and t.values for t in trials):
        return None
    return "Needs at least 1 completed trial."


def figure(trials: Sequence[FrozenTrial], config: Mapping[str, Any]) -> go.Figure:
    study = config["study"]
    names, minimize = study["metrics"], [d == "minimize" for d in study["directions"]]
    x_name, y_name = names[1], names[0]
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    on_front = {t.number for t in pareto.front(complete, minimize)}
    fig = go.Figure()

    def add(group: list[FrozenTrial], name: str, y: Any, **marker: Any) -> None:
        if group:
            fig.add_trace(go.Scatter(
                x=[static(t).get(x_name) for t in group], y=[y(t) for t in group], mode="markers", name=name,
                text=[_label(t, names) for t in group], marker=marker,
                hovertemplate=f"%{{text}}<br>{x_name} %{{x:.4g}}<br>{y_name} %{{y:.4f}}<extra></extra>",
            ))

    def last(t: FrozenTrial) -> float:
        values = curve(t)
        return values[max(values)]

    add([t for t in complete if feasible(t) and t.number not in on_front], "complete", lambda t: t.values[0],
        color="#1f77b4", size=8, opacity=0.6)
    add([t for t in complete if not feasible(t)], "outside the constraints", lambda t: t.values[0],
        color="#7f7f7f", symbol="square-open", size=9)
    add([t for t in trials if t.state == TrialState.PRUNED and curve(t) and static(t)],
        "pruned (last epoch)", last, color="#d62728", symbol="x", size=9)
    front = sorted((t for t in complete if t.number in on_front), key=lambda t: static(t).get(x_name, 0.0))
    if front:
        fig.add_trace(go.Scatter(
            x=[static(t).get(x_name) for t in front], y=[t.values[0] for t in front], mode="lines+markers",
            name=f"Pareto front ({len(front)} trials)", text=[_label(t, names) for t in front],
            line={"color": "#2ca02c", "shape": "hv" if minimize[1] != minimize[0] else "linear"},
            marker={"color": "#2ca02c", "size": 11, "line": {"width": 1, "color": "black"}},
            hovertemplate=f"%{{text}}<br>{x_name} %{{x:.4g}}<br>{y_name} %{{y:.4f}}<extra></extra>",
        ))
    title = f"{y_name} against {x_name}"
    if len(names) > 2:
        title += f" (the front is over all {len(names)} objectives: {', '.join(names)})"
    fig.update_layout(title=title, xaxis_title=x_name, yaxis_title=y_name)
    return fig


def _label(t: FrozenTrial, names: Sequence[str]) -> str:
    values = ", ".join(f"{k} {v:.4g}" for k, v in static(t).items() if k not in names[:2])
    params = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
    extra = f"<br>{html.escape(values)}" if values else ""
    return f"trial {t.number} ({t.state.name.lower()}){extra}<br>{html.escape(params)}"
