"""`sweep explain`: one self-contained page showing what a trained model sees in one audio file.

The file is read, windowed and turned into the model's input exactly as `sweep predict` does (the same
functions), and the model runs once with forward hooks on its blocks. The page shows the window's waveform,
the model's input, the strongest channels of each block's feature maps and the top classes; plotly.js is
inlined and the figures are data inside the page, so it opens offline (templates/explain.html.j2).

Which modules are a family's blocks is decided here, in one place (`conv_blocks`), from the module tree, so
a new family needs nothing of its own: inside every `nn.Sequential`, each child that holds a convolution starts
a block and the children after it that hold none (norm, activation, pooling, dropout) belong to it, its output
being the last one's; other modules are looked into, down to the convolutions themselves. Anything with an
attention layer inside is a transformer, not a conv block: a family whose convolutions are all there (ViT, AST:
a convolution only cuts the input into patches) is shown by its patch view instead, each patch's embedding
length over the patch grid, and by the last layer's CLS attention over the patches; the page and the terminal
say so.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from markupsafe import Markup
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots
from torch import nn

from sweep import __version__
from sweep.config.typed import typed
from sweep.data.features import input_kind
from sweep.look.pages import environment
from sweep.results.predict import check_top_k, load_model, model_input, open_run, top_classes
from sweep.schema import ConfigError

TOP_CHANNELS = 8  # channels shown per block: the strongest by mean activation
COLUMNS = 4  # channel maps per row
MAX_MAP = 128  # a map larger than this along an axis is averaged down to it (a 5 s log-mel has 431 frames)
MAX_POINTS = 4000  # waveform points drawn: each the extreme of its stretch of samples
_CONVS = (nn.Conv1d, nn.Conv2d)
_PAGES = environment(Path(__file__).with_name("templates"))


@dataclass
class Block:
    """A block to show: its name (module path, a span of a Sequential as `first–last`) and the module whose
    output is the block's."""

    name: str
    output: nn.Module


@dataclass
class Figure:
    key: str
    title: str
    div: Markup
    caption: str = ""


@dataclass
class Page:
    path: Path
    figures: list[str]  # the keys of the figures drawn, in page order
    blocks: int  # feature-map figures among them (0 for a patch view)
    notes: list[str]  # what the page could not show, also printed by the command
    top: list[tuple[str, float]]
    size: int = 0


def explain(target: Path, audio: Path, output: Path | None = None, top_k: int = 5) -> Page:
    """Write the page for `audio` as the run at `target` (its folder or checkpoint) sees it; default path:
    `explain-STEM.html` in the run's folder."""
    run = open_run(target)
    check_top_k(top_k)
    windows, x = model_input(run, [audio])
    model = load_model(run, x)
    cfg = typed(run.config)
    family = cfg.model.name
    blocks = conv_blocks(model)
    patches = [] if blocks else patch_embeddings(model)
    notes = []
    with capture(blocks or patches) as maps, attention(None if blocks else model) as attended, torch.no_grad():
        probs = torch.softmax(model(x).float(), dim=1)
    top = top_classes(run, probs, top_k)[0]

    figures = [_waveform(windows[0], cfg.data.sample_rate), _input(x[0], input_kind(run.config))]
    for i, (block, out) in enumerate(maps):
        if blocks:
            figures.append(_feature_maps(i, block, out))
        else:
            figures.append(_patch_view(i, block, out))
    if maps and attended:
        figures.append(_cls_attention(attended[-1], len(attended), maps[0][1]))
    if not blocks:
        notes.append(
            f"{family} has no convolutional blocks (its convolution only cuts the input into patches): "
            + ("the page shows its patch view instead" + (" and the last layer's CLS attention" if attended else "")
               if maps else "and no patch embedding: no feature maps to show")
        )
    figures.append(_top(top))

    path = output or run.checkpoint.parent / f"explain-{audio.stem}.html"
    page = _PAGES.get_template("explain.html.j2").render(
        plotlyjs=Markup(get_plotlyjs()),
        audio=str(audio),
        run=str(run.checkpoint),
        family=family,
        features=input_kind(run.config),
        top=[(name, f"{p:.2%}") for name, p in top],
        figures=figures,
        notes=notes,
        version=__version__,
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"cannot write the page to {path}: {exc.strerror or exc}") from None
    return Page(path, [f.key for f in figures], len(maps) if blocks else 0, notes, top, path.stat().st_size)


# ---- the blocks and their outputs -----------------------------------------------------------------------


def _has(module: nn.Module, kinds: tuple[type, ...]) -> bool:
    return any(isinstance(m, kinds) for m in module.modules())


def _has_attention(module: nn.Module) -> bool:
    """An attention layer inside: torch's own, or a Hugging Face one (ViTAttention, ASTSelfAttention, …)."""
    return any(isinstance(m, nn.MultiheadAttention) or type(m).__name__.endswith("Attention") for m in module.modules())


def conv_blocks(model: nn.Module) -> list[Block]:
    """The model's conv blocks in module order (see the module's docstring for what a block is)."""
    found: list[Block] = []

    def visit(module: nn.Module, prefix: str) -> None:
        open_span: str | None = None  # the first child of the block being extended, inside a Sequential
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if _has(child, _CONVS) and not _has_attention(child):
                if isinstance(child, _CONVS) or isinstance(module, nn.Sequential) and not isinstance(
                    child, (nn.Sequential, nn.ModuleList)
                ):
                    found.append(Block(path, child))
                    open_span = path
                elif isinstance(child, nn.Sequential) and isinstance(module, nn.Sequential):
                    found.append(Block(path, child))  # a stack inside a stack (ResNet's layer1…4): one block
                    open_span = path
                else:
                    visit(child, f"{path}.")
                    open_span = None
            elif open_span is not None and isinstance(module, nn.Sequential) and not _has_attention(child):
                found[-1] = Block(f"{open_span}–{name}", child)
            else:
                open_span = None

    visit(model, "")
    return found


def patch_embeddings(model: nn.Module) -> list[Block]:
    """The first 2-D convolution inside a transformer: the patch embedding of a ViT or an AST."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return [Block(f"{name} (patch embedding)", module)]
    return []


@contextmanager
def capture(blocks: list[Block]) -> Iterator[list[tuple[Block, torch.Tensor]]]:
    """Within the block: every block's output of the first item, appended in the order they were computed."""
    outputs: list[tuple[Block, torch.Tensor]] = []
    seen: set[int] = set()

    def hook(block: Block):
        def record(_module: nn.Module, _args: Any, out: Any) -> None:
            if id(block) not in seen and isinstance(out, torch.Tensor) and out.dim() in (3, 4):
                seen.add(id(block))
                outputs.append((block, out[0].detach().float().clone()))

        return record

    handles = [b.output.register_forward_hook(hook(b)) for b in blocks]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def attention(model: nn.Module | None) -> Iterator[list[torch.Tensor]]:
    """Within the block: each layer's attention weights [heads, tokens, tokens] of the first item, from the
    first Hugging Face transformer inside `model` (asked for them, computed without the fused kernel that
    does not return them); empty for a model with none, or None."""
    found: list[torch.Tensor] = []
    hf = next((m for m in model.modules() if hasattr(m, "set_attn_implementation")), None) if model else None
    if hf is None:
        yield found
        return

    def record(_module: nn.Module, _args: Any, out: Any) -> None:
        if not found and getattr(out, "attentions", None):
            found.extend(a[0].detach().float() for a in out.attentions)

    hf.set_attn_implementation("eager")
    hf.config.output_attentions = True
    handle = hf.register_forward_hook(record)
    try:
        yield found
    finally:
        handle.remove()


# ---- figures ---------------------------------------------------------------------------------------------


def _div(fig: go.Figure, key: str, height: int, top: int = 40) -> Markup:
    """plotly's div of `fig`, as wide as the page; `top`: room above the plot (the tool bar, subplot titles)."""
    margin = {"t": top, "l": 60, "r": 20, "b": 40}
    fig.update_layout(template="plotly_white", height=height, width=None, margin=margin)
    html = fig.to_html(
        full_html=False, include_plotlyjs=False, div_id=f"fig-{key}", config={"displaylogo": False, "responsive": True}
    )
    return Markup(html)  # plotly's HTML, its figure's text escaped by plotly


def _shrink(m: torch.Tensor) -> torch.Tensor:
    """A [C, H, W] or [C, T] map averaged down to at most MAX_MAP along each spatial axis."""
    size = [min(s, MAX_MAP) for s in m.shape[1:]]
    if list(m.shape[1:]) == size:
        return m
    pool = F.adaptive_avg_pool2d if m.dim() == 3 else F.adaptive_avg_pool1d
    return pool(m.unsqueeze(0), size)[0]


def _waveform(wave: torch.Tensor, rate: int) -> Figure:
    step = max(1, math.ceil(len(wave) / MAX_POINTS))
    chunks = F.pad(wave, (0, -len(wave) % step)).reshape(-1, step)
    peaks = torch.where(chunks.max(1).values >= -chunks.min(1).values, chunks.max(1).values, chunks.min(1).values)
    t = (torch.arange(len(peaks)) * step / rate).numpy()
    fig = go.Figure(go.Scatter(x=t, y=peaks.numpy(), mode="lines", line={"width": 1}, name="waveform"))
    fig.update_layout(xaxis_title="seconds", yaxis_title="amplitude")
    caption = f"{len(wave)} samples at {rate} Hz: the window the model reads (the clip's centre, data.clip_seconds)"
    return Figure("waveform", "Waveform", _div(fig, "waveform", 260), caption)


def _input(x: torch.Tensor, kind: str) -> Figure:
    if x.dim() == 1:  # a raw-waveform model reads the window itself
        fig = go.Figure(go.Scatter(y=x[:: max(1, math.ceil(len(x) / MAX_POINTS))].numpy(), mode="lines"))
        fig.update_layout(xaxis_title="sample", yaxis_title="amplitude")
        caption = f"{len(x)} samples, as the model reads them"
        return Figure("input", f"Model input ({kind})", _div(fig, "input", 260), caption)
    z = x.reshape(-1, x.shape[-1])
    fig = go.Figure(go.Heatmap(z=z.numpy(), colorscale="Viridis", colorbar={"title": "log"}))
    fig.update_layout(xaxis_title="frame", yaxis_title="mel bin")
    caption = f"{z.shape[0]} mel bins × {z.shape[1]} frames ({kind}), before the model's own normalisation"
    return Figure("input", f"Model input ({kind})", _div(fig, "input", 360), caption)


def _strongest(out: torch.Tensor) -> tuple[list[int], list[float]]:
    means = out.reshape(out.shape[0], -1).mean(1)
    top = means.topk(min(TOP_CHANNELS, len(means)))
    return top.indices.tolist(), top.values.tolist()


def _feature_maps(i: int, block: Block, out: torch.Tensor) -> Figure:
    channels, means = _strongest(out)
    maps = _shrink(out[channels])
    shape = "×".join(map(str, out.shape[1:]))
    caption = f"{out.shape[0]} channels of {shape}; the {len(channels)} strongest by mean activation"
    key = f"block-{i}"
    if out.dim() == 2:  # 1-D maps (a waveform model): channels as rows over time, each scaled to its own range
        low, high = maps.min(1, keepdim=True).values, maps.max(1, keepdim=True).values
        scaled = (maps - low) / (high - low).clamp(min=1e-12)
        caption += "; each channel scaled to its own range (0: its minimum, 1: its maximum), as each 2-D map is"
        fig = go.Figure(go.Heatmap(z=scaled.numpy(), y=[f"ch {c}" for c in channels], colorscale="Viridis"))
        fig.update_layout(xaxis_title="time step", yaxis={"autorange": "reversed"})
        return Figure(key, f"Block {i + 1}: {block.name}", _div(fig, key, 120 + 28 * len(channels)), caption)
    rows = math.ceil(len(channels) / COLUMNS)
    titles = [f"ch {c} (mean {m:.3g})" for c, m in zip(channels, means)]
    fig = make_subplots(rows=rows, cols=min(COLUMNS, len(channels)), subplot_titles=titles,
                        horizontal_spacing=0.03, vertical_spacing=0.12 if rows > 1 else 0.0)
    for n, m in enumerate(maps):
        fig.add_trace(go.Heatmap(z=m.numpy(), colorscale="Viridis", showscale=False, name=titles[n]),
                      row=n // COLUMNS + 1, col=n % COLUMNS + 1)
    fig.update_yaxes(autorange=True, showticklabels=False)
    fig.update_xaxes(showticklabels=False)
    return Figure(key, f"Block {i + 1}: {block.name}", _div(fig, key, 80 + 190 * rows, top=60), caption)


def _patch_view(i: int, block: Block, out: torch.Tensor) -> Figure:
    norms = out.norm(dim=0)  # [D, h, w] → each patch's embedding length
    key = f"patches-{i}"
    fig = go.Figure(go.Heatmap(z=_shrink(norms.unsqueeze(0))[0].numpy(), colorscale="Viridis",
                               colorbar={"title": "norm"}))
    fig.update_layout(xaxis_title="patch (time)", yaxis_title="patch (frequency)")
    caption = (f"the length of each patch's embedding ({out.shape[0]} dimensions) over the {norms.shape[0]}×"
               f"{norms.shape[1]} patch grid: where the input gives the transformer the most to read")
    return Figure(key, f"Patch view: {block.name}", _div(fig, key, 360), caption)


def _top(top: list[tuple[str, float]]) -> Figure:
    fig = go.Figure(go.Bar(x=[p for _, p in top], y=[name for name, _ in top], orientation="h",
                           text=[f"{p:.1%}" for _, p in top], textposition="auto"))
    fig.update_layout(xaxis={"title": "probability", "range": [0, 1], "tickformat": ".0%"},
                      yaxis={"autorange": "reversed"})
    return Figure("top", f"Top {len(top)} classes", _div(fig, "top", 80 + 34 * len(top)))


def _cls_attention(weights: torch.Tensor, layers: int, patches: torch.Tensor) -> Figure:
    """The first token's (CLS) attention over the patch grid of the patch embedding's output [D, h, w], the
    tokens before the patches (CLS, AST's distillation token) left out, averaged over the heads."""
    grid = patches.shape[1:]
    row = weights.mean(0)[0, -grid.numel():].reshape(grid)
    fig = go.Figure(go.Heatmap(z=_shrink(row.unsqueeze(0))[0].numpy(), colorscale="Viridis",
                               colorbar={"title": "weight"}))
    fig.update_layout(xaxis_title="patch (time)", yaxis_title="patch (frequency)")
    caption = (f"how much the CLS token, which the head reads, attends to each patch in the last of the {layers} "
               f"encoder layers, averaged over its {weights.shape[0]} heads; its weights over all tokens sum to 1")
    return Figure("attention", "Last layer's CLS attention over the patches", _div(fig, "attention", 360), caption)
