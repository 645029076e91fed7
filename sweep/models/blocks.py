"""`blocks`: a CNN whose whole body is a YAML list of blocks (the config-driven mel-CNN of survey pipelines).

The list is config, so a search can choose among named architectures (`model.blocks: NAME`, a categorical
over the names in `model.architectures`) or search one value inside a block by dotted path
(`model.blocks.2.res.0`). Input is log-mel [B, 1, mels, frames]; blocks run in order, and the layer of block
i is `body.i` in the state dict, so a warm start's errors name the block too. Blocks:

- `res: [c1, c2]`: conv (in → c1, `kernel_size`), norm and activation, conv (c1 → c2, `kernel_size`) added to a
  shortcut conv (in → c2, `kernel_size_res`), norm and activation: three convs, two batch norms, "same" padding.
  `batch_first: true` puts each norm before its activation, false after it. `activation` is the model's.
- `max_pool: [k_t, s_t]`: max pooling over time only (kernel k_t frames, stride s_t).
- `activation: gelu|relu|lrelu|swiglu`: an activation layer; swiglu gates one half of the channels (or units)
  with the SiLU of the other, so it halves them (inside `res` and `fc` the conv or linear before it makes twice
  its width, so the widths stay as written).
- `drop: [p, drop_prob, block_t, block_f]`: DropBlock (blocks of block_f bins × block_t frames, drop_prob of the
  map dropped), applied to each clip of a training batch with probability p; nothing at evaluation.
- `dropout: rate`: Dropout2d (whole channels) on a feature map, Dropout after pooling.
- `pooling: {mode: avg|max|sum|mul, flat: false}`: global pooling over time by `mode` (mul: the product); `flat:
  true` then flattens channels × mel bins into one vector, false pools the mel bins by the same mode.
- `fc: units`: a linear layer and the model's activation; only after `pooling`.

A list without `pooling` ends in global average pooling; the head is the linear layer to the classes. Every
block is checked when the config is resolved: its name and arity, and by a dry forward on the run's input
shape (`fits`), so a list whose shapes do not fit is refused before any trial, naming the block's index.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sweep.models.registry import MODELS, ModelSpec
from sweep.schema import ConfigError, Field, did_you_mean

ACTIVATIONS = ("gelu", "relu", "lrelu", "swiglu")
POOLING = ("avg", "max", "sum", "mul")

# block name → (how its value is written, the checks of its values: one per position, or one for a scalar)
INT, RATE, PROB = Field(int, low=1), Field(float, low=0.0, high=1.0), Field(float, low=0.0, high=0.999)
BLOCKS: dict[str, tuple[str, Any]] = {
    "res": ("[c1, c2]", (INT, INT)),
    "max_pool": ("[k_t, s_t]", (INT, INT)),
    "activation": ("gelu|relu|lrelu|swiglu", Field(str, choices=ACTIVATIONS)),
    "drop": ("[p, drop_prob, block_t, block_f]", (RATE, PROB, INT, INT)),
    "dropout": ("rate", PROB),
    "fc": ("units", INT),
    "pooling": ("{mode: avg|max|sum|mul, flat: true|false}", None),
}
ACCEPTED = "accepted blocks: " + ", ".join(f"{name}: {form}" for name, (form, _) in BLOCKS.items())

DEFAULT = [
    {"res": [16, 16]},
    {"max_pool": [2, 2]},
    {"res": [16, 32]},
    {"max_pool": [2, 2]},
    {"res": [32, 64]},
    {"pooling": {"mode": "avg", "flat": False}},
    {"dropout": 0.2},
]


def activation(name: str) -> nn.Module:
    return {"gelu": nn.GELU, "relu": nn.ReLU, "lrelu": nn.LeakyReLU, "swiglu": SwiGLU}[name]()


class SwiGLU(nn.Module):
    """x = [a, b] along the channels (or units): a · SiLU(b), half the width."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return a * F.silu(b)


def gate(name: str) -> int:
    """The width an activation eats per width it gives: 2 for swiglu."""
    return 2 if name == "swiglu" else 1


class NormAct(nn.Sequential):
    """Batch norm and activation, in the order `batch_first` says, for `c` channels out."""

    def __init__(self, c: int, act: str, batch_first: bool) -> None:
        if batch_first:
            super().__init__(nn.BatchNorm2d(c * gate(act)), activation(act))
        else:
            super().__init__(activation(act), nn.BatchNorm2d(c))


class Res(nn.Module):
    """Three convs and two batch norms: norm-act(conv2(norm-act(conv1(x))) + shortcut(x))."""

    def __init__(self, c_in: int, c1: int, c2: int, act: str, batch_first: bool, k: int, k_res: int) -> None:
        super().__init__()
        g = gate(act)
        self.conv1 = nn.Conv2d(c_in, c1 * g, k, padding="same", bias=False)
        self.post1 = NormAct(c1, act, batch_first)
        self.conv2 = nn.Conv2d(c1, c2 * g, k, padding="same", bias=False)
        self.shortcut = nn.Conv2d(c_in, c2 * g, k_res, padding="same", bias=False)
        self.post2 = NormAct(c2, act, batch_first)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post2(self.conv2(self.post1(self.conv1(x))) + self.shortcut(x))


class DropBlock(nn.Module):
    """DropBlock (Ghiasi et al. 2018) on [B, C, F, T], applied to each clip with probability p while training."""

    def __init__(self, p: float, drop_prob: float, block_t: int, block_f: int) -> None:
        super().__init__()
        self.p, self.drop_prob, self.block = p, drop_prob, (block_f, block_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or self.drop_prob == 0:
            return x
        (bf, bt), (f, t) = self.block, x.shape[-2:]
        # seeds per position such that about drop_prob of the map ends up inside a dropped block
        gamma = self.drop_prob / (bf * bt) * (f * t) / ((f - bf + 1) * (t - bt + 1))
        seeds = (torch.rand(x.shape, device=x.device) < gamma).to(x.dtype)
        dropped = F.max_pool2d(seeds, (bf, bt), stride=1, padding=(bf // 2, bt // 2))[..., :f, :t]
        keep = 1 - dropped
        scale = keep[0].numel() / keep.sum(dim=(1, 2, 3), keepdim=True).clamp(min=1)
        chosen = (torch.rand(len(x), 1, 1, 1, device=x.device) < self.p).to(x.dtype)
        return x * (chosen * keep * scale + (1 - chosen))


class Pool(nn.Module):
    """Global pooling over time by `mode`; `flat` flattens channels × mel bins, else pools the bins too."""

    def __init__(self, mode: str, flat: bool) -> None:
        super().__init__()
        self.mode, self.flat = mode, flat

    def reduce(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        if self.mode == "avg":
            return x.mean(dim)
        if self.mode == "max":
            return x.amax(dim)
        return x.sum(dim) if self.mode == "sum" else x.prod(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x, -1)
        return x.flatten(1) if self.flat else self.reduce(x, -1)


class Blocks(nn.Module):
    def __init__(self, body: list[nn.Module], width: int, n_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(1)  # standardises log-mel levels without dataset statistics
        self.body = nn.Sequential(*body)
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(self.norm(x))
        return self.head(x.mean(dim=(2, 3)) if x.dim() == 4 else x)


def architecture(cfg: Mapping[str, Any]) -> Sequence[Any]:
    """The block list: `model.blocks` itself, or the entry of `model.architectures` it names."""
    blocks = cfg["blocks"]
    if isinstance(blocks, str):
        named = cfg["architectures"]
        if blocks not in named:
            accepted = ", ".join(named) if named else "none: model.architectures is empty"
            raise ConfigError(
                f"no architecture named {blocks!r} in model.architectures; accepted: a list of blocks, or one of "
                f"the names there ({accepted})",
                key="model.blocks",
            )
        return named[blocks]
    if not isinstance(blocks, Sequence) or not blocks:
        raise ConfigError(
            f"expected a non-empty list of blocks, or the name of one in model.architectures, got {blocks!r}; "
            + ACCEPTED,
            key="model.blocks",
        )
    return blocks


def parse(cfg: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The block list as (name, checked value) pairs; a ConfigError names the block's path and what it takes."""
    out = []
    where = "model.blocks" if not isinstance(cfg["blocks"], str) else f"model.architectures.{cfg['blocks']}"
    for i, block in enumerate(architecture(cfg)):
        key = f"{where}.{i}"
        if not isinstance(block, Mapping) or len(block) != 1:
            raise ConfigError(f"a block is a mapping of one name to its value, got {block!r}; {ACCEPTED}", key=key)
        (name, value), = block.items()
        if name not in BLOCKS:
            raise ConfigError(f"unknown block {name!r}{did_you_mean(name, BLOCKS)}; {ACCEPTED}", key=key)
        out.append((name, _check(name, value, f"{key}.{name}")))
    return out


def _check(name: str, value: Any, key: str) -> Any:
    form, fields = BLOCKS[name]
    if name == "pooling":
        value = {} if value is None else value
        if not isinstance(value, Mapping) or set(value) - {"mode", "flat"}:
            raise ConfigError(f"pooling takes {form}, got {value!r}", key=key)
        try:
            return (
                Field(str, choices=POOLING).check(value.get("mode", "avg")),
                Field(bool).check(value.get("flat", False)),
            )
        except ValueError as exc:
            raise ConfigError(f"pooling takes {form}: {exc}", key=key) from None
    if isinstance(fields, tuple):
        if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != len(fields):
            raise ConfigError(f"{name} takes {form} ({len(fields)} values), got {value!r}", key=key)
        checked = []
        for j, (field, v) in enumerate(zip(fields, value)):
            try:
                checked.append(field.check(v))
            except ValueError as exc:
                raise ConfigError(f"{name} takes {form}: value {j}: {exc}", key=f"{key}.{j}") from None
        return tuple(checked)
    try:
        return fields.check(value)
    except ValueError as exc:
        raise ConfigError(f"{name} takes {form}: {exc}", key=key) from None


def _layer(name: str, v: Any, shape: tuple[int, ...], cfg: Mapping[str, Any]) -> nn.Module:
    """The layer of one block, for input of `shape` ([C, F, T] a feature map, [N] a vector after pooling)."""
    mapped = len(shape) == 3
    if name in ("res", "max_pool", "drop", "pooling") and not mapped:
        raise ValueError(
            f"{name} needs a feature map, and the input here is a vector of {shape[0]} (after pooling); accepted "
            "after pooling: activation, dropout, fc"
        )
    if name == "fc" and mapped:
        raise ValueError("fc needs a vector: put a `pooling` block before it")
    act = cfg["activation"]
    if name == "res":
        return Res(shape[0], *v, act, cfg["batch_first"], cfg["kernel_size"], cfg["kernel_size_res"])
    if name == "max_pool":
        if v[0] > shape[2]:
            raise ValueError(
                f"max_pool's kernel of {v[0]} frames is longer than the {shape[2]} frames here; accepted: k_t <= "
                f"{shape[2]}"
            )
        return nn.MaxPool2d((1, v[0]), (1, v[1]))
    if name == "activation":
        if v == "swiglu" and shape[0] % 2:
            raise ValueError(f"swiglu halves the width and needs an even one, got {shape[0]}; accepted: an even width")
        return activation(v)
    if name == "drop":
        if v[3] > shape[1] or v[2] > shape[2]:
            raise ValueError(
                f"a block of {v[3]} × {v[2]} is larger than the {shape[1]} × {shape[2]} map here; accepted: "
                f"block_f <= {shape[1]}, block_t <= {shape[2]}"
            )
        return DropBlock(*v)
    if name == "dropout":
        return nn.Dropout2d(v) if mapped else nn.Dropout(v)
    if name == "pooling":
        return Pool(*v)
    return nn.Sequential(nn.Linear(shape[0], v * gate(act)), activation(act))


def build(cfg: Mapping[str, Any], n_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """The model, built block by block with a dry forward of one dummy input through each, so a block that
    does not fit its input is a ConfigError naming its index, the shape it got and why."""
    layers: list[nn.Module] = []
    x = torch.zeros(1, *input_shape)
    where = "model.blocks" if not isinstance(cfg["blocks"], str) else f"model.architectures.{cfg['blocks']}"
    for i, (name, value) in enumerate(parse(cfg)):
        shape = tuple(x.shape[1:])
        try:
            layer = _layer(name, value, shape, cfg).eval()
            with torch.no_grad():
                x = layer(x)
            if 0 in x.shape:
                raise ValueError(f"its output {list(x.shape[1:])} is empty")
        except (ValueError, RuntimeError) as exc:
            raise ConfigError(
                f"block {i} ({name}) does not fit its input {list(shape)} (channels, mel bins, frames"
                f"{'' if len(shape) == 3 else '; a vector'}): {str(exc).splitlines()[0]}",
                key=f"{where}.{i}",
            ) from None
        layers.append(layer.train())
    return Blocks(layers, x.shape[1], n_classes)  # channels of a map (averaged by forward), or the vector's width


def validate(cfg: Mapping[str, Any]) -> None:
    parse(cfg)


def fits(cfg: Mapping[str, Any], input_shape: tuple[int, ...]) -> None:
    build(cfg, 2, input_shape)


PARAMS = {
    "blocks": Field(object, DEFAULT, nested=True),  # a list of blocks, or a name in `architectures`
    "architectures": Field(dict, {}),  # name → block list, for a search that picks one by name
    "activation": Field(str, "relu", choices=ACTIVATIONS),  # inside res and fc blocks
    "batch_first": Field(bool, True),  # res: batch norm before the activation (false: after)
    "kernel_size": Field(int, 3, low=1),  # res: the two main convs
    "kernel_size_res": Field(int, 1, low=1),  # res: the shortcut conv
}

MODELS.add("blocks", ModelSpec(PARAMS, build, inputs=("logmel", "fbank"), validate=validate, fits=fits))
