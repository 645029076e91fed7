"""Dotted paths into a config tree (`train.lr`, `model.blocks.2.res.0`): read, write, copy, and the
`--set KEY=VALUE` that names one.

A part of a path that is a whole number indexes a list (`model.blocks.2` is the third block), so a search or an
override can set one value inside a list-valued key; an index past the list's end is an error naming the path.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from sweep.config.yamlfile import parse_yaml
from sweep.schema import ConfigError


def get_path(config: Mapping[str, Any], path: str) -> Any:
    node: Any = config
    for part in path.split("."):
        if isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            raise KeyError(path)
    return node


def set_path(config: dict[str, Any], path: str, value: Any) -> None:
    """Set `path` to `value`, making the sections on the way; an index into a list must be inside it."""
    *parents, leaf = path.split(".")
    node: Any = config
    for i, part in enumerate(parents):
        if isinstance(node, list):
            node = node[_index(node, part, path, i)]
            continue
        if not isinstance(node.get(part), (dict, list)):
            node[part] = {}
        node = node[part]
    if isinstance(node, list):
        node[_index(node, leaf, path, len(parents))] = value
    elif isinstance(node, dict):
        node[leaf] = value
    else:
        raise ConfigError(f"`{'.'.join(parents)}` is a value ({node!r}), not a list or a section", key=path)


def _index(node: list[Any], part: str, path: str, depth: int) -> int:
    here = ".".join(path.split(".")[: depth + 1])
    if not part.isdigit():
        raise ConfigError(f"`{here}`: a list is indexed by a whole number, got {part!r}", key=path)
    if int(part) >= len(node):
        raise ConfigError(
            f"`{here}`: index {part} is past the end of the list, which has {len(node)} entries "
            f"(accepted: 0–{len(node) - 1})" if node else f"`{here}`: the list is empty",
            key=path,
        )
    return int(part)


def parse_set(item: str) -> tuple[str, Any]:
    """`train.lr=3e-4` → ("train.lr", 0.0003): the value is typed as YAML would type it."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects KEY=VALUE with a dotted key, got {item!r}")
    return key, parse_yaml(text, f"--set {item}")


def copy_tree(node: Any) -> Any:
    """A copy of a config tree (dicts, lists, scalars), ~10× faster than copy.deepcopy: a worker copies its
    config a few times per trial, and every millisecond there is one per trial per worker."""
    if isinstance(node, dict):
        return {key: copy_tree(value) for key, value in node.items()}
    if isinstance(node, list):
        return [copy_tree(value) for value in node]
    if isinstance(node, (str, int, float, bool, type(None))):
        return node
    return copy.deepcopy(node)
